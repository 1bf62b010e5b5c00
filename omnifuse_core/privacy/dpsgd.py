"""DP-SGD wiring with Opacus: an explicit noise multiplier, Poisson sampling at q = batch_size / N.

The headline accounting comes from the site's ledger (``accounting.py``), never from the engine's accountant.
Opacus' own ``make_private(poisson_sampling=True)`` samples at ``1 / ceil(N / B)`` rather than ``B / N``; to make
the recorded q exactly the q used, we build the Poisson :class:`~opacus.data_loader.DPDataLoader` ourselves and
hand it to ``make_private(poisson_sampling=False)``, then attach a fresh RDP accountant stepped at that q so the
trainer can read the steps actually taken with :func:`dp_history`.

Empty-batch policy: Poisson sampling can draw an empty batch. The loader then yields zero-length tensors with
the dataset's item shapes (built from ``dataset[0]``); the trainer must still take the step — either run
forward/backward on the empty batch and call ``optimizer.step()``, or skip the model and call :func:`dp_step` — which adds
the noise (skipping the step would change the mechanism). Such steps count.
"""

from __future__ import annotations

import logging
import math
import types
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from .adaptive_clip import AdaptiveClip

log = logging.getLogger(__name__)


def check_dp_compatible(model: nn.Module) -> list[str]:
    """Opacus validation errors for ``model`` as readable strings (empty list = compatible).

    Args:
        model: the module that DP-SGD would train.
    """
    from opacus.validators import ModuleValidator

    return [str(err) for err in ModuleValidator.validate(model, strict=False)]


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset, *, batch_size: int,
                 noise_multiplier: float, max_grad_norm: float, seed: int | None = None,
                 grad_sample_mode: str = "hooks",
                 adaptive: "AdaptiveClip | None" = None) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    """Wrap model, optimizer and data for DP-SGD with Opacus' ``PrivacyEngine.make_private``.

    Args:
        model: module to train; must pass :func:`check_dp_compatible` (use GroupNorm, DPLSTM/DPGRU, ...).
        optimizer: optimizer over ``model``'s parameters.
        dataset: a map-style dataset whose items are flat tuples of tensors (e.g. ``MultimodalDataset``).
        batch_size: expected batch size B; the Poisson sampling rate is ``q = B / len(dataset)``.
        noise_multiplier: sigma, calibrated once for the planned schedule (never per round).
        max_grad_norm: per-sample clipping norm C.
        seed: seeds the sampling and noise generators (reproducible runs); None = fresh entropy.
        grad_sample_mode: Opacus per-sample-gradient mode (``"hooks"`` or ``"functorch"``).
        adaptive: adaptive clipping (:mod:`omnifuse_core.privacy.adaptive_clip`): C starts at ``adaptive.initial``
            (``max_grad_norm`` is then ignored) and the gradient noise is σ_Δ·C; the accountant still records σ.

    Returns:
        ``(dp_model, dp_optimizer, dp_loader)``; ``dp_loader.sample_rate`` is q and ``len(dp_loader)`` the number
        of steps of one pass. Read the steps taken with :func:`dp_history`.
    """
    from opacus import PrivacyEngine
    from opacus.accountants import RDPAccountant
    from opacus.data_loader import DPDataLoader

    n = len(dataset)
    if n < 1:
        raise ValueError("cannot train with DP on an empty dataset")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r} (config key batch-size)")
    if batch_size > n:
        log.info("batch_size %d exceeds the %d training samples: Poisson sampling rate capped at q = 1", batch_size, n)
        batch_size = n
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier!r}; calibrate it with "
                         "calibrate_noise_multiplier() or set config key noise-multiplier")
    if adaptive is not None:
        max_grad_norm = adaptive.initial
    elif isinstance(max_grad_norm, str):
        raise ValueError(f"max_grad_norm = {max_grad_norm!r}: with config key max-grad-norm: adaptive pass "
                         "adaptive=AdaptiveClip(...) (DPSettings.for_config builds it)")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm!r} (config key max-grad-norm)")
    _install_direct_grad_sample_store()
    problems = check_dp_compatible(model)
    if problems:
        raise ValueError("model is not DP-compatible (build it with dp-compatible: true):\n  " + "\n  ".join(problems))
    sample_rate = batch_size / n
    gen = noise_gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(int(seed))
        noise_gen = torch.Generator(device=_param_device(model)).manual_seed(int(seed) + 1)
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=gen)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")  # its accountant is not used for any reported number
    dp_model, dp_optimizer, dp_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm), poisson_sampling=False, noise_generator=noise_gen,
        grad_sample_mode=grad_sample_mode)
    dp_model.forbid_grad_accumulation()  # one optimizer step per Poisson batch (what the accountant assumes)
    dp_optimizer.expected_batch_size = int(batch_size)  # gradient scale 1/B (Opacus would use N / ceil(N / B))
    dp_optimizer.scale_grad = types.MethodType(_scale_grad, dp_optimizer)
    dp_optimizer.clip_and_accumulate = types.MethodType(_clip_and_accumulate, dp_optimizer)
    counter = RDPAccountant()
    dp_optimizer.attach_step_hook(counter.get_optimizer_hook_fn(sample_rate=sample_rate))
    dp_optimizer.omnifuse_accountant = counter
    if adaptive is not None:
        from .adaptive_clip import attach

        state = attach(dp_optimizer, adaptive, noise_multiplier=float(noise_multiplier), expected_batch=batch_size)
        log.info("DP-SGD adaptive clipping: quantile %.3g, C0 %.3g, lr %.3g, sigma_b %.4g, gradient sigma %.4g",
                 adaptive.quantile, adaptive.initial, adaptive.learning_rate, adaptive.count_noise,
                 state.gradient_multiplier)
    log.info("DP-SGD: N=%d B=%d q=%.5f sigma=%.4f C=%.3g, %d steps per pass", n, batch_size, sample_rate,
             noise_multiplier, max_grad_norm, len(dp_loader))
    return dp_model, dp_optimizer, dp_loader


def _install_direct_grad_sample_store() -> None:
    """Let Opacus keep a layer's first per-sample gradient of a backward pass as computed, without a copy.

    Opacus' ``create_or_accumulate_grad_sample`` allocates ``zeros([max_batch_len, ...])`` and copies the freshly
    computed per-sample gradient into it, every layer, every step (≈ 10 % of the DP profile's DP-SGD step, B6b).
    When the gradient already spans the whole batch, the zeros-plus-copy equals the gradient itself, so it is stored
    as is; anything else (a shorter batch, a second call of the same layer) takes Opacus' own path. Bit-identical
    (tested); installed once per process, in Opacus' module, where its backward hook looks the function up.
    """
    from opacus.grad_sample import grad_sample_module as gsm

    original = gsm.create_or_accumulate_grad_sample
    if getattr(original, "omnifuse_direct", False):
        return

    def store(*, param: torch.Tensor, grad_sample: torch.Tensor, max_batch_len: int) -> None:
        if (param.requires_grad and not hasattr(param, "_current_grad_sample")
                and grad_sample.shape[0] == max_batch_len):
            param._current_grad_sample = grad_sample
            return
        original(param=param, grad_sample=grad_sample, max_batch_len=max_batch_len)

    store.omnifuse_direct = True
    store.opacus_original = original
    gsm.create_or_accumulate_grad_sample = store


def _scale_grad(self) -> None:
    """Opacus' ``DPOptimizer.scale_grad`` with ``accumulated_iterations`` read once per step, not once per parameter.

    Opacus recomputes that property, a loop over every parameter, inside its loop over the parameters: O(P²) per
    step, about 27 ms of a 125 ms DP step for OmniFuse's 173 tensors (B6, measured with cProfile). Same division:
    ``p.grad /= expected_batch_size * accumulated_iterations`` (1 here: gradient accumulation is forbidden).
    """
    if self.loss_reduction == "mean":
        scale = self.expected_batch_size * self.accumulated_iterations
        for p in self.params:
            p.grad /= scale


def _clip_and_accumulate(self) -> None:
    """Opacus' ``DPOptimizer.clip_and_accumulate`` with each parameter's clipped sum as one matrix-vector product.

    The per-sample norms and clip factors are computed exactly as Opacus computes them. The sum over samples
    ``Σ_i c_i·g_i`` is ``c @ G`` (one BLAS call) instead of ``einsum("i,i...")``, and each parameter's flattened
    per-sample gradient is read once instead of twice: equal to Opacus' result up to float rounding (tested), and
    about 6 % of a DP-SGD step cheaper for the DP profile's 44 parameter tensors (BENCHMARKS B6b).
    """
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    samples = self.grad_samples
    if len(samples[0]) == 0:
        factor = torch.zeros((0,), device=samples[0].device)
    else:
        norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in samples], dim=1).norm(2, dim=1)
        factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    adaptive = getattr(self, "omnifuse_adaptive", None)
    if adaptive is not None:  # adaptive clipping: the step's unclipped count (released only with noise)
        adaptive.observe(int((factor >= 1.0).sum()), len(factor))
    for p, g in zip(self.params, samples):
        _check_processed_flag(p.grad_sample)
        g = g.to(p.dtype)
        grad = (factor.to(device=g.device, dtype=p.dtype) @ g.reshape(len(g), p.numel())).view(p.shape)
        p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
        _mark_as_processed(p.grad_sample)


def planned_steps_per_epoch(n: int, batch_size: int) -> tuple[float, int]:
    """``(q, steps)`` of one Poisson pass exactly as :func:`make_private` and Opacus take it.

    ``q = min(B, N) / N`` and Opacus' sampler makes ``int(1 / q)`` steps per pass (not ``ceil``).

    Args:
        n: number of training records N.
        batch_size: expected batch size B (config key batch-size).
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n!r} batch_size={batch_size!r}")
    q = min(int(batch_size), int(n)) / int(n)
    return q, int(1 / q)


def dp_history(dp_optimizer: torch.optim.Optimizer) -> list[tuple[float, float, int]]:
    """``[(noise_multiplier, sample_rate, steps)]`` of the steps this optimizer actually took (noise added)."""
    acc = getattr(dp_optimizer, "omnifuse_accountant", None)
    if acc is None:
        raise ValueError("optimizer was not built by omnifuse_core.privacy.dpsgd.make_private")
    return [(float(s), float(q), int(k)) for s, q, k in acc.history]


def steps_taken(dp_optimizer: torch.optim.Optimizer) -> int:
    """Number of noisy DP-SGD steps taken so far (empty batches included)."""
    return sum(k for _, _, k in dp_history(dp_optimizer))


def dp_step(dp_optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` that also works when the backward pass did not reach every parameter.

    Opacus raises "Per sample gradient is not initialized" for a parameter without a per-sample gradient: one the
    forward pass did not use on this batch (e.g. a block whose output no active loss term needs), or every
    parameter when an empty Poisson batch skipped the model. Such a parameter's per-sample gradient is exactly
    zero, so this sets it to zeros ``[B, *shape]`` (B = the batch size seen by the other parameters, 0 for an
    empty batch) and steps: clipping is unchanged and the Gaussian noise is still added to every parameter.

    Args:
        dp_optimizer: the optimizer returned by :func:`make_private`.
    """
    sizes = set()
    for p in dp_optimizer.params:
        gs = getattr(p, "grad_sample", None)
        if isinstance(gs, torch.Tensor):
            sizes.add(int(gs.shape[0]))
        elif isinstance(gs, list):
            sizes.add(sum(int(g.shape[0]) for g in gs))
    if len(sizes) > 1:
        raise ValueError(f"per-sample gradients disagree on the batch size {sorted(sizes)}; one forward/backward "
                         "per Poisson batch is required")
    n = sizes.pop() if sizes else 0
    for p in dp_optimizer.params:
        if getattr(p, "grad_sample", None) is None:
            p.grad_sample = torch.zeros((n, *p.shape), dtype=p.dtype, device=p.device)
    dp_optimizer.step()


def is_empty_batch(collated: tuple | list) -> bool:
    """True when a collated Poisson batch holds zero samples (the step must still be taken)."""
    return len(collated) > 0 and int(collated[0].shape[0]) == 0


def _param_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
