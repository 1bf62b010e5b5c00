"""DP-SGD wiring: explicit sigma, Poisson q = B/N, empty Poisson batches of a MultimodalDataset still step."""

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import pytest
from omnifuse_core.batch import ModalitySpec, MultimodalDataset, to_batch
from omnifuse_core.privacy.dpsgd import (check_dp_compatible, dp_history, dp_step, is_empty_batch,
                                         make_private, steps_taken)

SPECS = [ModalitySpec.from_dict({"name": "ehr", "kind": "tabular", "shape": [5]}),
         ModalitySpec.from_dict({"name": "image", "kind": "image", "shape": [1, 4, 4]})]


def _dataset(n=6):
    g = torch.Generator().manual_seed(0)
    present = torch.ones(n, 2, dtype=torch.bool)
    present[0, 1] = False
    return MultimodalDataset(SPECS, {"ehr": torch.randn(n, 5, generator=g), "image": torch.randn(n, 1, 4, 4,
                                                                                                generator=g)},
                             present, torch.randint(0, 2, (n,), generator=g))


class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.ehr = nn.Linear(5, 2)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.norm = nn.GroupNorm(1, 2)
        self.head = nn.Linear(2 * 16, 2)

    def forward(self, ehr, image):
        return self.ehr(ehr) + self.head(self.norm(self.conv(image)).flatten(1))


def _first_sizes(seed, n=6, q=1 / 6):
    from opacus.data_loader import DPDataLoader  # the same sampler stream make_private builds for this seed

    dl = DPDataLoader(TensorDataset(torch.zeros(n, 1)), sample_rate=q, generator=torch.Generator().manual_seed(seed))
    return [len(b[0]) for b in dl]


def _seed(pred):
    return next(s for s in range(200) if pred(_first_sizes(s)))


def test_check_dp_compatible_names_batchnorm():
    bad = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    problems = check_dp_compatible(bad)
    assert problems and any("BatchNorm" in p for p in problems)
    assert check_dp_compatible(TwoBranch()) == []
    with pytest.raises(ValueError, match="not DP-compatible"):
        make_private(bad, torch.optim.SGD(bad.parameters(), lr=0.1), _dataset(), batch_size=2, noise_multiplier=1.0,
                     max_grad_norm=1.0)


def test_sample_rate_is_batch_over_n_and_bad_args_are_named():
    m = TwoBranch()
    _, opt, dl = make_private(m, torch.optim.SGD(m.parameters(), lr=0.1), _dataset(6), batch_size=4,
                              noise_multiplier=1.0, max_grad_norm=1.0, seed=0)
    assert dl.sample_rate == pytest.approx(4 / 6)  # Opacus' own Poisson path would use 1 / ceil(6 / 4) = 0.5
    assert opt.expected_batch_size == 4 and opt.noise_multiplier == 1.0
    with pytest.raises(ValueError, match="noise_multiplier"):
        make_private(m, torch.optim.SGD(m.parameters(), lr=0.1), _dataset(), batch_size=2, noise_multiplier=0.0,
                     max_grad_norm=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        make_private(m, torch.optim.SGD(m.parameters(), lr=0.1), _dataset(), batch_size=0, noise_multiplier=1.0,
                     max_grad_norm=1.0)
    m2 = TwoBranch()
    _, opt2, dl2 = make_private(m2, torch.optim.SGD(m2.parameters(), lr=0.1), _dataset(6), batch_size=50,
                                noise_multiplier=1.0, max_grad_norm=1.0, seed=0)
    assert dl2.sample_rate == 1.0 and opt2.expected_batch_size == 6


@pytest.mark.parametrize("where, run_model", [("first", True), ("later", True), ("later", False)])
def test_empty_poisson_batch_still_takes_a_noisy_step(where, run_model):
    pred = (lambda s: s[0] == 0) if where == "first" else (lambda s: s[0] > 0 and 0 in s)
    seed = _seed(pred)
    sizes = _first_sizes(seed)
    torch.manual_seed(0)
    model = TwoBranch()
    dp_model, opt, loader = make_private(model, torch.optim.SGD(model.parameters(), lr=0.5), _dataset(),
                                         batch_size=1, noise_multiplier=1.0, max_grad_norm=1.0, seed=seed)
    seen_empty = 0
    for collated, expected in zip(loader, sizes):
        assert int(collated[0].shape[0]) == expected
        batch = to_batch(SPECS, collated)
        assert tuple(batch["inputs"]["image"].shape[1:]) == (1, 4, 4) and batch["present"].dtype == torch.bool
        assert batch["labels"].dtype == torch.long
        before = [p.detach().clone() for p in model.parameters()]
        if is_empty_batch(collated) and not run_model:
            dp_step(opt)  # the trainer skips the model on an empty batch
        else:
            out = dp_model(batch["inputs"]["ehr"], batch["inputs"]["image"])
            F.cross_entropy(out, batch["labels"]).backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        if is_empty_batch(collated):
            seen_empty += 1
            # noise only: every parameter moved although no patient was in the batch
            assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
            assert all(torch.isfinite(p).all() for p in model.parameters())
    assert seen_empty == sizes.count(0) >= 1
    assert steps_taken(opt) == len(sizes) == len(loader)
    assert dp_history(opt) == [(1.0, pytest.approx(1 / 6), len(sizes))]


def test_skipping_backward_on_empty_batch_then_step_fails_in_opacus():
    # documents why dp_step exists: optimizer.step() without a backward pass raises
    seed = _seed(lambda s: s[0] == 0)
    model = TwoBranch()
    _, opt, loader = make_private(model, torch.optim.SGD(model.parameters(), lr=0.5), _dataset(), batch_size=1,
                                  noise_multiplier=1.0, max_grad_norm=1.0, seed=seed)
    next(iter(loader))
    with pytest.raises(ValueError, match="Per sample gradient"):
        opt.step()


def test_dp_step_handles_parameters_the_forward_did_not_reach():
    torch.manual_seed(0)
    model = TwoBranch()
    dp_model, opt, loader = make_private(model, torch.optim.SGD(model.parameters(), lr=0.5), _dataset(),
                                         batch_size=3, noise_multiplier=1.0, max_grad_norm=1.0,
                                         seed=_seed(lambda s: s[0] > 0))
    batch = to_batch(SPECS, next(iter(loader)))
    before = model.head.weight.detach().clone()
    F.cross_entropy(dp_model._module.ehr(batch["inputs"]["ehr"]), batch["labels"]).backward()  # image branch unused
    with pytest.raises(ValueError, match="Per sample gradient"):
        opt.step()
    dp_step(opt)
    assert not torch.equal(before, model.head.weight)  # unused parameter still gets the noise
    assert steps_taken(opt) == 1


def test_seed_makes_dp_training_reproducible():
    def run():
        torch.manual_seed(0)
        m = TwoBranch()
        dm, opt, dl = make_private(m, torch.optim.SGD(m.parameters(), lr=0.5), _dataset(), batch_size=2,
                                   noise_multiplier=1.0, max_grad_norm=1.0, seed=11)
        for collated in dl:
            b = to_batch(SPECS, collated)
            F.cross_entropy(dm(b["inputs"]["ehr"], b["inputs"]["image"]), b["labels"]).backward()
            opt.step()
            opt.zero_grad()
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    assert torch.equal(run(), run())


def test_scale_grad_override_matches_opacus():
    """make_private replaces Opacus' O(P²) scale_grad with one that reads accumulated_iterations once; the DP
    training it produces is bit-identical to Opacus' own method."""
    from opacus.optimizers import DPOptimizer

    def run(opacus_own: bool):
        torch.manual_seed(0)
        m = TwoBranch()
        dm, opt, dl = make_private(m, torch.optim.SGD(m.parameters(), lr=0.5), _dataset(), batch_size=2,
                                   noise_multiplier=1.0, max_grad_norm=1.0, seed=11)
        assert opt.scale_grad.__func__ is not DPOptimizer.scale_grad  # the override is installed
        if opacus_own:
            del opt.scale_grad  # back to the class method
            assert opt.scale_grad.__func__ is DPOptimizer.scale_grad
        for collated in dl:
            b = to_batch(SPECS, collated)
            F.cross_entropy(dm(b["inputs"]["ehr"], b["inputs"]["image"]), b["labels"]).backward()
            dp_step(opt)
            opt.zero_grad()
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    assert torch.equal(run(False), run(True))


@pytest.mark.parametrize("batch_size", [2, 5])
def test_clip_and_accumulate_override_matches_opacus(batch_size):
    """make_private's clip_and_accumulate (one matrix-vector product per parameter) trains to the same weights as
    Opacus' own method, up to float rounding, including empty Poisson batches."""
    from opacus.optimizers import DPOptimizer

    def run(opacus_own: bool):
        torch.manual_seed(0)
        m = TwoBranch()
        dm, opt, dl = make_private(m, torch.optim.SGD(m.parameters(), lr=0.5), _dataset(), batch_size=batch_size,
                                   noise_multiplier=1.0, max_grad_norm=0.5, seed=11)
        assert opt.clip_and_accumulate.__func__ is not DPOptimizer.clip_and_accumulate
        if opacus_own:
            del opt.clip_and_accumulate
            assert opt.clip_and_accumulate.__func__ is DPOptimizer.clip_and_accumulate
        for _ in range(3):
            for collated in dl:
                b = to_batch(SPECS, collated)
                if b["labels"].shape[0]:
                    F.cross_entropy(dm(b["inputs"]["ehr"], b["inputs"]["image"]), b["labels"]).backward()
                dp_step(opt)
                opt.zero_grad()
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    ours, theirs = run(False), run(True)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5)


def test_direct_grad_sample_store_is_bit_identical_to_opacus():
    """make_private lets Opacus keep a whole-batch per-sample gradient without its zeros-plus-copy; DP training
    with it is bit-identical to Opacus' own store (which stays in use for shorter or repeated gradients)."""
    from opacus.grad_sample import grad_sample_module as gsm

    def run():
        torch.manual_seed(0)
        m = TwoBranch()
        dm, opt, dl = make_private(m, torch.optim.SGD(m.parameters(), lr=0.5), _dataset(), batch_size=3,
                                   noise_multiplier=1.0, max_grad_norm=0.5, seed=5)
        for _ in range(3):
            for collated in dl:
                b = to_batch(SPECS, collated)
                if b["labels"].shape[0]:
                    F.cross_entropy(dm(b["inputs"]["ehr"], b["inputs"]["image"]), b["labels"]).backward()
                dp_step(opt)
                opt.zero_grad()
        dm._close()
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    ours = run()
    store = gsm.create_or_accumulate_grad_sample
    assert getattr(store, "omnifuse_direct", False)
    gsm.create_or_accumulate_grad_sample = store.opacus_original
    try:
        import omnifuse_core.privacy.dpsgd as dpsgd

        original_install = dpsgd._install_direct_grad_sample_store
        dpsgd._install_direct_grad_sample_store = lambda: None
        try:
            theirs = run()
        finally:
            dpsgd._install_direct_grad_sample_store = original_install
    finally:
        gsm.create_or_accumulate_grad_sample = store
    assert torch.equal(ours, theirs)
