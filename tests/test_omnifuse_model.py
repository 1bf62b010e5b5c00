"""OmniFuse model behaviour: label-free inference, missing-input invariance, DP compatibility, determinism."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from opacus.validators import ModuleValidator

from omnifuse_core.config import Config
from omnifuse_core.encoders import build_encoder
from omnifuse_core.models import build_model
from omnifuse_core.toy import TOY_SPECS, make_toy_dataset, toy_task
from omnifuse_core.trainer import evaluate, predict, train_local

TINY = dict(embed_dim=8, encoder_hidden=8, head_hidden=8, cra_hidden="16,8,4", cra_blocks=2, batch_size=16)


def tiny_cfg(**kw):
    return Config(**{**TINY, **kw})


@pytest.fixture(scope="module")
def trained():
    ds = make_toy_dataset(48, missing=[0, 0.4, 0.4, 0.5], seed=1)
    cfg = tiny_cfg(local_epochs=2)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    result = train_local(model, ds, cfg)
    return model.eval(), ds, cfg, result


def test_training_reports_counts_trace_and_all_loss_terms(trained):
    model, ds, _, result = trained
    assert result.counts == ds.modality_counts()
    assert result.counts["ehr"] == 48 and result.counts["n"] == 48
    assert {"loss_forward", "loss_backward", "loss_enc", "loss_rp"} <= set(result.metrics)
    # no mining before the first trained epoch, then one per epoch
    assert result.trace["lazy"][0] is None and result.trace["lazy"][1] is not None and model.lazy_combo is not None
    assert result.steps == 6


def test_predictions_do_not_depend_on_labels(trained):
    model, ds, cfg, _ = trained
    before = predict(model, ds, cfg)
    shuffled = ds.subset(range(len(ds)))
    shuffled.labels = shuffled.labels[torch.randperm(len(ds), generator=torch.Generator().manual_seed(3))]
    after = predict(model, shuffled, cfg)
    for key in before:
        assert (before[key] == after[key]).all(), key


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(-100, 100, allow_nan=False), fusion=st.sampled_from(["omnifuse"]))
def test_missing_modality_raw_input_never_changes_output(trained, seed, scale, fusion):
    model, ds, cfg, _ = trained
    batch = ds.full_batch()
    present = batch["present"]
    g = torch.Generator().manual_seed(seed)
    noisy = {name: x.clone() for name, x in batch["inputs"].items()}
    for m, name in enumerate(model.names):
        missing = ~present[:, m]
        noise = torch.randn(noisy[name].shape, generator=g) * scale
        noisy[name][missing] = noise[missing]
    with torch.no_grad():
        base = model.predict_all(batch["inputs"], present)
        changed = model.predict_all(noisy, present)
    for key in base:
        assert torch.allclose(base[key], changed[key], atol=1e-6), key


@pytest.mark.parametrize("spec", TOY_SPECS, ids=lambda s: s.name)
def test_every_encoder_is_opacus_compatible_in_dp_form(spec):
    enc = build_encoder(spec, tiny_cfg(dp_compatible=True))
    assert ModuleValidator.validate(enc, strict=False) == []


def test_resnet_encoders_are_opacus_compatible():
    from omnifuse_core.batch import ModalitySpec
    spec = ModalitySpec("image", "image", (1, 32, 32))
    for name in ("resnet18", "resnet34"):
        enc = build_encoder(spec, tiny_cfg(image_encoder=name))
        assert ModuleValidator.validate(enc, strict=False) == []
        assert enc(torch.zeros(2, 1, 32, 32)).shape == (2, 8)


def test_full_omnifuse_model_is_opacus_compatible():
    model = build_model(TOY_SPECS, toy_task(), tiny_cfg(dp_compatible=True))
    assert ModuleValidator.validate(model, strict=False) == []


def test_training_is_deterministic():
    ds = make_toy_dataset(32, seed=2)
    states = []
    for _ in range(2):
        cfg = tiny_cfg()
        torch.manual_seed(0)
        model = build_model(TOY_SPECS, toy_task(), cfg)
        train_local(model, ds, cfg)
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "survival"])
@pytest.mark.parametrize("fusion", ["omnifuse", "dwfuse"])
def test_every_task_trains_and_evaluates(task, fusion):
    ds = make_toy_dataset(40, task=task, missing=[0, 0.5, 0.3, 0.5], seed=4)
    cfg = tiny_cfg(task=task, fusion=fusion)
    model = build_model(TOY_SPECS, toy_task(task), cfg)
    train_local(model, ds, cfg)
    metrics = evaluate(model, ds, cfg)
    head = "c_index" if task == "survival" else "auroc"
    assert 0.0 <= metrics[head] <= 1.0
    assert {f"{head}_joint", f"{head}_heads", f"{head}_both"} <= set(metrics)


@pytest.mark.parametrize("flag", ["use_forward", "use_backward", "use_dwfuse", "use_tla"])
def test_each_term_can_be_switched_off(flag):
    ds = make_toy_dataset(24, seed=5)
    cfg = tiny_cfg(**{flag: False})
    model = build_model(TOY_SPECS, toy_task(), cfg)
    result = train_local(model, ds, cfg)
    key = {"use_forward": "loss_forward", "use_backward": "loss_backward", "use_tla": "lazy"}.get(flag)
    if key == "lazy":
        assert "lazy" not in result.trace
    elif key:
        assert key not in result.metrics
    else:
        assert result.metrics["omega_mean"] == 1.0


def test_site_diagnostics_are_aggregates(trained):
    from omnifuse_core.diagnostics import embedding_map, site_diagnostics
    model, ds, cfg, _ = trained
    diag = site_diagnostics(model, ds, cfg)
    for name in model.names:
        assert sum(diag[f"omega_hist/{name}/{b}"] for b in range(10)) == len(ds)
        if diag[f"impute_n/{name}"]:
            assert -1.0 <= diag[f"impute_cos/{name}"] <= 1.0
    assert sum(diag[f"impute_n/{n}"] for n in model.names) > 0
    emb = embedding_map(model, ds, cfg)
    assert emb["real"].shape == emb["imputed"].shape and emb["real"].shape[1] == 2


def test_zero_row_rides_along_with_the_batch_and_matches_a_separate_call():
    """Without DP, e_m(0) comes from one extra row of the batch's encoder call: the same values as encoding the
    zero sample on its own, and the gradient of a loss on v_miss reaches the encoders."""
    ds = make_toy_dataset(12, missing=[0, 0.5, 0.5, 0.5], seed=4)
    torch.manual_seed(0)
    model = build_model(TOY_SPECS, toy_task(), tiny_cfg()).eval()  # eval: no dropout draws to compare
    batch = ds.full_batch()
    present = batch["present"]
    v_true, v_miss = model.encode_with_zero(batch["inputs"], present)
    assert torch.allclose(v_true, model.encode(batch["inputs"], present), atol=1e-6)
    assert torch.allclose(v_miss, model.zero_embeddings(batch["inputs"], len(ds)), atol=1e-6)
    v_miss.sum().backward()
    for name in model.names:
        grads = [p.grad for p in model.encoders[name].parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name


def test_zero_embeddings_under_dp_carry_no_gradient():
    ds = make_toy_dataset(8, seed=5)
    model = build_model(TOY_SPECS, toy_task(), tiny_cfg(dp=True, dp_compatible=True))
    batch = ds.full_batch()
    _, v_miss = model.encode_with_zero(batch["inputs"], batch["present"])
    assert not v_miss.requires_grad


def test_adam_is_fused_on_cpu():
    from omnifuse_core.trainer import make_adam
    model = build_model(TOY_SPECS, toy_task(), tiny_cfg())
    opt = make_adam(list(model.parameters()), tiny_cfg(), torch.device("cpu"))
    assert opt.defaults["fused"] is True
