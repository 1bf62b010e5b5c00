"""TLA — traceable laziness activation (DESIGN §4.4, Eqs. 15–17).

Before each epoch that follows a trained one, the site scores every non-empty modality combination δ by the
**mean** per-sample distance of the δ-only prediction from the label over the n_δ samples whose present set contains
δ, shrunk when few patients have δ: ``D(δ) = Σ distance / max(n_δ, F)`` (F = ``tla-min-samples``). The argmax is the
*lazy* combination: the one whose prediction is worst *per patient*, whatever its prevalence (a sum would rank by
how many patients have δ and always pick the modality everyone has). During the epoch the δ_lazy-only prediction
gets an extra loss on the samples that have δ_lazy. Under DP the argmax is replaced by report-noisy-max over
``F · D(δ)`` computed from distances clipped to [0, 1]: sensitivity 1, not monotone (docs/privacy.md).
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch


def all_combinations(num_modalities: int) -> list[tuple[int, ...]]:
    """The 2^M − 1 non-empty modality combinations, ordered by size then index."""
    return [c for k in range(1, num_modalities + 1) for c in itertools.combinations(range(num_modalities), k)]


def combo_mask(combo: Sequence[int], num_modalities: int, device: torch.device | None = None) -> torch.Tensor:
    mask = torch.zeros(num_modalities, dtype=torch.bool, device=device)
    mask[list(combo)] = True
    return mask


def contains(present: torch.Tensor, combo: Sequence[int]) -> torch.Tensor:
    """Bool ``[B]``: samples whose present set contains every modality of ``combo``."""
    return present[:, list(combo)].all(dim=1)


def combo_name(combo: Sequence[int], names: Sequence[str]) -> str:
    return "+".join(names[i] for i in combo)


def mean_distances(distance_fn: Callable[[tuple[int, ...]], torch.Tensor], present: torch.Tensor,
                   combos: Sequence[tuple[int, ...]], min_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-combination mean distances ``Σ_eligible distance / max(n_δ, F)`` and eligible counts ``n_δ``.

    Args:
        distance_fn: δ -> per-sample distance ``[N]`` of the δ-only prediction.
        present: bool ``[N, M]``.
        combos: candidate combinations.
        min_samples: F >= 1; a combination fewer than F samples have is shrunk towards 0 (its sum is divided by F),
            so a handful of patients cannot make it the lazy one, and one patient moves a score by at most 1/F.

    Returns:
        ``([len(combos)] scores, [len(combos)] counts)``; a combination no sample has scores 0.
    """
    if min_samples < 1:
        raise ValueError(f"tla-min-samples must be >= 1, got {min_samples}")
    scores = torch.zeros(len(combos), dtype=torch.float64)
    counts = torch.zeros(len(combos), dtype=torch.long)
    for i, combo in enumerate(combos):
        eligible = contains(present, combo)
        n = int(eligible.sum())
        counts[i] = n
        if n:
            scores[i] = distance_fn(combo)[eligible].double().sum() / max(n, min_samples)
    return scores, counts


def select_lazy(scores: torch.Tensor) -> int:
    """δ_lazy = argmax of the mean distances (non-private selection)."""
    return int(torch.argmax(scores))


def selections_in_call(epochs: int, trained: bool) -> int:
    """How many minings (and so DP noisy-max selections) one ``train_local`` call makes.

    Mining runs before every epoch whose model has already been trained for at least one epoch: every epoch when
    the incoming model is trained (a later round, a resumed run), all but the first otherwise.
    """
    return max(int(epochs) - (0 if trained else 1), 0)


def activation_loss(per_sample_loss: torch.Tensor, present: torch.Tensor, combo: Sequence[int]) -> torch.Tensor:
    """L_TLA per sample: the δ_lazy-only loss on samples that contain δ_lazy, 0 elsewhere.

    The batch loss is the mean of this over *all* samples (a sum of per-sample terms, as DP-SGD needs), so
    an empty mask gives 0.
    """
    return per_sample_loss * contains(present, combo).to(per_sample_loss.dtype)
