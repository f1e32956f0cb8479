"""Image decoding (``pointparse.images.read_image``): the OpenCV path gives PIL's pixels exactly,
every file it does not take (or refuses) goes through PIL, and broken files stay one DataError."""

import io

import numpy as np
import pytest
from PIL import Image

from pointparse import images
from pointparse.errors import DataError
from pointparse.images import read_image


def _pil_rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _scene(h=37, w=53, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.linspace(0, 255, w, dtype=np.float64)[None, :, None] * np.ones((h, 1, 3))
    return np.clip(smooth + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(path, array, mode=None, **kw):
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    img.save(path, **kw)
    return path


@pytest.fixture
def opencv_calls(monkeypatch):
    calls = []
    real = images.cv2.imdecode

    def spy(*a):
        out = real(*a)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(images.cv2, "imdecode", spy)
    return calls


@pytest.mark.parametrize("name,mode,kw,opencv", [
    ("rgb.png", None, {}, True),
    ("grey.png", "L", {}, True),
    ("rgb.jpg", None, {"quality": 90}, True),
    ("sub444.jpg", None, {"quality": 95, "subsampling": 0}, True),
    ("progressive.jpg", None, {"quality": 80, "progressive": True}, True),
    ("grey.jpg", "L", {"quality": 90}, True),
    ("rgba.png", "RGBA", {}, False),
    ("palette.png", "P", {}, False),
    ("cmyk.jpg", "CMYK", {"quality": 90}, False),
    ("rgb.bmp", None, {}, False),
])
def test_read_image_equals_pil(tmp_path, opencv_calls, name, mode, kw, opencv):
    path = _save(tmp_path / name, _scene(), mode, **kw)
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == (37, 53, 3) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, _pil_rgb(path))
    assert opencv_calls == ([True] if opencv and images._OPENCV_FLAGS is not None else [])


@pytest.mark.parametrize("orientation", [3, 6])  # shown turned 180 / 90 degrees
def test_exif_orientation_is_ignored_like_pil(tmp_path, opencv_calls, orientation):
    """Pixels as stored (the masks' frame), whatever the EXIF orientation says."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / "rotated.jpg", _scene(), quality=90, exif=exif.tobytes())
    got = read_image(path)
    assert got.shape == (37, 53, 3)
    np.testing.assert_array_equal(got, _pil_rgb(path))


def test_trailing_bytes_go_to_pil(tmp_path, opencv_calls):
    path = _save(tmp_path / "tail.jpg", _scene(), quality=90)
    path.write_bytes(path.read_bytes() + b"\x00garbage")
    np.testing.assert_array_equal(read_image(path), _pil_rgb(path))
    assert opencv_calls == []


@pytest.mark.parametrize("name", ["cut.jpg", "cut.png"])
def test_truncated_file_is_one_data_error(tmp_path, name):
    """A cut file is refused, as before the OpenCV path (some OpenCV builds decode a cut JPEG)."""
    buf = io.BytesIO()
    Image.fromarray(_scene(64, 64)).save(buf, format="JPEG" if name.endswith("jpg") else "PNG")
    path = tmp_path / name
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    with pytest.raises(DataError) as err:
        read_image(path)
    assert name in str(err.value) and "cannot decode" in str(err.value)


def test_corrupt_png_opencv_refuses_pil_reports(tmp_path, opencv_calls):
    """A complete-looking PNG whose pixel data is broken: OpenCV returns nothing, PIL's error names the file."""
    path = _save(tmp_path / "bad.png", _scene(64, 64))
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start:start + 40] = bytes(40)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        read_image(path)
    assert "bad.png" in str(err.value)
    assert opencv_calls == ([False] if images._OPENCV_FLAGS is not None else [])


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "none.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot decode"):
        read_image(tmp_path / "text.png")
