"""Peak memory of loading and training one large synthetic site (issue 8: bounded resources).

Generates one site of ``--patients`` patients with the ``smoke`` preset's latent model (EHR, images, text, genomics;
the preset's presence rates), loads it with ``configs/smoke.yaml`` (``--modalities`` to leave out text, whose
embedding dominates the time on a CPU) and trains one local epoch. Reports the peak resident set size (RSS) after
generation, after loading and after training, as JSON on stdout and in ``--out``.

Usage::

    .venv/bin/python bench/scale_memory.py --patients 10000 --out bench/results/scale_memory.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import resource
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak RSS of this process so far, in MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--modalities", default="ehr,image,genomics")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from omnifuse_core.config import Config
    from omnifuse_core.data.site import load_site
    from omnifuse_core.trainer import train_local
    from omnifuse_core.models import build_model
    from sim.generator import generate_federation
    from sim.presets import get_preset

    preset = get_preset("smoke")
    site = dataclasses.replace(preset.sites[0], patients=args.patients)
    preset = dataclasses.replace(preset, sites=(site,))
    result: dict = {"patients": args.patients, "modalities": args.modalities, "image_size": args.image_size}
    with tempfile.TemporaryDirectory(prefix="ofl-scale-") as tmp:
        t0 = time.perf_counter()
        root = generate_federation(preset, 1, Path(tmp) / "fed", seed=0)
        site_dir = next(p for p in root.iterdir() if p.is_dir())
        result.update(generate_s=round(time.perf_counter() - t0, 1), rss_after_generate_mb=round(peak_rss_mb(), 1))
        cfg = Config.load("smoke").replace(modalities=args.modalities, image_size=args.image_size, device="cpu")
        t0 = time.perf_counter()
        data = load_site(site_dir, cfg)
        result.update(load_s=round(time.perf_counter() - t0, 1), rss_after_load_mb=round(peak_rss_mb(), 1),
                      train_patients=len(data.train))
        model = build_model(data.specs, data.task, cfg)
        t0 = time.perf_counter()
        import torch

        train_local(model, data.train, cfg, device=torch.device("cpu"))
        result.update(train_s=round(time.perf_counter() - t0, 1), rss_after_train_mb=round(peak_rss_mb(), 1))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
