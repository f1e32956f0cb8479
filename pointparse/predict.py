"""Inference on new images: a checkpoint and image files in, class-id PNGs and overlays out.

A checkpoint (``model.pt`` of a train artefact) carries everything needed: the backbone and
model config, the class names and palette, and the input normalisation, so :func:`predict` needs
no dataset. It is loaded with ``torch.load(weights_only=True)``: a file that tries to run code
while unpickling is refused (:func:`pointparse.checkpoint.load_checkpoint`).

Images of any size are accepted. Each is padded on the right/bottom to a multiple of the model's
output stride (with zeros after normalisation, i.e. the mean colour) so the logits grid lines up
exactly with the pixels when upsampled, and the logits are cropped back to the image. Images are
batched only with images of the same size, so an image's prediction never depends on which other
images share its batch or on the batch size.

Test-time augmentation: ``scales`` resizes the image (bilinear) before the forward pass and
brings the logits back to the image size; ``flip`` adds the mirrored image. The class
probabilities (softmax) of all passes are averaged and the argmax is written.

Outputs per input ``<stem>``: ``<stem>.png`` (uint8 class ids ``0..C-1``, a palette PNG in the
dataset's colours) and ``<stem>_overlay.jpg`` (the colours blended over the image).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .datasets import DatasetInfo
from .errors import ConfigError, DataError
from .images import IMAGE_SUFFIXES, image_size, list_images, read_image, write_image, write_label_png
from .io import check_out_dir, mark_out_dir
from .predictor import Predictor
from .runtime import autocast_dtype, resolve_device
from .transforms import normalise

OVERLAY_ALPHA = 0.5


class SegmentationInference(nn.Module):
    """Normalised images ``[B, 3, H, W]`` → logits ``[B, C, H, W]`` at input resolution.

    Pads the input on the right/bottom to a multiple of ``model.output_stride`` (zeros), runs
    ``model`` (a :class:`pointparse.model.PointParseNet`), upsamples its logits bilinearly
    (``align_corners=False``) to the padded size and crops them to ``H × W``. This is what
    :func:`predict` runs for each pass and what ``export-model`` exports.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.output_stride = int(model.output_stride)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        s = self.output_stride
        ph, pw = (s - h % s) % s, (s - w % s) % s
        xp = F.pad(x, (0, pw, 0, ph))
        logits = self.model(xp)["logits"]
        logits = F.interpolate(logits, size=(h + ph, w + pw), mode="bilinear", align_corners=False)
        # index_select, not slicing: a cropped view's contiguity depends on whether padding was
        # needed, which torch.export would turn into a shape guard and so a static graph
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        return logits.index_select(2, rows).index_select(3, cols)


@dataclass
class LoadedModel:
    """A checkpoint ready for inference: the wrapped net, its dataset info and normalisation."""

    net: SegmentationInference
    info: DatasetInfo
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    checkpoint: Path
    model_config: dict

    @classmethod
    def from_predictor(cls, predictor: Predictor) -> "LoadedModel":
        """Wrap a :class:`Predictor`'s network as :class:`SegmentationInference` (eval mode, its device)."""
        net = SegmentationInference(predictor.model).to(predictor.device).eval()
        return cls(net, predictor.info, predictor.mean, predictor.std, predictor.path, predictor.model_config)


def load_for_inference(ref: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a checkpoint (a ``.pt`` file or a train artefact folder; ``weights_only=True``) through
    :meth:`Predictor.from_checkpoint` and wrap it for ``predict`` and ``export-model``."""
    return LoadedModel.from_predictor(Predictor.from_checkpoint(ref, device))


#: the largest test-time scale: 4x an image is 16x its pixels (and the logits'); beyond it allocation fails
MAX_SCALE = 4.0


def parse_scales(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.75,1,1.25"`` (or a sequence) → positive scales; a bad value is a ConfigError."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        scales = tuple(float(s) for s in items if str(s).strip())
    except ValueError:
        raise ConfigError(f"scales must be comma-separated numbers like 0.75,1,1.25, got {text!r}") from None
    if not scales or not all(math.isfinite(s) and 0 < s <= MAX_SCALE for s in scales):
        raise ConfigError(f"scales must be positive numbers up to {MAX_SCALE:g} (a scale multiplies the image's "
                          f"pixels by its square), got {text!r}")
    return scales


@torch.no_grad()
def predict_probs(net: SegmentationInference, x: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
                  amp_dtype: torch.dtype | None = None) -> Tensor:
    """Class probabilities ``[B, C, H, W]`` (float32) of normalised images ``[B, 3, H, W]``,
    averaged over ``scales`` × (identity, horizontal flip when ``flip``)."""
    h, w = x.shape[-2:]
    total = None
    n = 0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                                              mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            inp = xs.flip(-1) if flipped else xs
            with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = net(inp)
            logits = logits.float()
            if flipped:
                logits = logits.flip(-1)
            if s != 1.0:
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = logits.softmax(1)
            total = p if total is None else total + p
            n += 1
    return total / n


def overlay(image: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 [H, W, 3]: the class colours ``palette[ids]`` blended over the RGB ``image``."""
    colours = palette[ids].astype(np.float32)
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours + 0.5, 0, 255).astype(np.uint8)


@dataclass
class PredictResult:
    """What :func:`predict` did: the label PNGs written and the inputs it had to skip."""

    written: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def collect_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files from files and folders (a folder's images directly inside it, sorted by name).

    Returns the files (duplicates removed, input order) and the inputs that could not be used
    (missing path, folder without images). Two different files with the same stem would write
    the same outputs: that is a ConfigError before any work.
    """
    files: list[Path] = []
    failures: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for ref in inputs:
        p = Path(ref)
        if p.is_dir():
            found = list_images(p)
            if not found:
                failures.append((p, f"folder holds no images ({', '.join(IMAGE_SUFFIXES)})"))
        elif p.is_file():
            found = [p]
        else:
            failures.append((p, "does not exist"))
            continue
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    stems = Counter(f.stem for f in files)
    clash = sorted(s for s, n in stems.items() if n > 1)
    if clash:
        paths = [str(f) for f in files if f.stem in clash][:6]
        raise ConfigError(f"several inputs share the name(s) {clash[:5]} and would overwrite each other's outputs: "
                          f"{', '.join(paths)}; predict them into separate --out folders")
    return files, failures


def predict(checkpoint: str | Path, inputs: Iterable[str | Path], out_dir: str | Path, batch_size: int = 4,
            flip: bool = False, scales: Sequence[float] | str = (1.0,), device: str = "auto", amp: str = "auto",
            progress: bool = True, cache_root: str | Path | None = None) -> PredictResult:
    """Predict every input image and write ``<stem>.png`` and ``<stem>_overlay.jpg`` into ``out_dir``.

    ``inputs``: image files and/or folders. ``amp='auto'`` uses bf16 autocast on CUDA and full
    precision on CPU. An unreadable input is reported (a line on stderr) and skipped; the
    returned :class:`PredictResult` lists those failures, and the CLI exits non-zero when there
    are any. A bad checkpoint raises :class:`DataError` before any input is read.
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    # its files would be overwritten (never inside the cache ``cache_root``): refuse before any work
    out_dir = check_out_dir(out_dir, "predict", cache_root=cache_root)
    scales = parse_scales(scales)
    dev = resolve_device(device)
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise ConfigError(f"unknown amp mode {amp!r}; valid choices: auto, bf16, fp16, off")
    amp_dtype = autocast_dtype(amp, dev)
    loaded = load_for_inference(checkpoint, dev)
    palette = np.zeros((256, 3), np.uint8)
    palette[: loaded.info.num_classes] = np.asarray(loaded.info.palette, np.uint8)
    files, failures = collect_inputs(inputs)
    result = PredictResult(failures=list(failures))
    for p, problem in failures:
        tqdm.write(f"skipped {p}: {problem}")
    out_dir.mkdir(parents=True, exist_ok=True)
    mark_out_dir(out_dir, "predict")
    loaded.net.to(memory_format=torch.channels_last)  # faster on CUDA and CPU alike (see evaluate_model)

    def fail(p: Path, problem: str) -> None:
        result.failures.append((p, problem))
        tqdm.write(f"skipped {p}: {problem}")

    # group by size (header only) so batches never pad one image to another's size
    groups: dict[tuple[int, int], list[Path]] = {}
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for f in files:
            try:
                groups.setdefault(image_size(f), []).append(f)
            except DataError as exc:
                fail(f, exc.problem)
                bar.update(1)
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                images, paths = [], []
                for f in chunk:
                    try:
                        images.append(read_image(f))
                        paths.append(f)
                    except DataError as exc:
                        fail(f, exc.problem)
                        bar.update(1)
                if not images:
                    continue
                x = torch.stack([normalise(im, loaded.mean, loaded.std) for im in images]).to(dev)
                x = x.contiguous(memory_format=torch.channels_last)
                ids = predict_probs(loaded.net, x, scales, flip, amp_dtype).argmax(1).to(torch.uint8).cpu().numpy()
                for f, im, lab in zip(paths, images, ids):
                    png = out_dir / f"{f.stem}.png"
                    write_label_png(png, lab, palette=palette)
                    write_image(out_dir / f"{f.stem}_overlay.jpg", overlay(im, lab, palette), quality=90)
                    result.written.append(png)
                    bar.update(1)
    finally:
        bar.close()
    return result
