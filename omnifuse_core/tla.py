"""TLA — traceable laziness activation (DESIGN §4.4, Eqs. 15–17).

Once per epoch the site scores every non-empty modality combination δ by the summed per-sample distance of the
δ-only prediction from the label, over the samples whose present set contains δ; the argmax is the *lazy*
combination. During the next epoch the δ_lazy-only prediction gets an extra loss on the samples that have δ_lazy.
Under DP the argmax is replaced by report-noisy-max over distances clipped to [0, 1].
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


def summed_distances(distance_fn: Callable[[tuple[int, ...]], torch.Tensor], present: torch.Tensor,
                     combos: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """Per-combination sums of per-sample distances over the eligible samples.

    Args:
        distance_fn: δ -> per-sample distance ``[N]`` of the δ-only prediction.
        present: bool ``[N, M]``.
        combos: candidate combinations.

    Returns:
        ``[len(combos)]`` sums (0 for a combination no sample has).
    """
    out = torch.zeros(len(combos), dtype=torch.float64)
    for i, combo in enumerate(combos):
        eligible = contains(present, combo)
        if eligible.any():
            out[i] = distance_fn(combo)[eligible].double().sum()
    return out


def select_lazy(scores: torch.Tensor) -> int:
    """δ_lazy = argmax of the summed distances (non-private selection)."""
    return int(torch.argmax(scores))


def activation_loss(per_sample_loss: torch.Tensor, present: torch.Tensor, combo: Sequence[int]) -> torch.Tensor:
    """L_TLA per sample: the δ_lazy-only loss on samples that contain δ_lazy, 0 elsewhere.

    The batch loss is the mean of this over *all* samples (a sum of per-sample terms, as DP-SGD needs), so
    an empty mask gives 0.
    """
    return per_sample_loss * contains(present, combo).to(per_sample_loss.dtype)
