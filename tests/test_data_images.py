"""Image loading: PNG / JPEG / NPY / DICOM (pydicom's bundled test files), channels, scaling, large images."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from omnifuse_core.data import images
from omnifuse_core.data.images import ImageError, load_image


def test_png_gray_and_rgb(tmp_path):
    arr = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    Image.fromarray(arr).save(tmp_path / "g.png")
    img, large = load_image(tmp_path / "g.png", size=16, channels=1)
    assert img.shape == (1, 16, 16) and not large
    assert 0 <= img.min() < 0.05 and 0.95 < img.max() <= 1.0
    rgb = np.stack([arr, np.zeros_like(arr), np.zeros_like(arr)], -1)
    Image.fromarray(rgb).save(tmp_path / "c.jpg")
    three, _ = load_image(tmp_path / "c.jpg", size=16, channels=3)
    assert three.shape == (3, 16, 16) and three[1].max() < 0.1
    gray, _ = load_image(tmp_path / "c.jpg", size=16, channels=1)
    assert gray.max() == pytest.approx(0.299, abs=0.05)  # luminance of pure red


def test_npy_and_16bit_png(tmp_path):
    np.save(tmp_path / "a.npy", np.full((3, 10, 12), 0.25, dtype=np.float32))  # [C, H, W]
    img, _ = load_image(tmp_path / "a.npy", size=8, channels=1)
    assert img.shape == (1, 8, 8) and np.allclose(img, 0.25)
    Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16)).save(tmp_path / "b.png")
    img16, _ = load_image(tmp_path / "b.png", size=8, channels=1)
    assert np.allclose(img16, 0.5, atol=0.01)
    np.save(tmp_path / "bad.npy", np.array([[np.nan, 1.0], [0.0, 1.0]]))
    with pytest.raises(ImageError, match="NaN"):
        load_image(tmp_path / "bad.npy", size=8, channels=1)


@pytest.mark.parametrize("name,shape", [("CT_small.dcm", (128, 128)), ("MR_small.dcm", (64, 64))])
def test_dicom_bundled_files(name, shape):
    path = get_testdata_file(name, download=False)  # bundled with pydicom: works offline
    assert path is not None
    img, _ = load_image(__import__("pathlib").Path(path), size=32, channels=1)
    assert img.shape == (1, 32, 32) and img.min() >= 0 and img.max() <= 1 and img.std() > 0.05


def test_dicom_without_pixels_and_garbage(tmp_path):
    from pathlib import Path
    with pytest.raises(ImageError, match="DICOM"):
        load_image(Path(get_testdata_file("rtplan.dcm", download=False)), size=8, channels=1)
    (tmp_path / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(tmp_path / "x.png", size=8, channels=1)
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ImageError, match="extension"):
        load_image(tmp_path / "x.bmp", size=8, channels=1)


def test_large_image_is_downsampled_with_note(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(images, "LARGE_PIXELS", 100 * 100)
    Image.fromarray((np.random.default_rng(0).random((300, 200)) * 255).astype(np.uint8)).save(tmp_path / "big.png")
    with caplog.at_level(logging.INFO, logger="omnifuse_core.data.images"):
        img, large = load_image(tmp_path / "big.png", size=16, channels=1)
    assert large and img.shape == (1, 16, 16)
    assert "downsampling" in caplog.text and "200x300" in caplog.text
