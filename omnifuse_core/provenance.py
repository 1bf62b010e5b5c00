"""What every run records about itself: package versions, platform, seed, config digest, code revision."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("omnifuse-fl", "torch", "torchvision", "flwr", "opacus", "dp-accounting", "transformers",
            "scikit-learn", "numpy")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in packages:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def code_revision() -> str:
    """The git commit of the source tree when it is a checkout, else the installed package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return rev or versions(("omnifuse-fl",))["omnifuse-fl"]


def run_provenance(cfg) -> dict:
    """Seed, config digest, code revision, platform, device and package versions of a run."""
    import torch
    return {"seed": cfg.seed, "config_digest": cfg.digest(), "code_revision": code_revision(),
            "platform": platform.platform(), "cuda": torch.cuda.is_available(), "versions": versions()}
