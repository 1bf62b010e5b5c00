"""Synthetic 64x64 grayscale chest-like images with lesion blobs and per-site scanner effects.

Anatomy (body outline, two dark lung fields, heart, spine) jitters per patient. Lesions are bright Gaussian blobs
inside the lung fields: their number, size and brightness grow with the image's first latent signal (factor 1,
lung lesion burden). If the image also observes a second factor, the heart size follows it. The site's scanner
(:data:`sim.presets.SCANNERS`) then applies low resolution (block averaging), blur, gain / offset, noise and streak
artifacts. Everything is vectorized over patients with numpy; PNGs are written with PIL.

:func:`corrupt_images` turns images into failed acquisitions (per-patient artifacts of the ``reliability`` preset):
washed-out contrast, a dropped band of rows, several bright streaks and heavy noise. The generator renders those
patients' images from a signal drawn independently of the latent state, so they carry no signal at all; the
artifact look only makes them recognizable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64
MAX_BLOBS = 6


def _ellipse(x: np.ndarray, y: np.ndarray, cx, cy, rx, ry, sharp: float = 12.0) -> np.ndarray:
    """Soft indicator of an ellipse (broadcasting over a leading patient axis)."""
    r2 = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    return 1.0 / (1.0 + np.exp(np.clip(sharp * (r2 - 1.0), -50, 50)))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``[N, H, W]`` with edge padding."""
    if sigma <= 0:
        return img
    rad = max(1, int(np.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (rad, rad)
        p = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        img = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return img


def _scanner(img: np.ndarray, scanner: dict[str, float], x: np.ndarray, y: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    n = img.shape[0]
    block = int(scanner["block"])
    if block > 1:
        small = img.reshape(n, SIZE // block, block, SIZE // block, block).mean(axis=(2, 4))
        img = np.repeat(np.repeat(small, block, axis=1), block, axis=2)
    img = _blur(img, float(scanner["blur"]))
    img = scanner["gain"] * img + scanner["offset"]
    streak = rng.random(n) < scanner["streaks"]
    if streak.any():
        k = int(streak.sum())
        theta = rng.uniform(0, np.pi, k)[:, None, None]
        c = rng.uniform(-0.8, 0.8, k)[:, None, None]
        dist = x * np.cos(theta) + y * np.sin(theta) - c
        img[streak] += rng.uniform(0.1, 0.25, k)[:, None, None] * np.exp(-0.5 * (dist / 0.03) ** 2)
    img = img + scanner["noise"] * rng.standard_normal(img.shape)
    return np.clip(img, 0.0, 1.0)


def render_images(signal: np.ndarray, scanner: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Images for N patients.

    Args:
        signal: the image's latent signals ``[N, k]``; column 0 drives lesions, column 1 (if any) the heart size.
        scanner: scanner profile (blur, noise, gain, offset, block, streaks).
        rng: the site's image random stream.

    Returns:
        uint8 ``[N, 64, 64]``.
    """
    n = signal.shape[0]
    g = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    y, x = np.meshgrid(g, g, indexing="ij")
    x, y = x[None], y[None]
    col = lambda v: np.asarray(v, dtype=float)[:, None, None]  # noqa: E731 - per-patient broadcast
    dx, dy = col(0.03 * rng.standard_normal(n)), col(0.03 * rng.standard_normal(n))
    scale = col(1 + 0.03 * rng.standard_normal(n))
    xs, ys = (x - dx) / scale, (y - dy) / scale
    heart = 1 + (0.12 * np.tanh(signal[:, 1]) if signal.shape[1] > 1 else 0.04 * rng.standard_normal(n))
    img = 0.05 + 0.5 * _ellipse(xs, ys, 0, 0, 0.92, 1.02)
    lungs = _ellipse(xs, ys, -0.4, -0.05, 0.3, 0.6) + _ellipse(xs, ys, 0.4, -0.05, 0.3, 0.6)
    img = img - 0.33 * np.clip(lungs, 0, 1)
    img = img + 0.2 * _ellipse(xs, ys, 0.1, 0.3, col(0.25 * heart), 0.22)
    img = img + 0.12 * _ellipse(xs, ys, 0, 0, 0.06, 1.1, sharp=6.0)
    u = signal[:, 0]
    count = np.clip(np.round(1.5 + 1.5 * u + 0.5 * rng.standard_normal(n)), 0, MAX_BLOBS).astype(int)
    amp = 0.18 + 0.08 * np.tanh(u)
    width = 0.07 + 0.05 / (1 + np.exp(-u))
    for k in range(MAX_BLOBS):
        on = count > k
        if not on.any():
            break
        side = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        cx = side * 0.4 + rng.uniform(-0.15, 0.15, n)
        cy = rng.uniform(-0.45, 0.4, n)
        w = width * rng.uniform(0.8, 1.25, n)
        blob = np.exp(-((xs - col(cx)) ** 2 + (ys - col(cy)) ** 2) / (2 * col(w) ** 2))
        img = img + col(amp * on) * blob
    img = _scanner(img, scanner, x, y, rng)
    return np.round(img * 255).astype(np.uint8)


def corrupt_images(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Failed-acquisition look for uint8 images ``[N, 64, 64]``: low contrast, a blank band, streaks, heavy noise.

    Args:
        images: rendered images (uint8).
        rng: random stream (the site's artifact stream).

    Returns:
        uint8 ``[N, 64, 64]``.
    """
    n = images.shape[0]
    g = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    y, x = np.meshgrid(g, g, indexing="ij")
    img = images.astype(float) / 255.0
    img = 0.3 * img + rng.uniform(0.25, 0.45, n)[:, None, None]
    rows = np.arange(SIZE)[None, :, None]
    start = rng.integers(0, SIZE - 12, n)[:, None, None]
    band = (rows >= start) & (rows < start + rng.integers(6, 16, n)[:, None, None])
    img = np.where(band, rng.uniform(0.0, 0.1, n)[:, None, None], img)
    for _ in range(4):
        theta = rng.uniform(0, np.pi, n)[:, None, None]
        c = rng.uniform(-0.8, 0.8, n)[:, None, None]
        dist = x[None] * np.cos(theta) + y[None] * np.sin(theta) - c
        img = img + rng.uniform(0.2, 0.45, n)[:, None, None] * np.exp(-0.5 * (dist / 0.04) ** 2)
    img = img + 0.15 * rng.standard_normal(img.shape)
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def write_images(site_dir: Path, pids: list[str], images: np.ndarray) -> list[str]:
    """Write ``images/<pid>.png`` (8-bit grayscale); returns their site-relative paths."""
    (site_dir / "images").mkdir(parents=True, exist_ok=True)
    rel = []
    for pid, arr in zip(pids, images):
        path = f"images/{pid}.png"
        Image.fromarray(np.ascontiguousarray(arr)).save(site_dir / path, compress_level=1)
        rel.append(path)
    return rel
