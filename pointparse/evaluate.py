"""Evaluation: whole-image (optionally sliding-window, flipped) inference into a confusion matrix.

The int64 confusion matrix is accumulated on the device without host syncs (fixed-size
``index_add``; read once, at the end) and summed across ranks with ``all_reduce``. Each rank takes every ``world_size``-th image, so no image is counted twice (a
``DistributedSampler`` would pad with duplicates). Classes absent from both prediction and ground
truth get NaN IoU and are left out of the mean.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .datasets import DatasetInfo, SegmentationDataset
from .errors import ConfigError
from .fields import bounded, check_fields
from .io import atomic_file, write_json
from .metrics import SegMetrics
from .model import upsample_logits
from .pool import loader_workers, opencv_single_threaded, start_loader
from .runtime import autocast_dtype
from .transforms import EvalSamples, normalise_array

#: samples a decoding thread keeps ready ahead of inference
PREFETCH = 2
#: sliding-window sizes: below MIN a forward pass per few pixels, above MAX an allocator error
MIN_WINDOW, MAX_WINDOW = 16, 4096


class ConfusionMatrix:
    """int64 [C, C] confusion matrix (rows: ground truth, columns: prediction) accumulated on
    ``device`` without host syncs: fixed-size ``index_add`` (no boolean masking, no
    ``bincount``, whose output size a GPU would have to report to the host).

    Counts live in a flat [C·C + 2] buffer: cell ``t·C + p``, then one slot for ignored pixels
    (ground truth 255 or >= C) and one counting predictions outside 0..C-1. On CPU such a
    prediction raises at once (reading a CPU tensor costs nothing); on a GPU (or traced) it is
    counted and raised when the matrix is read (:attr:`mat`, :meth:`compute`).
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None):
        if int(num_classes) != num_classes or num_classes < 1:
            raise ConfigError(f"number of classes must be an integer >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self._flat = torch.zeros(self.num_classes ** 2 + 2, dtype=torch.int64, device=device)

    @property
    def mat(self) -> torch.Tensor:
        """The [C, C] counts (a view); raises if a prediction was out of range (a host read:
        once, when the matrix is used)."""
        n = self.num_classes
        if int(self._flat[n * n + 1]):
            raise ValueError(f"predictions must be class ids 0..{n - 1}")
        return self._flat[:n * n].view(n, n)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count ``pred`` against ``target`` (same shape, class ids; target 255 / >= C ignored)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
        n = self.num_classes
        dev = self._flat.device
        t = target.to(dev, non_blocking=True).reshape(-1).long()
        p = pred.to(dev, non_blocking=True).reshape(-1).long()
        keep = (t >= 0) & (t < n)
        bad_pred = (p < 0) | (p >= n)
        if dev.type == "cpu" and not torch.compiler.is_compiling() and bool((keep & bad_pred).any()):
            raise ValueError(f"predictions must be class ids 0..{n - 1}")
        idx = torch.where(keep, torch.where(bad_pred, n * n + 1, t * n + p), n * n)
        self._flat.index_add_(0, idx, torch.ones_like(idx))

    def add_counts(self, counts: torch.Tensor) -> None:
        """Add [C, C] (or [C·C]) counts taken elsewhere (the CPU numpy path of evaluate_model)."""
        n = self.num_classes
        self._flat[:n * n] += counts.reshape(-1).to(self._flat.device)

    def reset(self) -> None:
        self._flat.zero_()

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrix over ranks when torch.distributed is initialised (else no-op)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self._flat)
        return self

    def compute(self) -> SegMetrics:
        return SegMetrics.from_matrix(self.mat.cpu().numpy())


@dataclass
class EvalConfig:
    """Inference options. ``window`` > 0 enables sliding-window inference with that crop size and
    ``window_stride`` (default 2/3 of the window); ``flip`` averages with the mirrored image.
    ``workers``: DataLoader processes; ``None`` = auto, 0 on CPU (see :func:`pointparse.pool.loader_workers`).
    """

    flip: bool = False
    window: int = bounded(0, ge=0, le=MAX_WINDOW)
    window_stride: int = bounded(0, ge=0)
    amp: str = bounded("auto", choices=("auto", "off", "bf16", "fp16"))
    channels_last: bool = True
    workers: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self)  # types and bounds (pointparse.fields), as for every option
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"evaluation workers must be >= 0 or None (auto), got {self.workers!r}")
        check_window(self.window, self.window_stride)


def check_window(window: int, stride: int, what: str = "") -> None:
    """Sliding-window sizes: ``window`` 0 (whole image) or in [MIN_WINDOW, MAX_WINDOW], and a
    ``stride`` no larger than it (``what`` prefixes the message, e.g. ``"pseudo-labels "``)."""
    if window and not MIN_WINDOW <= window <= MAX_WINDOW:
        small = ": a smaller window runs the network once per few pixels" if window < MIN_WINDOW else ""
        raise ConfigError(f"{what}window must be 0 (whole image) or in [{MIN_WINDOW}, {MAX_WINDOW}], "
                          f"got {window}{small}")
    if window and stride > window:
        raise ConfigError(f"{what}window_stride {stride} is larger than window {window}: "
                          "pixels between the windows would get no prediction")


def _forward(model, x: torch.Tensor, amp_dtype) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(x)["logits"]
    return upsample_logits(logits.float(), x.shape[-2:])


def _window_logits(model, x: torch.Tensor, window: int, stride: int, num_classes: int, amp_dtype) -> torch.Tensor:
    """Average logits of overlapping ``window``² crops over [1, 3, H, W] (padded when smaller)."""
    _, _, H, W = x.shape
    ph, pw = max(window - H, 0), max(window - W, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    Hp, Wp = x.shape[-2:]
    out = torch.zeros(1, num_classes, Hp, Wp, device=x.device)
    count = torch.zeros(1, 1, Hp, Wp, device=x.device)
    ys = list(range(0, max(Hp - window, 0) + 1, stride))
    xs = list(range(0, max(Wp - window, 0) + 1, stride))
    if ys[-1] + window < Hp:
        ys.append(Hp - window)
    if xs[-1] + window < Wp:
        xs.append(Wp - window)
    for y in ys:
        for x0 in xs:
            out[..., y:y + window, x0:x0 + window] += _forward(model, x[..., y:y + window, x0:x0 + window], amp_dtype)
            count[..., y:y + window, x0:x0 + window] += 1
    return (out / count)[..., :H, :W]


@torch.no_grad()
def predict_logits(model, image: torch.Tensor, cfg: EvalConfig, num_classes: int, amp_dtype=None) -> torch.Tensor:
    """Logits [1, C, H, W] for one normalised image [1, 3, H, W] at full resolution."""
    def run(x):
        if cfg.window:
            stride = cfg.window_stride or max(1, (2 * cfg.window) // 3)
            return _window_logits(model, x, cfg.window, stride, num_classes, amp_dtype)
        return _forward(model, x, amp_dtype)

    logits = run(image)
    if cfg.flip:
        logits = logits + run(image.flip(-1)).flip(-1)
    return logits


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, dataset: SegmentationDataset, num_classes: int, cfg: EvalConfig,
                   device: torch.device, mean, std, rank: int = 0, world_size: int = 1,
                   progress: bool = True) -> SegMetrics:
    """Confusion-matrix metrics of ``model`` on ``dataset`` (this rank's share, all-reduced).

    With loader processes (CUDA by default) a DataLoader feeds the model. Without (CPU by
    default: a process would compete with the intra-op threads for the cores) one thread decodes
    the next images while the model runs (:func:`decoded_in_thread`), and on CPU the confusion
    counts are taken with numpy from the uint8 mask (the same integers, a tenth of the time of
    the int64 tensor path).
    """
    if dataset.info.num_classes != num_classes:
        raise ConfigError(f"the model predicts {num_classes} classes but {dataset.root} has {dataset.info.num_classes}")
    amp_dtype = autocast_dtype(cfg.amp, device)
    model.eval()
    # NHWC convolutions are faster on CUDA and on CPU alike (oneDNN; measured 12 % for Lite0 and 26 %
    # for ResNet-50 at 256 px on 2 cores), so inference uses them on every device
    channels_last = cfg.channels_last
    indices = list(range(rank, len(dataset), world_size))
    samples = EvalSamples(dataset, mean, std, indices)
    workers = loader_workers(cfg.workers, device)
    cm = ConfusionMatrix(num_classes, device=device)
    show = progress and rank == 0

    pin = device.type == "cuda"

    def to_device(t: torch.Tensor) -> torch.Tensor:
        # a copy from pageable memory waits for the stream; from pinned memory it does not
        if pin and not t.is_pinned():
            t = t.pin_memory()
        return t.to(device, non_blocking=True)

    def infer(x: torch.Tensor) -> torch.Tensor:
        x = to_device(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return predict_logits(model, x, cfg, num_classes, amp_dtype)

    if workers:
        loader = torch.utils.data.DataLoader(samples, batch_size=1, num_workers=workers,
                                             pin_memory=device.type == "cuda")
        for batch in tqdm(start_loader(loader), total=len(loader), desc="evaluate", disable=not show,
                          leave=False, dynamic_ncols=True):
            cm.update(infer(batch["image"]).argmax(1), batch["dense"].to(device, non_blocking=True))
    else:
        counts = np.zeros(num_classes * num_classes, np.int64)

        def load(i: int) -> tuple[np.ndarray, np.ndarray]:
            # normalised in the decoding thread (numpy, without the GIL): torch ops here in the main
            # thread waited on the thread's Python work for the GIL, 5-14 ms per image on a busy machine
            sample = dataset.load(i, with_instances=False)
            return normalise_array(sample.image, samples.mean, samples.std), sample.mask

        decoded = decoded_in_thread(dataset, indices, load=load)
        try:
            for image, mask in tqdm(decoded, total=len(indices), desc="evaluate", disable=not show,
                                    leave=False, dynamic_ncols=True):
                # [1, 3, H, W] channels-last view, the tensor EvalSamples' normalise gives
                logits = infer(torch.from_numpy(image).permute(2, 0, 1)[None])
                if device.type == "cpu" and logits.shape[1] == num_classes:
                    counts += _confusion_counts(mask, logits.argmax(1)[0].numpy(), num_classes)
                else:  # on a GPU the tensor path stays there; it also rejects out-of-range predictions
                    cm.update(logits.argmax(1), to_device(torch.from_numpy(mask.astype(np.int64))[None]))
        finally:
            decoded.close()  # stops the decoding thread when inference stops early
        cm.add_counts(torch.from_numpy(counts))
    cm.all_reduce()
    return cm.compute(), cm


def _confusion_counts(target: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C*C] counts of (target, prediction) pairs, index ``target * C + pred``, for ``target``
    uint8 [H, W] (255 and ids >= C ignored) and ``pred`` [H, W] ids in 0..C-1: what
    :meth:`ConfusionMatrix.update` adds, without the int64 copies and the masking pass (an
    ignored target lands at index >= C*C and is cut off)."""
    n = num_classes
    idx = target.astype(np.uint16) * np.uint16(n) + pred.astype(np.uint16)  # < 256 * 255: no overflow
    return np.bincount(idx.ravel(), minlength=256 * n)[:n * n]


def decoded_in_thread(dataset: SegmentationDataset, indices: list[int], depth: int = PREFETCH,
                      load: Callable[[int], Any] | None = None) -> Iterator:
    """``dataset.load(i, with_instances=False)`` (or ``load(i)``) for each of ``indices``, decoded by
    one background thread up to ``depth`` images ahead, so decoding overlaps inference.

    A thread rather than a loader process: PIL and OpenCV release the GIL while they decode, and
    no second process competes with the intra-op threads for the cores. The thread runs no torch
    op (torch's thread pool stays the main thread's): evaluate_model's ``load`` also normalises,
    with :func:`pointparse.transforms.normalise_array`, the numpy core of the DataLoader path's
    ``normalise``, so the model sees the same values.
    OpenCV runs on one thread meanwhile. An error in the thread is raised here, in order;
    closing the generator stops the thread.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            for i in indices:
                if not put((True, dataset.load(i, with_instances=False) if load is None else load(i))):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put((False, exc))
            return
        put((False, None))

    with opencv_single_threaded():
        worker = threading.Thread(target=decode, name="pointparse-evaluate-decoder", daemon=True)
        worker.start()
        try:
            while True:
                ok, value = ready.get()
                if not ok:
                    if value is not None:
                        raise value
                    return
                yield value
        finally:
            stop.set()
            worker.join()


def write_metrics(out_dir: str | Path, metrics: SegMetrics, cm: ConfusionMatrix, info: DatasetInfo,
                  extra: dict | None = None) -> dict:
    """Write ``metrics.json``, ``per_class_iou.csv`` and ``confusion.npy`` into ``out_dir``."""
    out_dir = Path(out_dir)
    d = metrics.to_dict(list(info.classes), info.protocol)
    d["num_classes"] = info.num_classes
    d["dataset"] = info.name
    if extra:
        d.update(extra)
    write_json(out_dir / "metrics.json", d)
    frame = metrics.per_class_frame(list(info.classes))
    with atomic_file(out_dir / "per_class_iou.csv") as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_file(out_dir / "confusion.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, cm.mat.cpu().numpy())
    return d
