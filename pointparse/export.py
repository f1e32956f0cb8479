"""Export a trained model for deployment: a ``torch.export`` program (``.pt2``) or ONNX.

What is exported is :class:`pointparse.predict.SegmentationInference`: normalised RGB images
``float32 [B, 3, H, W]`` (``(x / 255 - mean) / std`` with the checkpoint's mean/std) → class
logits ``float32 [B, C, H, W]`` at input resolution (the input is padded to a multiple of the
output stride inside, as ``predict`` does). Argmax over ``C`` gives class ids ``0..C-1``.

Dynamic shapes: with ``dynamic=True`` the batch size, height and width are symbolic (height and
width from ``output_stride + 1`` to ``MAX_SIDE`` pixels: a one-cell feature map would specialise
the graph). Should tracing specialise anyway (a backbone with shape-dependent code), the export
falls back to the static example shape ``[2, 3, height, width]`` and says so in the result.

The program is exported on CPU; ``torch.export.passes.move_to_device_pass(program, "cuda")``
moves it (weights and device constants) to a GPU.

The class names, palette, normalisation, backbone and input/output conventions travel with the
file: inside the ``.pt2`` archive as the extra file ``pointparse.json`` (read it with
``torch.export.load(path, extra_files={"pointparse.json": ""})``), and in ONNX as the model's
``metadata_props`` entry ``pointparse``.

ONNX needs the optional extra (``pip install "pointparse[onnx]"``: ``onnx`` and ``onnxscript``,
which ``torch.onnx.export``'s exporter uses).
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError, DataError, unknown_choice
from .io import atomic_file
from .predict import LoadedModel
from .predictor import Predictor

EXPORT_FORMATS = ("pt2", "onnx")
METADATA_NAME = "pointparse.json"
ONNX_METADATA_KEY = "pointparse"
MAX_SIDE = 8192
ONNX_OPSET = 18


@dataclass
class ExportResult:
    """Where the exported model went and whether its shapes are dynamic."""

    path: Path
    format: str
    dynamic: bool
    input_shape: tuple[int, int, int, int]
    metadata: dict


def export_metadata(loaded: LoadedModel, dynamic: bool, example_shape) -> dict:
    """Everything a deployment needs besides the graph (JSON-ready)."""
    info = loaded.info
    return {
        "format": "pointparse-exported-model-v1",
        "classes": list(info.classes),
        "palette": [list(c) for c in info.palette],
        "dataset": info.name,
        "protocol": info.protocol,
        "normalization": {"mean": list(loaded.mean), "std": list(loaded.std)},
        "model_config": loaded.model_config,
        "input": "float32 [B, 3, H, W] RGB, (x / 255 - mean) / std",
        "output": "float32 [B, C, H, W] class logits at input resolution; argmax over C = class id",
        "dynamic_shapes": dynamic,
        "example_shape": list(example_shape),
    }


def export_program(loaded: LoadedModel, height: int = 512, width: int = 512, dynamic: bool = True
                   ) -> tuple[torch.export.ExportedProgram, bool]:
    """``torch.export`` the inference net on CPU; returns the program and whether it is dynamic."""
    net = loaded.net.to("cpu").eval()
    stride = net.output_stride
    if min(height, width) <= stride:
        raise ConfigError(f"example height/width must exceed the output stride {stride}, got {height}x{width}")
    # batch 2: export specialises a size-1 dimension to the constant 1
    example = (torch.randn(2, 3, int(height), int(width)),)
    if dynamic:
        dims = {"x": {0: torch.export.Dim("batch", min=1, max=1024),
                      2: torch.export.Dim("height", min=stride + 1, max=MAX_SIDE),
                      3: torch.export.Dim("width", min=stride + 1, max=MAX_SIDE)}}
        try:
            return torch.export.export(net, example, dynamic_shapes=dims), True
        except Exception:  # shape specialisation in some backbone: fall back to a static graph
            pass
    return torch.export.export(net, example), False


def _require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"ONNX export needs {' and '.join(missing)}, which are not installed: "
                          'pip install "pointparse[onnx]"')


def export_model(checkpoint: str | Path, fmt: str, out_path: str | Path, height: int = 512, width: int = 512,
                 dynamic: bool = True) -> ExportResult:
    """Export a checkpoint (``.pt`` or train artefact folder) as ``pt2`` or ``onnx`` to ``out_path``.

    ``height``/``width`` is the example input size (the fixed size when the export is static).
    The file is written atomically.
    """
    if fmt not in EXPORT_FORMATS:
        raise unknown_choice("export format", fmt, EXPORT_FORMATS)
    if fmt == "onnx":
        _require_onnx()  # before the slow part
    out_path = Path(out_path)
    loaded = LoadedModel.from_predictor(Predictor.from_checkpoint(checkpoint, "cpu"))
    program, is_dynamic = export_program(loaded, height, width, dynamic)
    shape = (2, 3, int(height), int(width))
    meta = export_metadata(loaded, is_dynamic, shape)
    text = json.dumps(meta, sort_keys=True)
    if fmt == "pt2":
        with atomic_file(out_path, sweep=True) as tmp, open(tmp, "wb") as fh:  # a handle: the temp name lacks .pt2
            torch.export.save(program, fh, extra_files={METADATA_NAME: text})
    else:
        import onnx

        onnx_program = torch.onnx.export(program, f=None, input_names=["image"], output_names=["logits"],
                                         opset_version=ONNX_OPSET, dynamo=True, external_data=False,
                                         verbose=False)
        proto = onnx_program.model_proto
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, text
        with atomic_file(out_path, sweep=True) as tmp:
            onnx.save_model(proto, str(tmp))
    return ExportResult(out_path, fmt, is_dynamic, shape, meta)


def load_exported_metadata(path: str | Path) -> dict:
    """The ``pointparse.json`` metadata of an exported ``.pt2`` file (without loading the program)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:  # a .pt2 is a zip archive; extra files sit under */extra/
            names = [n for n in z.namelist() if n.endswith(f"/extra/{METADATA_NAME}")]
            if names:
                return json.loads(z.read(names[0]).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not a readable .pt2 archive ({exc.__class__.__name__})") from None
    extra = {METADATA_NAME: ""}  # another archive layout: let torch find it
    torch.export.load(str(path), extra_files=extra)
    if not extra[METADATA_NAME]:
        raise DataError(path, f"exported program carries no {METADATA_NAME} (not exported by pointparse?)")
    return json.loads(extra[METADATA_NAME])
