"""Image reader: PNG / JPEG / NPY / DICOM -> ``[C, S, S]`` float32.

Each image is scaled to [0, 1] (8-bit: /255; 16-bit PNG: /65535; other arrays, DICOM included: min-max per
image), converted to ``image-channels`` channels (RGB -> gray by luminance, gray -> RGB by repetition), resized to
``image-size`` x ``image-size`` (bilinear, aspect ratio not kept) and normalized as ``(x - mean) / std`` with the
descriptor's ``mean`` / ``std`` (default 0.5 / 0.5, so pixels lie in [-1, 1]).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..batch import KIND_IMAGE
from .base import ModalityData, ReadContext, empty
from .descriptor import ModalityDesc

log = logging.getLogger(__name__)

PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUFFIXES = (*PIL_SUFFIXES, ".npy", *DICOM_SUFFIXES)
#: Images with more pixels than this are downsampled with a logged note.
LARGE_PIXELS = 4096 * 4096


class ImageError(ValueError):
    """An image cannot be read; the message says why."""


def read_images(ctx: ReadContext, desc: ModalityDesc) -> ModalityData:
    """Read one image file per patient (the cohort column holds its path)."""
    size, channels = ctx.cfg.image_size, ctx.cfg.image_channels
    n = len(ctx.cohort)
    values, present = empty(n, (channels, size, size))
    mean, std = float(desc.options.get("mean", 0.5)), float(desc.options.get("std", 0.5))
    declared = desc.options.get("channels")
    if declared is not None and int(declared) != channels:
        ctx.notes.append(f"{desc.name}: site.yaml says channels: {declared}; images are converted to the "
                         f"config's image-channels = {channels}")
    large = 0
    for i, ref in ctx.references(desc):
        path = ctx.resolve_file(desc, i, ref)
        if path is None:
            continue
        try:
            img, was_large = load_image(path, size=size, channels=channels)
        except ImageError as exc:
            ctx.problem(desc.name, i, ctx.cohort.file, i + 1, desc.ref_column, f"{ref}: {exc}", "unreadable")
            continue
        large += was_large
        values[i] = (img - mean) / std
        present[i] = True
    if large:
        ctx.notes.append(f"{desc.name}: {large} very large image(s) (> {LARGE_PIXELS} pixels) were downsampled")
    return ModalityData(desc.name, KIND_IMAGE, (channels, size, size), values, present)


def load_image(path: Path, *, size: int, channels: int) -> tuple[np.ndarray, bool]:
    """Load one image as ``[channels, size, size]`` float32 in [0, 1].

    Args:
        path: a PNG / JPEG / NPY / DICOM file.
        size: output height and width.
        channels: 1 (grayscale) or 3 (RGB).

    Returns:
        The image and whether it was very large (downsampled with a logged note).

    Raises:
        ImageError: unknown extension, unreadable file, no pixel data, NaN/Inf pixels, unsupported shape.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ImageError(f"extension {suffix!r} not supported; use one of {', '.join(SUFFIXES)}")
    if suffix in PIL_SUFFIXES:
        arr = _read_pil(path)
    elif suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ImageError(f"not a readable .npy array ({exc})") from exc
        arr = _scale(_hwc(arr))
    else:
        arr = _scale(_hwc(_read_dicom(path)), minmax=True)
    h, w = arr.shape[:2]
    was_large = h * w > LARGE_PIXELS
    if was_large:
        log.info("image %s is %dx%d; downsampling it to %dx%d", path.name, w, h, size, size)
    arr = _to_channels(arr, channels)
    out = np.stack([np.asarray(Image.fromarray(arr[:, :, c].astype(np.float32))
                               .resize((size, size), Image.BILINEAR, reducing_gap=2.0)) for c in range(channels)])
    return np.clip(out, 0.0, 1.0).astype(np.float32), was_large


def _read_pil(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                return _hwc(arr / (65535.0 if arr.max() > 255 or img.mode.startswith("I;16") else 255.0))
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            return _hwc(np.asarray(img, dtype=np.float64) / 255.0)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageError(f"not a readable image ({exc})") from exc


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
        arr = np.asarray(ds.pixel_array, dtype=np.float64)
    except (InvalidDicomError, AttributeError, ValueError, OSError, RuntimeError, NotImplementedError) as exc:
        raise ImageError(f"not a readable DICOM image ({str(exc).splitlines()[0]})") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    rgb = str(getattr(ds, "PhotometricInterpretation", "")).startswith(("RGB", "YBR"))
    if frames > 1:  # multi-frame: keep the middle frame
        log.info("DICOM %s has %d frames; using the middle one", path.name, frames)
        arr = arr[frames // 2]
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1: low values are white
    if arr.ndim == 3 and not rgb and arr.shape[-1] not in (1, 3):
        raise ImageError(f"unsupported DICOM pixel array shape {arr.shape}")
    return arr


def _hwc(arr: np.ndarray) -> np.ndarray:
    """Any of ``[H, W]``, ``[H, W, C]``, ``[C, H, W]`` (C in 1, 3, 4) -> ``[H, W, C]`` float64."""
    arr = np.asarray(arr)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ImageError(f"array of dtype {arr.dtype} is not numeric")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise ImageError(f"array shape {arr.shape} is not an image ([H, W], [H, W, C] or [C, H, W], C in 1/3/4)")
    arr = arr[:, :, :3] if arr.shape[-1] == 4 else arr
    if not np.isfinite(arr).all():
        raise ImageError("pixels contain NaN or Inf")
    return arr.astype(np.float64)


def _scale(arr: np.ndarray, minmax: bool = False) -> np.ndarray:
    """NPY: already in [0, 1] -> kept; 0..255 integers -> /255; anything else (and DICOM) -> min-max per image."""
    lo, hi = float(arr.min()), float(arr.max())
    if not minmax and lo >= 0.0 and hi <= 1.0:
        return arr
    if not minmax and lo >= 0.0 and hi <= 255.0 and np.all(arr == np.round(arr)) and hi > 1.0:
        return arr / 255.0
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    if arr.shape[-1] == channels:
        return arr
    if channels == 1:
        return (arr[:, :, :3] @ np.array([0.299, 0.587, 0.114]))[:, :, None]
    if channels == 3:
        return np.repeat(arr[:, :, :1], 3, axis=-1)
    raise ImageError(f"image-channels must be 1 or 3, got {channels}")
