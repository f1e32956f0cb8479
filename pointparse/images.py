"""Decoding and encoding images and label maps, with errors that name the file.

RGB images decode through OpenCV where it gives PIL's pixels exactly (8-bit RGB or grey PNG and
JPEG, a complete file): ~2x faster (``benchmarks/bench_decode.py``, idle: CamVid's PNG frames
1.29 vs 2.54 ms, LabelMeFacade's JPEGs 1.73 vs 3.50, ADE20K's 0.91 vs 1.91). Every
other file, and any file OpenCV refuses, goes through PIL, whose errors the messages quote.
Writers are atomic (:func:`pointparse.io.write_bytes`).
"""

from __future__ import annotations

import io as _io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .io import write_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise DataError(path, "file does not exist")
    return _decode(path, path)


def _decode(source, path: Path, load: bool = True) -> Image.Image:
    """``source`` (a path, a file object or an opened image) as a PIL image, its pixels decoded
    with ``load``; every error a :class:`DataError` naming ``path``."""
    try:
        img = source if isinstance(source, Image.Image) else Image.open(source)
        if load:
            img.load()
    except Image.DecompressionBombError as exc:
        raise DataError(path, _bomb(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(path, f"cannot decode image file ({exc.__class__.__name__}: {exc})") from None
    return img


def _bomb(exc: Exception) -> str:
    # PIL refuses images over twice Image.MAX_IMAGE_PIXELS (a decompression bomb guard)
    return f"image is too large to decode safely ({exc}); shrink it, or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine"


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image, reading only its header."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file does not exist")
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Image.DecompressionBombError as exc:
        raise DataError(path, _bomb(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(path, f"cannot read image header ({exc.__class__.__name__}: {exc})") from None
    return h, w


#: (format, mode) PIL reports for which OpenCV's 3-channel decode equals PIL's ``convert("RGB")``
#: (LabelMeFacade's JPEGs and CamVid's PNGs compared pixel for pixel); not 16-bit, palette,
#: alpha or CMYK files, whose conversions differ
_OPENCV_DECODES = {("PNG", "RGB"), ("PNG", "L"), ("JPEG", "RGB"), ("JPEG", "L")}
#: the bytes a complete file ends with: a file without them goes to PIL, which refuses a cut file
#: (OpenCV 5.1 refuses one too; 4.x builds have decoded cut JPEGs with grey rows and a warning)
_FILE_ENDS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}
# EXIF orientation ignored, as PIL's decode does: pixels as stored, the masks' frame. OpenCV
# before 4.11 has no RGB decode: those builds leave every file to PIL.
_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
_OPENCV_FLAGS = None if _RGB is None else _RGB | cv2.IMREAD_IGNORE_ORIENTATION


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as ``uint8`` [H, W, 3] (see the module docstring for the OpenCV path)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:  # a folder, no permission: one DataError, as PIL's open gave
        raise DataError(path, f"cannot decode image file ({exc.__class__.__name__}: {exc})") from None
    img = _decode(_io.BytesIO(data), path, load=False)
    if (_OPENCV_FLAGS is not None and (img.format, img.mode) in _OPENCV_DECODES
            and data.endswith(_FILE_ENDS[img.format])):
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), _OPENCV_FLAGS)
        if arr is not None and arr.shape == (img.height, img.width, 3):
            return arr
    img = _decode(img, path)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def read_label(path: str | Path) -> np.ndarray:
    """A single-channel label PNG as an integer array [H, W].

    Palette ("P") PNGs give their indices, not colours; 16-bit PNGs keep 16 bits. RGB label files
    are refused: a colour-coded mask must be converted to ids first (the error says so).
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8) if img.mode == "L" else np.asarray(img).astype(np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(img).astype(np.int32)
    raise DataError(
        path,
        f"label image has mode {img.mode!r}; expected single-channel class ids (L, P or 16-bit). "
        "Convert colour-coded masks to id PNGs first",
    )


def read_rgb_label(path: str | Path) -> np.ndarray:
    """A colour-coded label PNG as ``uint8`` [H, W, 3] (ADE20K instance files encode ids in R/G)."""
    img = _open(Path(path))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


#: Colour of ignore (255) pixels in figures and palette PNGs: the PASCAL VOC colour map's entry 255
#: (VOC's own void colour). No class gets it: see :func:`ignore_colour`.
IGNORE_COLOUR = (224, 224, 192)


def ignore_colour(palette=None) -> tuple[int, int, int]:
    """The colour to show ignore (255) pixels with, next to the class colours ``palette`` [C, 3].

    :data:`IGNORE_COLOUR` unless one of the classes (``palette[:255]``) has that colour; then the
    first grey ``(v, v, v)``, v = 255 down to 0, no class has (255 classes cannot use all 256), so
    ignore never looks like a class in a figure or a label PNG.
    """
    if palette is None or len(palette) == 0:
        return IGNORE_COLOUR
    used = {tuple(int(v) for v in c) for c in np.asarray(palette, dtype=np.int64).reshape(-1, 3)[:255]}
    for colour in (IGNORE_COLOUR, *((v, v, v) for v in range(255, -1, -1))):
        if colour not in used:
            return colour
    raise AssertionError("unreachable: at most 255 class colours")


def write_label_png(path: str | Path, label: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a uint8 class-id map [H, W] atomically, as a palette PNG when a palette is given.

    A palette PNG shows colours in any viewer yet still decodes to the raw ids, which answers the
    common "my label PNGs look black" complaint. Entries ``0..C-1`` are the class colours
    (``palette[:255]``); entry 255 (ignore) is always :func:`ignore_colour` of them.
    """
    label = np.asarray(label)
    if label.dtype != np.uint8:
        if label.min(initial=0) < 0 or label.max(initial=0) > 255:
            raise ValueError("label values must fit in uint8")
        label = label.astype(np.uint8)
    img = Image.fromarray(label, mode="L")
    if palette is not None:
        classes = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:255]
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[: len(classes)] = classes
        pal[255] = ignore_colour(classes)
        img = img.convert("P")
        img.putpalette(pal.reshape(-1).tolist())
    buf = _io.BytesIO()  # encoded first: a full disk then says how much the file needed
    img.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def write_image(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write an RGB ``uint8`` [H, W, 3] image atomically (format from the suffix)."""
    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    buf = _io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format=fmt, **kwargs)
    write_bytes(path, buf.getvalue())


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
