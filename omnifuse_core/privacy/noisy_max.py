"""Report-noisy-max: the DP selection of TLA's laziest modality combination (DESIGN §4.4).

TLA scores a combination δ by its shrunk mean distance ``D(δ) = Σ_{i ∋ δ} d_i / max(n_δ, F)`` over the n_δ
patients whose present set contains δ, with per-sample distances ``d_i`` clipped to ``[0, 1]`` and a public floor
F (``tla-min-samples``). The selection runs on ``F · D(δ)`` (:func:`mean_combination_scores`), whose sensitivity
under add/remove-one adjacency is 1: adding a patient with distance d to a δ it has moves ``F·D`` by
``F·(d − D)/(n + 1)`` when ``n ≥ F`` (at most ``F/(n + 1) ≤ 1`` in size) and by ``d ≤ 1`` when ``n < F``
(see docs/privacy.md for the full case split). Unlike sums, means can move in opposite directions for different
δ (a patient can raise one mean and lower another), so the scores are *not* monotone and one selection with
Laplace (or Gumbel) noise of scale b costs ``2/b`` (Dwork & Roth, Claim 3.9 and its general-sensitivity form).
Sum scores (:func:`combination_scores`, sensitivity 1, monotone: ``1/b``) remain for callers that want them.

The per-sample distances must be computed with the current (already DP-trained) model: it is a post-processing
of earlier DP-SGD releases, so the selection composes adaptively with them.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from ..tla import mean_distances

log = logging.getLogger(__name__)

NOISES = ("laplace", "gumbel")
#: TLA's mining scores (F-scaled shrunk means) are not monotone under add/remove-one: each selection costs 2/b.
MINING_MONOTONE = False


def _clipped(distances, eligible) -> tuple[torch.Tensor, torch.Tensor]:
    """``([N, K] float64 distances clipped to [0, 1], NaN/inf mapped to the bounds; [N, K] bool)``, shapes checked."""
    d = torch.as_tensor(distances).detach().cpu().double()
    e = torch.as_tensor(eligible).detach().cpu().bool()
    if d.ndim != 2 or d.shape != e.shape:
        raise ValueError(f"distances {tuple(d.shape)} and eligible {tuple(e.shape)} must both be [N, K]")
    return torch.nan_to_num(d, nan=1.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0), e


def combination_scores(distances: torch.Tensor | np.ndarray, eligible: torch.Tensor | np.ndarray) -> np.ndarray:
    """Sum per-sample distances clipped to ``[0, 1]`` per candidate, counting only eligible samples.

    Args:
        distances: ``[N, K]`` per-sample distance (e.g. CE or ``1 - p_y``) for each of K candidates.
        eligible: ``[N, K]`` bool; True where the sample's present set contains the candidate combination.

    Returns:
        ``[K]`` float64 scores with sensitivity 1 and monotone under add/remove-one.
    """
    d, e = _clipped(distances, eligible)
    return (d * e).sum(dim=0).numpy()


def mean_combination_scores(distances: torch.Tensor | np.ndarray, eligible: torch.Tensor | np.ndarray,
                            min_samples: int) -> np.ndarray:
    """TLA's DP mining scores ``F · Σ_eligible clip(d, 0, 1) / max(n_δ, F)`` per candidate: sensitivity 1,
    not monotone (module docstring). The same numbers as ``F ·`` :func:`omnifuse_core.tla.mean_distances`.

    Args:
        distances: ``[N, K]`` per-sample distance for each of K candidates.
        eligible: ``[N, K]`` bool.
        min_samples: the public floor F >= 1.
    """
    if int(min_samples) != min_samples or min_samples < 1:
        raise ValueError(f"min_samples (tla-min-samples) must be a whole number >= 1, got {min_samples!r}")
    d, e = _clipped(distances, eligible)
    # the score's one implementation; candidate k is "modality" k of an eligibility matrix: the samples that contain it are e[:, k]
    scores, _ = mean_distances(lambda c: d[:, c[0]], e, [(k,) for k in range(e.shape[1])], int(min_samples))
    return (min_samples * scores).numpy()


def _noise(k: int, scale: float, noise: str, generator: np.random.Generator | torch.Generator | None) -> np.ndarray:
    if isinstance(generator, torch.Generator):
        u = torch.rand(k, generator=generator, dtype=torch.float64).numpy()
        u = np.clip(u, 1e-300, 1 - 1e-16)
        if noise == "laplace":  # inverse CDF of Laplace(0, scale)
            v = u - 0.5
            return -scale * np.sign(v) * np.log1p(-2 * np.abs(v))
        return -scale * np.log(-np.log(u))
    rng = generator if generator is not None else np.random.default_rng()
    return rng.laplace(0.0, scale, size=k) if noise == "laplace" else rng.gumbel(0.0, scale, size=k)


def report_noisy_max(scores: np.ndarray | torch.Tensor, scale: float,
                     generator: np.random.Generator | torch.Generator | None = None, *,
                     noise: str = "laplace") -> int:
    """Index of the largest score after adding independent noise of the given scale to each score.

    Args:
        scores: ``[K]`` per-candidate sums of per-sample distances clipped to ``[0, 1]`` (see
            :func:`combination_scores`); must be finite and >= 0.
        scale: noise scale b > 0 (Laplace scale or Gumbel scale). Each call costs ``1/b`` (monotone scores).
        generator: numpy ``Generator`` or torch ``Generator`` (seeded for reproducibility); None = fresh entropy.
        noise: ``"laplace"`` or ``"gumbel"``.

    Returns:
        The selected index.
    """
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"noisy-max scale must be a finite number > 0, got {scale!r} (config key tla-noise-scale)")
    s = torch.as_tensor(scores).detach().cpu().double().numpy() if isinstance(scores, torch.Tensor) \
        else np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("scores must be finite and >= 0 (sums of distances clipped to [0, 1]); "
                         "build them with combination_scores()")
    return int(np.argmax(s + _noise(s.size, float(scale), noise, generator)))


def noisy_max_epsilon(scale: float, sensitivity: float = 1.0, monotone: bool = True) -> float:
    """Pure epsilon of one report-noisy-max selection: ``sensitivity / scale`` (monotone) else twice that."""
    if not (scale > 0 and sensitivity > 0):
        raise ValueError(f"scale and sensitivity must be > 0, got scale={scale!r} sensitivity={sensitivity!r}")
    return (1.0 if monotone else 2.0) * float(sensitivity) / float(scale)


def noisy_max_event(scale: float, *, sensitivity: float = 1.0, count: int = 1, monotone: bool = True,
                    noise: str = "laplace", round: int | None = None, run_id: str | None = None) -> dict:
    """The ledger event for ``count`` report-noisy-max selections at one scale.

    Args:
        scale: noise scale b.
        sensitivity: per-patient change of each score (1 for clipped distances).
        count: number of selections (e.g. one per local epoch).
        monotone: True when all scores move in the same direction when a patient is added/removed.
        noise: ``"laplace"`` or ``"gumbel"`` (the event ``type``).
        round: federated round the selections belong to.
        run_id: run identifier.

    Returns:
        ``{"type", "scale", "sensitivity", "count", "monotone", "epsilon0", "round", "run_id", "time"}``.
    """
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if int(count) != count or count < 1:
        raise ValueError(f"noisy-max count must be a whole number >= 1, got {count!r}")
    return {"type": noise, "scale": float(scale), "sensitivity": float(sensitivity), "count": int(count),
            "monotone": bool(monotone), "epsilon0": noisy_max_epsilon(scale, sensitivity, monotone),
            "round": round, "run_id": run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def make_noisy_select(scale: float, generator: np.random.Generator | torch.Generator | None = None, *,
                      noise: str = "laplace", monotone: bool = MINING_MONOTONE):
    """A ``noisy_select(scores) -> (index, event)`` callable for the trainer's ``DPSettings.noisy_select``.

    Each call makes one selection and returns its ledger event (``count=1``; ``round``/``run_id`` are filled in
    by :meth:`SiteBudget.record_round`). Scores must have sensitivity 1 (TLA's F-scaled means, or sums) of
    per-sample distances clipped to ``[0, 1]``.

    Args:
        scale: noise scale b (config key ``tla-noise-scale``); each selection costs ``2/b`` (``1/b`` when
            ``monotone``).
        generator: seeded numpy or torch generator.
        noise: ``"laplace"`` or ``"gumbel"``.
        monotone: whether the scores are monotone (False for TLA's mean scores).
    """
    noisy_max_epsilon(scale)  # validate now, not at the first epoch

    def noisy_select(scores) -> tuple[int, dict]:
        return (report_noisy_max(scores, scale, generator, noise=noise),
                noisy_max_event(scale, noise=noise, monotone=monotone))

    return noisy_select


def pure_events_from(events: list[dict]) -> list[tuple[float, int]]:
    """``(epsilon0, count)`` pairs for accounting, recomputed from each event's scale/sensitivity/monotone."""
    out = []
    for i, ev in enumerate(events):
        if ev.get("type") not in NOISES:
            raise ValueError(f"privacy event {i} has type {ev.get('type')!r}; only {NOISES} are pure-DP events")
        out.append((noisy_max_epsilon(ev["scale"], ev.get("sensitivity", 1.0), ev.get("monotone", False)),
                    int(ev.get("count", 1))))
    return out
