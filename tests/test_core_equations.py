"""Unit tests for each OmniFuse equation (DESIGN §4) on tiny tensors."""
import itertools
import math

import pytest
import torch

from omnifuse_core.fusion import dwfuse_weights
from omnifuse_core.imputer import CascadeResidualAutoencoder, masked_slot_mse
from omnifuse_core.tla import activation_loss, all_combinations, contains, select_lazy, summed_distances


@pytest.mark.parametrize("m", [2, 3, 4])
def test_dwfuse_weights_match_formula(m):
    torch.manual_seed(m)
    p = torch.rand(5, m) * 0.98 + 0.01
    beta = 0.5
    omega = dwfuse_weights(p, beta)
    for b, j in itertools.product(range(5), range(m)):
        prod = math.prod(1 - float(p[b, n]) for n in range(m) if n != j)
        assert omega[b, j].item() == pytest.approx(prod ** (beta / (m - 1)), rel=1e-5)
    assert ((omega > 0) & (omega <= 1)).all()


def test_dwfuse_weights_stop_gradient_and_clamp():
    p = torch.tensor([[1.0, 0.2, 0.3]], requires_grad=True)
    omega = dwfuse_weights(p, 0.5)
    assert not omega.requires_grad
    assert torch.isfinite(omega).all() and (omega > 0).all()
    # the modality whose partners include a perfect predictor gets a tiny weight, the perfect one does not
    assert omega[0, 1] < 0.05 and omega[0, 0] > 0.5


def test_dwfuse_weights_single_modality_is_one():
    assert torch.equal(dwfuse_weights(torch.rand(4, 1), 0.5), torch.ones(4, 1))


def test_cra_cascade_feeds_running_sum_and_adds_residuals():
    torch.manual_seed(0)
    cra = CascadeResidualAutoencoder(6, blocks=3, hidden=(8, 4))
    seen_inputs, deltas = [], []

    def record(module, args, out):
        seen_inputs.append(args[0].detach().clone())
        deltas.append(out[0].detach().clone())

    for block in cra.blocks:
        block.register_forward_hook(record)
    v = torch.randn(2, 6)
    out, latents = cra(v)
    running = torch.zeros_like(v)
    for k in range(3):
        assert torch.allclose(seen_inputs[k], v + running, atol=1e-6)
        running = running + deltas[k]
    assert torch.allclose(out, v + running, atol=1e-6)
    assert latents.shape == (2, 3 * 4)


def test_forward_loss_counts_only_slots_with_ground_truth():
    pred = torch.zeros(2, 3, 4)
    target = torch.ones(2, 3, 4)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    per_sample = masked_slot_mse(pred, target, mask)
    assert per_sample.tolist() == pytest.approx([1.0, 1.0])
    target2 = target.clone()
    target2[0, 1:] = 100.0  # slots without ground truth may hold anything
    assert torch.equal(masked_slot_mse(pred, target2, mask), per_sample)
    assert masked_slot_mse(pred, target, torch.zeros(2, 3, dtype=torch.bool)).tolist() == [0.0, 0.0]


def test_tla_picks_largest_summed_distance_and_masks_exactly():
    present = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    combos = all_combinations(3)
    assert len(combos) == 7
    per_combo_dist = {c: torch.full((4,), float(len(c) == 2 and c == (1, 2)) * 5.0 + 0.1) for c in combos}
    scores = summed_distances(lambda c: per_combo_dist[c], present, combos)
    # (1, 2) is contained by samples 2 and 3 -> 2 * 5.1; singletons get at most 3 * 0.1
    assert combos[select_lazy(scores)] == (1, 2)
    assert scores[combos.index((0, 1, 2))].item() == pytest.approx(0.1)
    mask = contains(present, (1, 2))
    assert mask.tolist() == [False, False, True, True]
    per_sample = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert activation_loss(per_sample, present, (1, 2)).tolist() == [0.0, 0.0, 3.0, 4.0]
    none = torch.zeros(4, 3, dtype=torch.bool)
    assert activation_loss(per_sample, none, (0,)).sum().item() == 0.0
