"""Issue 13: the two views (hidden view for imputation only), TLA mining schedule and eval-mode mining, and the
concat joint head when no imputer is trained."""
import pytest
import torch

from omnifuse_core.config import Config
from omnifuse_core.models import build_model
from omnifuse_core.toy import TOY_SPECS, make_toy_dataset, toy_task
from omnifuse_core.trainer import iterate_batches, train_local

TINY = dict(embed_dim=8, encoder_hidden=8, head_hidden=8, cra_hidden="16,8,4", cra_blocks=2, batch_size=16)


def _heads_input(model, batch):
    """The completed embeddings the per-modality heads (L_enc, ω) receive in one training step."""
    seen = []
    handle = model.heads.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    try:
        model.training_loss(batch)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("hide_for_prediction", [False, True])
def test_prediction_losses_see_real_availability_unless_switched(hide_for_prediction):
    ds = make_toy_dataset(64, missing=[0, 0.2, 0.2, 0.2], seed=3)
    torch.manual_seed(0)
    cfg = Config(**TINY, hide_prob=1.0, hide_for_prediction=hide_for_prediction)
    model = build_model(TOY_SPECS, toy_task(), cfg).eval()  # eval: no dropout, so embeddings compare exactly
    batch = ds.full_batch()
    present = batch["present"]
    completed = _heads_input(model, batch)
    with torch.no_grad():
        v_true = model.encode(batch["inputs"], present)
    same = torch.isclose(completed, v_true, atol=1e-6).all(dim=2)  # [B, M]
    if hide_for_prediction:
        assert not same[present].all()  # some present slots were hidden and imputed
    else:
        assert same[present].all()  # every really-present slot is the patient's own embedding


def test_hidden_view_still_feeds_the_forward_imputation_loss():
    ds = make_toy_dataset(32, missing=[0, 0.2, 0.2, 0.2], seed=3)
    model = build_model(TOY_SPECS, toy_task(), Config(**TINY, hide_prob=1.0))
    _, parts = model.training_loss(ds.full_batch())
    assert parts["loss_forward"] > 0 and parts["loss_backward"] > 0


def test_no_tla_loss_before_the_first_mining_after_a_trained_epoch():
    ds = make_toy_dataset(32, seed=5)
    cfg = Config(**TINY, local_epochs=1)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    first = train_local(model, ds, cfg)
    assert first.trace["lazy"] == [None] and "loss_tla" not in first.metrics
    later = train_local(model, ds, cfg, trained=True, seed_offset=2)
    assert later.trace["lazy"][0] is not None and "loss_tla" in later.metrics


def test_mining_runs_in_eval_mode_and_restores_training_mode():
    """The genomics encoder has AlphaDropout: mining in training mode would score differently on each call."""
    ds = make_toy_dataset(40, seed=6)
    cfg = Config(**TINY)
    torch.manual_seed(0)
    model = build_model(TOY_SPECS, toy_task(), cfg).train()
    traces = [model.mine_lazy(iterate_batches(ds, 16, torch.device("cpu")), torch.device("cpu")) for _ in range(2)]
    assert model.training
    assert traces[0]["scores"] == traces[1]["scores"]
    assert sum(traces[0]["counts"].values()) > 0


def test_without_imputation_the_joint_head_reads_the_concatenated_embeddings():
    cfg = Config(**TINY, use_forward=False, use_backward=False, use_tla=False)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    assert model.forward_cra is None and model.backward_cra is None
    extra = model.joint_head.interaction.out_dim if model.joint_head.interaction is not None else 0
    assert model.joint_head.mlp[0].in_features == len(TOY_SPECS) * TINY["embed_dim"] + extra
    ds = make_toy_dataset(16, seed=7)
    loss, parts = model.training_loss(ds.full_batch())
    assert torch.isfinite(loss) and "loss_forward" not in parts


def test_sum_reduction_scales_the_imputation_losses():
    ds = make_toy_dataset(32, missing=[0, 0.2, 0.2, 0.2], seed=3)
    out = {}
    for red in ("mean", "sum"):
        torch.manual_seed(0)
        model = build_model(TOY_SPECS, toy_task(), Config(**TINY, imputation_reduction=red)).eval()
        torch.manual_seed(1)
        out[red] = model.training_loss(ds.full_batch())[1]
    d = len(TOY_SPECS) * TINY["embed_dim"]
    assert out["sum"]["loss_backward"] == pytest.approx(out["mean"]["loss_backward"] * d, rel=1e-4)
    assert out["sum"]["loss_forward"] > out["mean"]["loss_forward"]
