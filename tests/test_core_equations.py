"""Unit tests for each OmniFuse equation (DESIGN §4) on tiny tensors."""
import itertools
import math

import pytest
import torch

from omnifuse_core.fusion import dwfuse_weights
from omnifuse_core.imputer import CascadeResidualAutoencoder, masked_slot_mse
from omnifuse_core.tla import (activation_loss, all_combinations, contains, mean_distances, select_lazy,
                               selections_in_call)


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


def test_forward_loss_sum_reduction_is_the_squared_norm_over_slots_with_ground_truth():
    pred = torch.zeros(2, 3, 4)
    target = torch.ones(2, 3, 4)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    assert masked_slot_mse(pred, target, mask, reduction="sum").tolist() == [4.0, 12.0]
    with pytest.raises(ValueError, match="imputation-reduction"):
        masked_slot_mse(pred, target, mask, reduction="max")


def _few_hard_many_easy():
    """Modality 0 for all 200 patients (low loss 0.3 each); the pair (1, 2) for 20 of them (high loss 1.2 each)."""
    n = 200
    present = torch.zeros(n, 3, dtype=torch.bool)
    present[:, 0] = True
    present[:20, 1:] = True
    combos = all_combinations(3)
    dist = {c: torch.full((n,), 1.2 if c == (1, 2) else 0.3) for c in combos}
    return present, combos, dist


def test_tla_mean_mining_picks_few_high_loss_samples_over_many_low_loss_samples():
    present, combos, dist = _few_hard_many_easy()
    scores, counts = mean_distances(lambda c: dist[c], present, combos, min_samples=10)
    assert combos[select_lazy(scores)] == (1, 2)
    assert counts[combos.index((0,))].item() == 200 and counts[combos.index((1, 2))].item() == 20
    assert scores[combos.index((0,))].item() == pytest.approx(0.3)
    # the summed score of the design note's first version ranks by prevalence and picks the dominant modality
    summed = torch.tensor([dist[c][contains(present, c)].sum().item() for c in combos])
    assert combos[select_lazy(summed)] == (0,)


def test_tla_mean_shrinks_rare_combinations_below_the_floor():
    present, combos, dist = _few_hard_many_easy()
    scores, _ = mean_distances(lambda c: dist[c], present, combos, min_samples=100)
    assert scores[combos.index((1, 2))].item() == pytest.approx(1.2 * 20 / 100)  # sum / max(n, F)
    assert combos[select_lazy(scores)] == (0,)
    with pytest.raises(ValueError):
        mean_distances(lambda c: dist[c], present, combos, min_samples=0)


def test_tla_mining_count_skips_only_the_untrained_first_epoch():
    assert [selections_in_call(e, False) for e in (1, 2, 3)] == [0, 1, 2]
    assert [selections_in_call(e, True) for e in (1, 2, 3)] == [1, 2, 3]


def test_tla_masks_exactly():
    present = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    mask = contains(present, (1, 2))
    assert mask.tolist() == [False, False, True, True]
    per_sample = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert activation_loss(per_sample, present, (1, 2)).tolist() == [0.0, 0.0, 3.0, 4.0]
    none = torch.zeros(4, 3, dtype=torch.bool)
    assert activation_loss(per_sample, none, (0,)).sum().item() == 0.0
