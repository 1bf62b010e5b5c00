"""The loaded-site container (light: a ClientApp mapping a site from its cache imports only this, not the readers)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..batch import ModalitySpec, MultimodalDataset, TaskSpec
from .problems import ValidationReport

#: per-site cache folder inside a site folder (text embeddings; the site cache when no state-dir is set)
CACHE_DIRNAME = ".omnifuse_cache"


@dataclass
class SiteData:
    """One site, ready for training.

    Args:
        name: site name (from site.yaml).
        path: the site folder.
        specs: modality specs in the config's modality order (identical across sites for one config).
        task: the task spec (survival: bin edges from the statistics).
        train: training split.
        val: validation split.
        test: test split.
        skipped: ``{modality or "rows": {reason: count}}`` of invalid entries left out (on-invalid: skip).
        fingerprint: SHA-256 hex of the cohort table and every referenced file (the privacy ledger key).
        stats: the statistics used for standardization.
        report: the validation report.
    """

    name: str
    path: Path
    specs: list[ModalitySpec]
    task: TaskSpec
    train: MultimodalDataset
    val: MultimodalDataset
    test: MultimodalDataset
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    fingerprint: str = ""
    stats: dict = field(default_factory=dict)
    report: ValidationReport | None = None

    @property
    def splits(self) -> dict[str, MultimodalDataset]:
        return {"train": self.train, "val": self.val, "test": self.test}
