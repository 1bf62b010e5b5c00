"""Site data layer: the on-disk site format (docs/data-format.md), loaders, validation and federated statistics.

Public API (imported lazily so that ``omnifuse_core.data.mimic_schema`` stays light)::

    load_site(path, cfg, *, stats=None) -> SiteData
    validate_site(path, cfg=None) -> ValidationReport
    site_stats(path, cfg) -> dict ;  combine_stats(list_of_dicts) -> dict
    import_mimic_benchmark(listfile, stays_dir, out_dir, *, site_name, task) -> Path
    TextEmbedder(model_path="", max_length=128, device="cpu", cache_dir=None)
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_site": "site", "SiteData": "site", "fingerprint": "site",
    "validate_site": "validate",
    "ValidationReport": "problems", "Problem": "problems", "SiteDataError": "problems",
    "site_stats": "stats", "combine_stats": "stats", "mean_std": "stats", "survival_bin_edges": "stats",
    "import_mimic_benchmark": "mimic_import",
    "TextEmbedder": "text",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
