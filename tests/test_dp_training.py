"""DP-SGD on the full OmniFuse model: Opacus per-sample gradients are exact, and training steps count."""
import warnings
warnings.filterwarnings("ignore", message="Full backward hook is firing")
import torch
from opacus import GradSampleModule

from omnifuse_core.config import Config
from omnifuse_core.models import build_model
from omnifuse_core.privacy.noisy_max import make_noisy_select
from omnifuse_core.toy import TOY_SPECS, make_toy_dataset, toy_task
from omnifuse_core.trainer import DPSettings, train_local

TINY = dict(embed_dim=8, encoder_hidden=8, head_hidden=8, cra_hidden="16,8,4", cra_blocks=2, dp=True)


def test_per_sample_gradients_match_single_sample_gradients():
    """With the TLA view stacked into the same imputer call, Opacus' hooks give each patient's exact gradient."""
    torch.manual_seed(0)
    ds = make_toy_dataset(5, missing=[0, 0.5, 0.5, 0.5], seed=3)
    cfg = Config(**TINY, hide_prob=0.0)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    model.lazy_combo = (0,)
    for module in model.modules():  # dropout draws differ between the batched and single-sample passes
        if isinstance(module, (torch.nn.Dropout, torch.nn.AlphaDropout)):
            module.p = 0.0
    gsm = GradSampleModule(model)
    batch = ds.full_batch()
    loss, _ = model.training_loss(batch)
    loss.backward()
    per_sample = {n: p.grad_sample.clone() for n, p in model.named_parameters() if p.grad_sample is not None}
    assert per_sample, "no per-sample gradients were captured"
    for i in range(len(ds)):
        gsm.zero_grad()
        for p in model.parameters():
            p.grad_sample = None
        one = ds.subset([i]).full_batch()
        model.training_loss(one)[0].backward()
        for name, p in model.named_parameters():
            if name in per_sample:
                expected = p.grad if p.grad is not None else torch.zeros_like(p)
                assert torch.allclose(per_sample[name][i], expected, rtol=1e-3, atol=1e-5), (name, i)


def test_dp_training_counts_every_poisson_step_and_records_noisy_max():
    ds = make_toy_dataset(40, missing=[0, 0.3, 0.3, 0.5], seed=1)
    cfg = Config(**TINY, batch_size=4, local_epochs=2)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    select = make_noisy_select(20.0, torch.Generator().manual_seed(0))
    result = train_local(model, ds, cfg, dp=DPSettings(1.0, 1.0, select))
    assert result.sample_rate == 0.1
    assert result.steps == 2 * 10  # one Poisson step per expected batch per epoch, empty ones included
    # a fresh model: no selection before the first trained epoch, then one per epoch
    assert len(result.trace["dp_event"]) == 1 and result.trace["dp_event"][0]["type"] == "laplace"
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) == len(before)  # noise reaches every parameter
