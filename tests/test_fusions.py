"""Baseline fusions (concat, sum, late, moddrop, se_gate) and HEALNet on the shared encoders (DESIGN §4.6)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import omnifuse_core.models.baselines as baselines
import omnifuse_core.models.healnet as healnet
from omnifuse_core.batch import ModalitySpec, TaskSpec
from omnifuse_core.config import Config, ConfigError
from omnifuse_core.models import FUSIONS

FUSION_NAMES = ["concat", "sum", "late", "moddrop", "se_gate", "healnet"]
TASK_KINDS = ["binary", "multiclass", "multilabel", "survival"]
SPECS = [ModalitySpec("ehr", "sequence", (6, 10)), ModalitySpec("image", "image", (1, 16, 16)),
         ModalitySpec("text", "text_embedding", (12,)), ModalitySpec("genomics", "genomics", (20,))]
B = 6
# Every modality is present in some rows and missing in others; row 5 has nothing present.
PRESENT = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]],
                       dtype=torch.bool)


def task_spec(kind: str) -> TaskSpec:
    return {"binary": TaskSpec("binary", 1), "multiclass": TaskSpec("multiclass", 3),
            "multilabel": TaskSpec("multilabel", 2),
            "survival": TaskSpec("survival", 4, bin_edges=(1.0, 2.0, 3.0))}[kind]


def make_cfg(**kw) -> Config:
    return Config(embed_dim=16, encoder_hidden=16, head_hidden=16, healnet_latents=4, **kw)


def make_model(fusion: str, kind: str = "binary", **cfg_kw):
    torch.manual_seed(0)
    return FUSIONS.get(fusion)(specs=SPECS, task=task_spec(kind), cfg=make_cfg(**cfg_kw))


def make_batch(kind: str, seed: int = 1, present: torch.Tensor = PRESENT) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = {s.name: torch.randn(B, *s.shape, generator=g) * present[:, i].view(-1, *[1] * len(s.shape))
              for i, s in enumerate(SPECS)}
    if kind == "binary":
        labels = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    elif kind == "multiclass":
        labels = torch.tensor([0, 1, 2, 1, 0, 2])
    elif kind == "multilabel":
        labels = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    else:
        labels = torch.tensor([[0.5, 1.0], [1.5, 0.0], [2.5, 1.0], [3.5, 1.0], [0.2, 0.0], [2.9, 1.0]])
    return {"inputs": inputs, "present": present.clone(), "labels": labels, "index": torch.arange(B)}


def expected_prob_shape(kind: str) -> tuple[int, ...]:
    return {"binary": (B,), "multiclass": (B, 3), "multilabel": (B, 2), "survival": (B, 4)}[kind]


@pytest.mark.parametrize("kind", TASK_KINDS)
@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_shapes_and_probabilities(fusion, kind):
    model = make_model(fusion, kind).eval()
    batch = make_batch(kind)
    with torch.no_grad():
        logits = model(batch["inputs"], batch["present"])
        prob = model.predict_proba(batch["inputs"], batch["present"])
    assert logits.shape == (B, task_spec(kind).num_outputs)
    assert prob.shape == expected_prob_shape(kind)
    assert torch.isfinite(logits).all() and ((prob >= 0) & (prob <= 1)).all()
    if kind == "multiclass":
        torch.testing.assert_close(prob.sum(dim=1), torch.ones(B))
    # predict_proba agrees with the task's reading of forward's logits (late: up to the 1e-6 clamp).
    torch.testing.assert_close(model.task.to_prob(logits), prob, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", TASK_KINDS)
@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_loss_finite_and_reaches_present_encoders(fusion, kind):
    model = make_model(fusion, kind).train()
    loss, parts = model.training_loss(make_batch(kind))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert parts["loss"] == pytest.approx(float(loss.detach()))
    loss.backward()
    for name in model.names:  # every modality is present in at least one row
        grads = [p.grad for p in model.encoders[name].parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{fusion}/{kind}: no gradient in {name}"


@pytest.mark.parametrize("kind", ["binary", "survival"])
@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_missing_modality_input_is_ignored(fusion, kind):
    model = make_model(fusion, kind).eval()
    batch = make_batch(kind)
    noisy = {k: v.clone() for k, v in batch["inputs"].items()}
    g = torch.Generator().manual_seed(7)
    for i, s in enumerate(SPECS):
        missing = ~PRESENT[:, i]
        noisy[s.name][missing] = torch.randn(int(missing.sum()), *s.shape, generator=g) * 100
    with torch.no_grad():
        p0 = model.predict_proba(batch["inputs"], batch["present"])
        p1 = model.predict_proba(noisy, batch["present"])
        # Sanity: changing a PRESENT input does move the prediction of that row.
        moved = {k: v.clone() for k, v in batch["inputs"].items()}
        moved["genomics"][0] += 5.0
        p2 = model.predict_proba(moved, batch["present"])
    assert torch.equal(p0, p1)
    assert not torch.allclose(p0[0], p2[0])


_MODELS: dict[str, torch.nn.Module] = {}


@settings(max_examples=15, deadline=None, derandomize=True)
@given(fusion=st.sampled_from(FUSION_NAMES), bits=st.lists(st.booleans(), min_size=B * 4, max_size=B * 4),
       seed=st.integers(0, 2**16))
def test_property_missing_inputs_never_matter(fusion, bits, seed):
    """Any missing pattern: overwriting every missing slot with arbitrary values leaves the prediction unchanged."""
    if fusion not in _MODELS:
        _MODELS[fusion] = make_model(fusion, "multilabel").eval()
    model = _MODELS[fusion]
    present = torch.tensor(bits).view(B, 4)
    batch = make_batch("multilabel", seed=seed, present=present)
    g = torch.Generator().manual_seed(seed)
    junk = {k: torch.where(present[:, i].view(-1, *[1] * (v.dim() - 1)), v, torch.randn(v.shape, generator=g) * 30)
            for i, (k, v) in enumerate(batch["inputs"].items())}
    with torch.no_grad():
        assert torch.equal(model.predict_proba(batch["inputs"], present), model.predict_proba(junk, present))


@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_samples_are_independent(fusion):
    model = make_model(fusion, "multiclass").eval()
    batch = make_batch("multiclass")
    with torch.no_grad():
        full = model.predict_proba(batch["inputs"], batch["present"])
        for b in (0, 3, 5):
            one = model.predict_proba({k: v[b:b + 1] for k, v in batch["inputs"].items()}, batch["present"][b:b + 1])
            torch.testing.assert_close(one[0], full[b], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_predictions_do_not_depend_on_labels(fusion):
    model = make_model(fusion, "multiclass").eval()
    batch = make_batch("multiclass")
    shuffled = dict(batch, labels=batch["labels"][torch.tensor([3, 5, 0, 1, 4, 2])])
    with torch.no_grad():
        p0 = model.predict_proba(batch["inputs"], batch["present"])
        loss0, _ = model.training_loss(batch)
        loss1, _ = model.training_loss(shuffled)
        p1 = model.predict_proba(shuffled["inputs"], shuffled["present"])
    assert not torch.isclose(loss0, loss1)  # the labels do matter to the loss ...
    assert torch.equal(p0, p1)  # ... but never to the prediction


@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_opacus_validator_and_per_sample_grads(fusion):
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    model = make_model(fusion, "binary", dp_compatible=True).train()
    assert ModuleValidator.validate(model, strict=False) == []
    gsm = GradSampleModule(model)
    # All modalities present: the loss is a mean of per-sample terms, so the per-sample gradients average to the
    # batch gradient. (With missing images, SmallCNN's GroupNorm of the constant map e_image(0) is rounding noise
    # scaled by 1/sqrt(eps), and the two sums differ by ~1e-4 - an encoder property, not a fusion one.)
    loss, _ = model.training_loss(make_batch("binary", present=torch.ones_like(PRESENT)))
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad_sample is not None and p.grad_sample.shape == (B, *p.shape), name
            torch.testing.assert_close(p.grad_sample.mean(dim=0), p.grad, atol=1e-6, rtol=1e-4, msg=name)
    gsm.zero_grad(set_to_none=True)
    loss, _ = model.training_loss(make_batch("binary"))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad_sample.shape == (B, *p.shape), name
        if fusion in ("late", "healnet") and (".cross.image." in name or name.startswith("heads.image.")):
            # Rows that have other modalities but no image add nothing (late: an all-missing row trains all heads).
            rows = ~PRESENT[:, 1] & (PRESENT.any(dim=1) if fusion == "late" else True)
            assert p.grad_sample[rows].abs().max() == 0, name
    gsm._close()


def test_healnet_uses_dp_attention_when_dp_compatible():
    from opacus.layers import DPMultiheadAttention

    dp = make_model("healnet", dp_compatible=True)
    plain = make_model("healnet")
    assert any(isinstance(m, DPMultiheadAttention) for m in dp.modules())
    assert any(isinstance(m, torch.nn.MultiheadAttention) for m in plain.modules())
    assert set(dp.state_dict()) >= {n for n, _ in dp.named_parameters()}


@pytest.mark.parametrize("dp_compatible", [False, True])
def test_healnet_skips_missing_modality_per_sample(dp_compatible):
    model = make_model("healnet", "multilabel", dp_compatible=dp_compatible).eval()
    batch = make_batch("multilabel")
    with torch.no_grad():
        ctx = model.contexts(batch["inputs"], batch["present"])
        base = model.fuse(ctx, batch["present"])
        g = torch.Generator().manual_seed(3)
        other = [c.clone() for c in ctx]
        for m in range(len(SPECS)):
            missing = ~PRESENT[:, m]
            other[m][missing] = torch.randn(int(missing.sum()), *c_shape(ctx[m]), generator=g) * 50
        assert torch.equal(model.fuse(other, batch["present"]), base)
        # Marking image present for row 1 makes its (new) image context count: the output must change.
        present = batch["present"].clone()
        present[1, 1] = True
        changed = model.fuse(other, present)
    assert not torch.allclose(changed[1], base[1])
    torch.testing.assert_close(changed[[0, 2, 3, 4, 5]], base[[0, 2, 3, 4, 5]])


def c_shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape[1:])


def test_healnet_tokens():
    model = make_model("healnet")
    batch = make_batch("binary")
    ctx = model.contexts(batch["inputs"], batch["present"])
    assert [tuple(c.shape) for c in ctx] == [(B, 6, 16), (B, 4, 16), (B, 1, 16), (B, 1, 16)]
    with torch.no_grad():
        emb = model.encode(batch["inputs"], batch["present"])
    torch.testing.assert_close(ctx[0][:, -1], emb[:, 0])  # last GRU step token == the EHR embedding
    torch.testing.assert_close(ctx[1].mean(dim=1), emb[:, 1])  # mean of image tokens == the image embedding


def test_healnet_rejects_bad_heads():
    with pytest.raises(ConfigError, match="healnet-heads"):
        make_model("healnet", healnet_heads=3)


def test_param_groups_follow_modalities():
    late, heal = make_model("late"), make_model("healnet")
    assert late.param_group("heads.image.0.weight") == "enc:image"
    assert late.param_group("encoders.ehr.proj.weight") == "enc:ehr"
    assert heal.param_group("layers.1.cross.text.attn.out_proj.weight") == "enc:text"
    assert heal.param_group("layers.1.latent_block.ff.0.weight") == "shared"
    assert heal.param_group("latents.weight") == "shared"


def test_late_fusion_averages_present_heads():
    model = make_model("late", "binary").eval()
    batch = make_batch("binary")
    with torch.no_grad():
        heads = torch.stack([torch.sigmoid(z[:, 0]) for z in model.head_logits(batch["inputs"], batch["present"])], 1)
        prob = model.predict_proba(batch["inputs"], batch["present"])
    torch.testing.assert_close(prob[1], heads[1, 0])  # only ehr present
    torch.testing.assert_close(prob[2], heads[2, [1, 2]].mean())  # image + text
    torch.testing.assert_close(prob[5], heads[5].mean())  # nothing present: all heads


def test_moddrop_mask_keeps_a_present_modality():
    present = torch.rand(200, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    for prob in (0.0, 0.5, 1.0):
        keep = baselines.moddrop_mask(present, prob, generator=torch.Generator().manual_seed(1))
        assert not (keep & ~present).any()
        assert torch.equal(keep.any(dim=1), present.any(dim=1))
    assert torch.equal(baselines.moddrop_mask(present, 0.0), present)
    assert (baselines.moddrop_mask(present, 1.0).sum(dim=1) == present.any(dim=1).long()).all()
    dropped = baselines.moddrop_mask(present, 0.5, generator=torch.Generator().manual_seed(2))
    assert 0 < int((present & ~dropped).sum()) < int(present.sum())
    with pytest.raises(ValueError, match="moddrop-prob"):
        baselines.moddrop_mask(present, 1.5)


def test_moddrop_drops_only_in_training():
    model = make_model("moddrop", moddrop_prob=1.0)
    assert torch.equal(model.eval().keep_mask(PRESENT), PRESENT)
    kept = model.train().keep_mask(PRESENT)
    assert (kept.sum(dim=1) == PRESENT.any(dim=1).long()).all()


def test_prob_to_logits_inverts_to_prob():
    p = torch.tensor([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    torch.testing.assert_close(torch.softmax(baselines.prob_to_logits(p, "multiclass"), 1), p)
    q = torch.tensor([0.1, 0.7])
    torch.testing.assert_close(torch.sigmoid(baselines.prob_to_logits(q, "binary")), q[:, None])


def test_registered_names():
    for name in FUSION_NAMES:
        assert name in FUSIONS
    assert healnet.HEALNetFusion is FUSIONS.get("healnet")
