"""The batch contract (DESIGN §3) and the in-memory dataset every loader produces.

A batch is a mapping::

    {"inputs":  {modality_name: Tensor[B, *shape]},   # zeros where the modality is missing
     "present": BoolTensor[B, M],                      # True where patient b really has modality m
     "labels":  Tensor,                                # task-shaped, see below
     "index":   LongTensor[B]}                         # row index into the dataset (patient ids stay local)

Labels: binary -> float [B]; multiclass -> long [B]; multilabel -> float [B, L]; survival -> float [B, 2]
with columns (time, event). Patient identifiers live in :attr:`MultimodalDataset.patient_ids` and are never part
of a batch that leaves the site.

``MultimodalDataset.__getitem__`` returns a flat *tuple* of tensors (Opacus' Poisson data loader needs tuples);
:func:`to_batch` turns a collated tuple back into the mapping above.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch.utils.data import Dataset

# Input kinds the encoders understand.
KIND_SEQUENCE = "sequence"  # EHR time series [T, F]
KIND_TABULAR = "tabular"  # static vector [F]
KIND_IMAGE = "image"  # [C, H, W]
KIND_TEXT = "text_embedding"  # cached frozen-text-model embedding [E]
KIND_GENOMICS = "genomics"  # expression vector [G]
KIND_EVENTS = "events"  # MEDS event sequence [L, 4]: code index, value, has value, time bucket
KINDS = (KIND_SEQUENCE, KIND_TABULAR, KIND_IMAGE, KIND_TEXT, KIND_GENOMICS, KIND_EVENTS)


@dataclass(frozen=True)
class ModalitySpec:
    """What the model needs to know about one modality: its name, input kind and per-sample input shape."""

    name: str
    kind: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"modality '{self.name}': unknown kind {self.kind!r}; expected one of {KINDS}")

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "ModalitySpec":
        return cls(name=d["name"], kind=d["kind"], shape=tuple(int(s) for s in d["shape"]))


@dataclass(frozen=True)
class TaskSpec:
    """The prediction task: kind, output width and label names (plus survival bin edges when relevant)."""

    kind: str  # binary | multiclass | multilabel | survival
    num_outputs: int  # 1 (binary), C (multiclass), L (multilabel), n_bins (survival)
    label_names: tuple[str, ...] = ()
    bin_edges: tuple[float, ...] = ()  # survival: interior cut points (len = n_bins - 1)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "num_outputs": self.num_outputs, "label_names": list(self.label_names),
                "bin_edges": list(self.bin_edges)}

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        return cls(kind=d["kind"], num_outputs=int(d["num_outputs"]), label_names=tuple(d.get("label_names", ())),
                   bin_edges=tuple(float(x) for x in d.get("bin_edges", ())))


@dataclass
class MultimodalDataset(Dataset):
    """All patients of one split at one site, held as tensors.

    Args:
        specs: modality specs, in the configured modality order.
        inputs: ``{name: Tensor[N, *shape]}``; rows of missing modalities must be zeros.
        present: bool ``[N, M]``.
        labels: task-shaped label tensor with N rows.
        patient_ids: N strings, kept at the site.
    """

    specs: Sequence[ModalitySpec]
    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    labels: torch.Tensor
    patient_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = int(self.present.shape[0])
        if self.present.dtype != torch.bool:
            self.present = self.present.bool()
        if self.present.shape != (n, len(self.specs)):
            raise ValueError(f"present mask has shape {tuple(self.present.shape)}, expected ({n}, {len(self.specs)})")
        for i, spec in enumerate(self.specs):
            x = self.inputs.get(spec.name)
            if x is None or tuple(x.shape) != (n, *spec.shape):
                got = None if x is None else tuple(x.shape)
                raise ValueError(f"modality '{spec.name}': input shape {got}, expected {(n, *spec.shape)}")
            # The contract: a missing modality's slot holds zeros.
            missing = ~self.present[:, i]
            if missing.any():
                x[missing] = 0
        if int(self.labels.shape[0]) != n:
            raise ValueError(f"labels have {self.labels.shape[0]} rows, expected {n}")
        if not self.patient_ids:
            self.patient_ids = [str(i) for i in range(n)]

    @property
    def modality_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __len__(self) -> int:
        return int(self.present.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return (*(self.inputs[s.name][i] for s in self.specs), self.present[i], self.labels[i],
                torch.tensor(i, dtype=torch.long))

    def subset(self, idx: torch.Tensor | Sequence[int]) -> "MultimodalDataset":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return MultimodalDataset(self.specs, {k: v[idx] for k, v in self.inputs.items()}, self.present[idx],
                                 self.labels[idx], [self.patient_ids[int(i)] for i in idx])

    def modality_counts(self) -> dict[str, int]:
        """Number of samples that really have each modality, plus ``any`` (at least one) and ``n``."""
        counts = {s.name: int(self.present[:, i].sum()) for i, s in enumerate(self.specs)}
        counts["any"] = int(self.present.any(dim=1).sum())
        counts["n"] = len(self)
        return counts

    def full_batch(self) -> dict:
        return to_batch(self.specs, [t for t in _stack_all(self)])

    @staticmethod
    def concat(parts: Sequence["MultimodalDataset"]) -> "MultimodalDataset":
        specs = parts[0].specs
        for p in parts[1:]:
            if list(p.specs) != list(specs):
                raise ValueError("cannot pool datasets whose modality specs differ")
        return MultimodalDataset(specs, {s.name: torch.cat([p.inputs[s.name] for p in parts]) for s in specs},
                                 torch.cat([p.present for p in parts]), torch.cat([p.labels for p in parts]),
                                 [pid for p in parts for pid in p.patient_ids])


def _stack_all(ds: MultimodalDataset) -> list[torch.Tensor]:
    return [*(ds.inputs[s.name] for s in ds.specs), ds.present, ds.labels, torch.arange(len(ds))]


def to_batch(specs: Sequence[ModalitySpec], collated: Sequence[torch.Tensor]) -> dict:
    """Collated tuple (as produced by a DataLoader over :class:`MultimodalDataset`) -> batch mapping."""
    m = len(specs)
    return {"inputs": {s.name: collated[i] for i, s in enumerate(specs)}, "present": collated[m].bool(),
            "labels": collated[m + 1], "index": collated[m + 2]}


def batch_to(batch: dict, device: torch.device | str) -> dict:
    return {"inputs": {k: v.to(device) for k, v in batch["inputs"].items()}, "present": batch["present"].to(device),
            "labels": batch["labels"].to(device), "index": batch["index"].to(device)}
