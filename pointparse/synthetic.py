"""Synthetic outdoor scenes with dense masks and instance maps, for tests and the CPU demo.

Each image is a small "scene": sky on top above a wavy horizon, wall bands (buildings) standing
on the horizon, grass ground with an optional road (a perspective trapezoid) and an optional
lake, and a few "thing" instances (balls, boxes, kites, poles) drawn far-to-near so that near
things occlude far ones. Stuff regions are often split into several connected components (a
building cuts the sky, a road cuts the grass), which exercises make-points' connected-component
path.

Class appearance is a texture/colour *statistic* with per-image and per-instance variation
(brick pattern with a random brick colour and size, grass noise, water ripples, shaded balls,
striped kites, ...), never a single exact colour, so a segmentation net has to learn something
yet a small one learns it on CPU in minutes.

On-disk layout (read by :class:`pointparse.datasets.FolderDataset`)::

    out/classes.txt                    'id name r:g:b', ids 0..8
    out/synthetic.json                 the SyntheticConfig that produced the folder
    out/images/<split>/<name>.png|jpg  RGB uint8
    out/masks/<split>/<name>.png       uint8 class ids (palette PNG), no ignore pixels
    out/instances/<split>/<name>.png   16-bit instance ids: things 1..K (unique per image),
                                       stuff 0 (like ADE20K: stuff has no instances, so
                                       make-points clicks each connected component of it)

Everything is a deterministic function of the config: the same config gives byte-identical
files, and image ``i`` of a split depends only on ``(seed, split, i)`` and its size range, so
asking for more images keeps the earlier ones unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .errors import ConfigError
from .fields import check_fields
from .images import write_label_png
from .io import atomic_dir

STUFF_CLASSES = ("sky", "wall", "grass", "road", "water")
THING_CLASSES = ("ball", "box", "kite", "pole")
CLASSES = STUFF_CLASSES + THING_CLASSES
PALETTE = (
    (70, 130, 180),   # sky
    (180, 100, 70),   # wall
    (107, 142, 35),   # grass
    (128, 64, 128),   # road
    (0, 80, 160),     # water
    (220, 20, 60),    # ball
    (190, 150, 60),   # box
    (250, 170, 30),   # kite
    (153, 153, 153),  # pole
)
SKY, WALL, GRASS, ROAD, WATER, BALL, BOX, KITE, POLE = range(len(CLASSES))

#: sanity bounds on the image side; 64-256 px is the intended range for CPU demos and tests,
#: larger sizes are allowed for benchmarks.
MIN_SIZE, MAX_SIZE = 32, 1024
IMAGE_FORMATS = ("png", "jpg")


@dataclass
class SyntheticConfig:
    """What :func:`generate_scenes` makes.

    ``size``: one side length (square images) or ``(min, max)``; with a range, height and width
    are drawn independently per image. ``instances``: ``(min, max)`` thing instances drawn per
    image (fully occluded ones disappear, so an image may show fewer). ``image_format``: ``png``
    (lossless) or ``jpg`` (quality 95, smaller and faster to write).
    """

    seed: int = 0
    size: int | tuple[int, int] = 128
    splits: dict[str, int] = field(default_factory=lambda: {"train": 200, "val": 50})
    instances: tuple[int, int] = (2, 6)
    image_format: str = "png"

    def __post_init__(self) -> None:
        check_fields(self)  # seed: an integer (pointparse.fields), not a string that fails mid-generation
        size = (self.size, self.size) if isinstance(self.size, (int, np.integer)) else tuple(self.size)
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) for v in size):
            raise ConfigError(f"synthetic size must be an int or (min, max) ints, got {self.size!r}")
        lo, hi = int(size[0]), int(size[1])
        if not (MIN_SIZE <= lo <= hi <= MAX_SIZE):
            raise ConfigError(f"synthetic size {self.size!r} must satisfy {MIN_SIZE} <= min <= max <= {MAX_SIZE}")
        self.size = lo if lo == hi else (lo, hi)
        inst = tuple(self.instances)
        if len(inst) != 2 or not (0 <= int(inst[0]) <= int(inst[1]) <= 1000):
            raise ConfigError(f"synthetic instances must be (min, max) with 0 <= min <= max <= 1000, got {self.instances!r}")
        self.instances = (int(inst[0]), int(inst[1]))
        if not self.splits or not isinstance(self.splits, dict):
            raise ConfigError("synthetic splits must be a non-empty mapping split name -> number of images")
        for name, n in self.splits.items():
            if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
                raise ConfigError(f"synthetic split name {name!r} is not a plain folder name")
            if not isinstance(n, (int, np.integer)) or n < 1:
                raise ConfigError(f"synthetic split {name!r} needs a positive number of images, got {n!r}")
        self.splits = {str(k): int(v) for k, v in self.splits.items()}
        if self.image_format not in IMAGE_FORMATS:
            raise ConfigError(f"synthetic image_format {self.image_format!r}; valid choices: {', '.join(IMAGE_FORMATS)}")

    @property
    def size_range(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else self.size  # type: ignore[return-value]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of every other image."""
    split_key = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:4], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, split_key, int(index)]))


# -- textures ----------------------------------------------------------------------------------
# Each returns float32 RGB [h, w, 3] in 0..255 (before clipping). Colours vary per image/instance.


def _jitter(rng: np.random.Generator, base, spread: float = 18.0) -> np.ndarray:
    return np.asarray(base, np.float32) + rng.normal(0.0, spread, 3).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Roughly unit-variance noise that varies over ``cell`` pixels: [h, w] float32."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _sky(rng, h, w, yy, xx):
    base = _jitter(rng, (130, 180, 235), 15)
    grad = (0.75 + 0.35 * yy / h)[..., None]  # brighter towards the horizon
    clouds = np.clip(_smooth_noise(rng, h, w, max(h, w) / rng.uniform(3, 7)) - rng.uniform(0.3, 0.9), 0, 1)
    img = base * grad
    return img + (clouds[..., None] * (250.0 - img)) * 0.9


def _wall(rng, h, w, yy, xx):
    base = _jitter(rng, [(165, 80, 60), (150, 150, 145), (200, 175, 130)][rng.integers(3)], 12)
    bh = int(rng.integers(5, 11)) * max(1, min(h, w) // 128)
    bw = int(bh * rng.uniform(1.8, 2.8))
    row = (yy // bh).astype(np.int64)
    shifted = xx + (row % 2) * (bw // 2)
    col = (shifted // bw).astype(np.int64)
    shade = rng.uniform(0.8, 1.15, size=(int(h // bh) + 2, int((w + bw) // bw) + 2)).astype(np.float32)
    img = base * shade[row, col][..., None]
    mortar = ((yy % bh) < 1) | ((shifted % bw) < 1)
    img[mortar] = _jitter(rng, (215, 210, 200), 8)
    return img


def _grass(rng, h, w, yy, xx):
    base = _jitter(rng, (70, 135, 45), 14)
    fine = rng.standard_normal((h, w)).astype(np.float32)
    patches = _smooth_noise(rng, h, w, rng.uniform(8, 20))
    img = base * (1.0 + 0.12 * patches)[..., None]
    img = img + np.stack([10 * fine, 28 * fine, 8 * fine], axis=-1)
    return img


def _road(rng, h, w, yy, xx):
    base = _jitter(rng, (95, 95, 100), 10)
    fine = rng.standard_normal((h, w)).astype(np.float32)
    return base + (9 * fine)[..., None]


def _water(rng, h, w, yy, xx):
    base = _jitter(rng, (40, 95, 150), 14)
    period = rng.uniform(4, 9)
    ripples = np.sin(2 * np.pi * yy / period + 1.5 * np.sin(2 * np.pi * xx / rng.uniform(20, 50)))
    img = base * (1.0 + 0.15 * ripples)[..., None]
    glint = np.clip(ripples - 0.85, 0, 1) * 6.0
    return img + (glint * 120)[..., None]


_STUFF_TEXTURES = {SKY: _sky, WALL: _wall, GRASS: _grass, ROAD: _road, WATER: _water}


def _ball(rng, shape, yy, xx):
    cx, cy, r = shape["cx"], shape["cy"], shape["r"]
    base = _jitter(rng, [(215, 45, 40), (235, 125, 30), (200, 30, 110)][rng.integers(3)], 15)
    d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r)
    shade = np.clip(1.05 - 0.55 * d2, 0.35, 1.1)
    hx, hy = cx - 0.35 * r, cy - 0.35 * r
    hl = np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * (0.2 * r) ** 2)) * 90
    return base * shade[..., None] + hl[..., None]


def _box(rng, shape, yy, xx):
    base = _jitter(rng, (185, 140, 80), 14)
    th = shape["angle"]
    u = (xx - shape["cx"]) * np.cos(th) + (yy - shape["cy"]) * np.sin(th)
    v = -(xx - shape["cx"]) * np.sin(th) + (yy - shape["cy"]) * np.cos(th)
    grain = np.sin(2 * np.pi * v / rng.uniform(3, 6))
    img = base * (1.0 + 0.1 * grain)[..., None]
    edge = (np.abs(u) > shape["hw"] - 1.5) | (np.abs(v) > shape["hh"] - 1.5)  # dark outline
    img[edge] *= 0.55
    return img


def _kite(rng, shape, yy, xx):
    colours = np.array([(250, 220, 30), (240, 40, 160), (30, 220, 230), (250, 250, 250)], np.float32)
    a, b = rng.choice(len(colours), size=2, replace=False)
    ca, cb = colours[a] + rng.normal(0, 10, 3), colours[b] + rng.normal(0, 10, 3)
    th = shape["angle"]
    u = (xx - shape["cx"]) * np.cos(th) + (yy - shape["cy"]) * np.sin(th)
    v = -(xx - shape["cx"]) * np.sin(th) + (yy - shape["cy"]) * np.cos(th)
    quad = (u > 0) ^ (v > 0)
    return np.where(quad[..., None], ca, cb).astype(np.float32)


def _pole(rng, shape, yy, xx):
    base = _jitter(rng, (165, 165, 175), 10)
    t = np.clip((xx - shape["cx"]) / max(shape["hw"], 1.0), -1, 1)
    shade = 0.55 + 0.6 * np.cos(t * np.pi / 2) ** 2  # cylinder: bright middle, dark sides
    return base * shade[..., None]


_THING_TEXTURES = {BALL: _ball, BOX: _box, KITE: _kite, POLE: _pole}


# -- layout ------------------------------------------------------------------------------------


def _stuff_layout(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Stuff class map uint8 [h, w] and the horizon row per column (float [w])."""
    x = np.arange(w, dtype=np.float32)
    y = np.arange(h, dtype=np.float32)[:, None]
    horizon = h * rng.uniform(0.3, 0.55) + h * rng.uniform(0, 0.05) * np.sin(
        2 * np.pi * x / (w * rng.uniform(0.4, 1.5)) + rng.uniform(0, 2 * np.pi))
    mask = np.where(y < horizon[None, :], SKY, GRASS).astype(np.uint8)
    # Buildings stand on the horizon and split the sky into several components.
    for _ in range(int(rng.integers(0, 3))):
        bw = w * rng.uniform(0.12, 0.4)
        x0 = rng.uniform(-0.1 * w, w - 0.2 * bw)
        top = horizon.min() - h * rng.uniform(0.08, 0.3)
        cols = (x >= x0) & (x < x0 + bw)
        mask[(y >= top) & (y < horizon[None, :] + 0.02 * h) & cols[None, :]] = WALL
    below = y >= horizon[None, :] + 0.02 * h
    # A lake on the ground.
    if rng.random() < 0.5:
        cx, cy = rng.uniform(0, w), rng.uniform(horizon.mean() + 0.15 * h, h)
        ax, ay = w * rng.uniform(0.1, 0.3), h * rng.uniform(0.05, 0.15)
        lake = ((x[None, :] - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 < 1
        mask[lake & below] = WATER
    # A road from the bottom edge to a vanishing point on the horizon splits the grass.
    if rng.random() < 0.6:
        vx = rng.uniform(0.3, 0.7) * w
        bx, half = rng.uniform(0.2, 0.8) * w, rng.uniform(0.15, 0.35) * w
        hy = horizon.mean()
        t = np.clip((y - hy) / max(h - hy, 1.0), 0, 1)  # 0 at the horizon, 1 at the bottom
        centre = vx + (bx - vx) * t
        road = (np.abs(x[None, :] - centre) < half * t + 1) & below
        mask[road] = ROAD
    return mask, horizon


def _thing_shapes(rng: np.random.Generator, h: int, w: int, n: int, horizon: np.ndarray) -> list[dict]:
    """Parameters of ``n`` things, sorted far-to-near (drawing order: later occludes earlier)."""
    s = float(min(h, w))
    hz = float(horizon.mean())
    shapes = []
    for _ in range(n):
        cls = int(rng.choice([BALL, BOX, KITE, POLE], p=[0.3, 0.3, 0.2, 0.2]))
        if cls == KITE:
            size = s * rng.uniform(0.06, 0.14)
            cx, cy = rng.uniform(0, w), rng.uniform(0.05 * h, max(0.06 * h, hz - size))
            shapes.append({"cls": cls, "cx": cx, "cy": cy, "hw": size * 0.6, "hh": size,
                           "angle": rng.uniform(-0.5, 0.5), "depth": -1.0})
            continue
        base = rng.uniform(hz + 0.05 * h, 0.98 * h)  # where it touches the ground
        cx = rng.uniform(0, w)
        if cls == BALL:
            r = s * rng.uniform(0.04, 0.12) * (0.6 + 0.6 * base / h)  # nearer = larger
            shapes.append({"cls": cls, "cx": cx, "cy": base - r, "r": r, "depth": base})
        elif cls == BOX:
            hw, hh = s * rng.uniform(0.04, 0.11), s * rng.uniform(0.04, 0.11)
            shapes.append({"cls": cls, "cx": cx, "cy": base - hh, "hw": hw, "hh": hh,
                           "angle": rng.uniform(-0.4, 0.4), "depth": base})
        else:  # POLE
            hw, hh = max(1.5, s * rng.uniform(0.01, 0.025)), h * rng.uniform(0.15, 0.3)
            shapes.append({"cls": cls, "cx": cx, "cy": base - hh, "hw": hw, "hh": hh,
                           "angle": 0.0, "depth": base})
    shapes.sort(key=lambda d: d["depth"])  # stable: ties keep drawing order
    return shapes


def _polygon(shape: dict) -> np.ndarray:
    cx, cy, hw, hh, th = shape["cx"], shape["cy"], shape["hw"], shape["hh"], shape["angle"]
    if shape["cls"] == KITE:
        local = np.array([(0, -hh), (hw, -0.2 * hh), (0, hh), (-hw, -0.2 * hh)], np.float64)
    else:
        local = np.array([(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)], np.float64)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    pts = local @ rot.T + (cx, cy)
    return np.round(pts * 16).astype(np.int32)  # 4 fractional bits (cv2 ``shift``)


def render_scene(rng: np.random.Generator, height: int, width: int, n_things: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one scene.

    Returns ``image`` uint8 [H, W, 3] RGB, ``mask`` uint8 [H, W] class ids into :data:`CLASSES`
    (every pixel labelled, no 255), ``instances`` uint16 [H, W]: thing instance ids ``1..K``
    numbered in drawing order (fully occluded things are dropped, ids stay contiguous), 0 on stuff.
    """
    h, w = int(height), int(width)
    mask, horizon = _stuff_layout(rng, h, w)
    shapes = _thing_shapes(rng, h, w, n_things, horizon)
    inst = np.zeros((h, w), np.uint16)
    for k, shape in enumerate(shapes, 1):
        if shape["cls"] == BALL:
            centre = (int(round(shape["cx"] * 16)), int(round(shape["cy"] * 16)))
            cv2.circle(inst, centre, int(round(shape["r"] * 16)), k, thickness=-1, lineType=cv2.LINE_8, shift=4)
        else:
            cv2.fillPoly(inst, [_polygon(shape)], k, lineType=cv2.LINE_8, shift=4)
    # Keep visible things only, renumbered 1..K in drawing order.
    visible = np.flatnonzero(np.bincount(inst.ravel(), minlength=len(shapes) + 1)[1:]) + 1
    lut = np.zeros(len(shapes) + 1, np.uint16)
    lut[visible] = np.arange(1, len(visible) + 1, dtype=np.uint16)
    inst = lut[inst]
    shapes = [shapes[k - 1] for k in visible]
    cls_of = np.array([0] + [s["cls"] for s in shapes], np.uint8)
    mask = np.where(inst > 0, cls_of[inst], mask).astype(np.uint8)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c, texture in _STUFF_TEXTURES.items():
        # Draw the texture's random numbers even for absent classes so that one class's presence
        # does not shift every later random draw (keeps scenes stable under layout changes).
        tex = texture(rng, h, w, yy, xx)
        sel = mask == c
        img[sel] = tex[sel]
    for k, shape in enumerate(shapes, 1):
        ys, xs = _bbox_of(inst, shape)
        tex = _THING_TEXTURES[shape["cls"]](rng, shape, yy[ys, xs], xx[ys, xs])
        sel = inst[ys, xs] == k
        crop = img[ys, xs]  # a view: writing into it paints the image
        crop[sel] = tex[sel]
    img *= rng.uniform(0.85, 1.15)
    img += rng.normal(0.0, 3.0, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), 0.6)  # soften aliased edges like a camera would
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask, inst


def _bbox_of(inst: np.ndarray, shape: dict) -> tuple[slice, slice]:
    """Slices bounding a thing's drawn extent (from its parameters, no full-image search)."""
    h, w = inst.shape
    ext = shape["r"] if "r" in shape else float(np.hypot(shape["hw"], shape["hh"]))
    y0, y1 = max(0, int(shape["cy"] - ext) - 2), min(h, int(shape["cy"] + ext) + 3)
    x0, x1 = max(0, int(shape["cx"] - ext) - 2), min(w, int(shape["cx"] + ext) + 3)
    return slice(y0, y1), slice(x0, x1)


# -- writing -----------------------------------------------------------------------------------


def write_classes_file(path: Path) -> None:
    lines = [f"{i} {name} {r}:{g}:{b}" for i, (name, (r, g, b)) in enumerate(zip(CLASSES, PALETTE))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_instances_png(path: Path, inst: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(inst, dtype=np.uint16)).save(path, format="PNG")


def generate_scenes(out_dir: str | Path, config: SyntheticConfig | None = None) -> Path:
    """Write a synthetic dataset folder (layout in the module docstring) and return its path.

    The whole folder is written into a temporary sibling and renamed into place at the end
    (an existing ``out_dir`` is replaced), so an interrupted run leaves nothing half-written.
    """
    config = config or SyntheticConfig()
    out_dir = Path(out_dir)
    lo, hi = config.size_range
    ext = config.image_format
    with atomic_dir(out_dir) as tmp:
        write_classes_file(tmp / "classes.txt")
        (tmp / "synthetic.json").write_text(json.dumps(asdict(config), sort_keys=True, indent=1) + "\n", encoding="utf-8")
        for split, n in config.splits.items():
            dirs = [tmp / sub / split for sub in ("images", "masks", "instances")]
            for d in dirs:
                d.mkdir(parents=True)
            for i in range(n):
                rng = image_rng(config.seed, split, i)
                h, w = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))) if lo != hi else (lo, lo)
                n_things = int(rng.integers(config.instances[0], config.instances[1] + 1))
                image, mask, inst = render_scene(rng, h, w, n_things)
                name = f"{split}_{i:05d}"
                img = Image.fromarray(image)
                if ext == "jpg":
                    img.save(dirs[0] / f"{name}.jpg", format="JPEG", quality=95)
                else:
                    img.save(dirs[0] / f"{name}.png", format="PNG")
                write_label_png(dirs[1] / f"{name}.png", mask, palette=np.asarray(PALETTE, np.uint8))
                _write_instances_png(dirs[2] / f"{name}.png", inst)
    return out_dir
