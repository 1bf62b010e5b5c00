"""Issue 23's learner pieces: the bilinear joint head, auxiliary unimodal losses and the DWFuse floor."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnifuse_core.config import Config, ConfigError
from omnifuse_core.fusion import dwfuse_weights
from omnifuse_core.interaction import JointHead, PairwiseBilinear
from omnifuse_core.models import build_model
from omnifuse_core.toy import TOY_SPECS, make_toy_dataset, toy_task

TINY = dict(embed_dim=8, encoder_hidden=8, head_hidden=8, cra_hidden="16,8,4", cra_blocks=2, batch_size=16)


def test_pairwise_bilinear_shapes_and_leading_dims():
    torch.manual_seed(0)
    layer = PairwiseBilinear(4, 5, 3)
    assert layer.out_dim == 6 * 3
    v = torch.randn(7, 4, 5)
    assert layer(v).shape == (7, 18)
    stacked = torch.randn(7, 2, 4, 5)  # [B, P, M, d]: several availability views at once
    out = layer(stacked)
    assert out.shape == (7, 2, 18)
    torch.testing.assert_close(out[:, 1], layer(stacked[:, 1]))
    assert PairwiseBilinear(1, 5, 3)(torch.randn(2, 1, 5)).shape == (2, 0)


def test_pairwise_bilinear_is_the_product_of_the_two_projections():
    torch.manual_seed(0)
    layer = PairwiseBilinear(3, 4, 2)
    v = torch.randn(5, 3, 4)
    out = layer(v).view(5, 3, 2)  # pairs (0,1), (0,2), (1,2)
    for k, (m, n) in enumerate(layer.pairs):
        torch.testing.assert_close(out[:, k], layer.left[k](v[:, m]) * layer.right[k](v[:, n]))
    v2 = v.clone()
    v2[:, 0] = 0.0  # modality 0's embedding 0 -> its pairs' products vanish, the other pair is unchanged
    out2 = layer(v2).view(5, 3, 2)
    assert torch.all(out2[:, :2] == 0) and torch.equal(out2[:, 2], out[:, 2])


def test_bilinear_head_learns_a_product_the_mlp_head_finds_harder():
    """y = sign(a·b) with a, b in different modalities: the bilinear term fits it in few steps."""
    torch.manual_seed(0)
    n = 512
    v = torch.randn(n, 2, 4)
    y = ((v[:, 0, 0] * v[:, 1, 0]) > 0).float()

    def fit(kind: str) -> float:
        torch.manual_seed(1)
        head = JointHead(base_dim=8, num_modalities=2, dim=4, hidden=8, out=1, kind=kind, rank=2)
        opt = torch.optim.Adam(head.parameters(), lr=0.02)
        for _ in range(150):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(v.flatten(1), v).squeeze(1), y)
            loss.backward()
            opt.step()
        return float(loss)

    assert fit("bilinear") < 0.5 * fit("mlp")


def test_joint_head_rejects_unknown_kind_and_config_validates_it():
    with pytest.raises(ValueError, match="joint-head"):
        JointHead(base_dim=4, num_modalities=2, dim=2, hidden=4, out=1, kind="attention")
    with pytest.raises(ConfigError, match="joint_head|joint-head"):
        Config(joint_head="attention").validate()


@pytest.mark.parametrize("fusion,joint_input", [("concat", "latents"), ("omnifuse", "latents"),
                                                ("omnifuse", "latents+embeddings")])
def test_missing_modality_raw_input_never_reaches_the_bilinear_prediction(fusion, joint_input):
    torch.manual_seed(0)
    cfg = Config(**TINY, fusion=fusion, joint_head="bilinear", joint_input=joint_input)
    model = build_model(TOY_SPECS, toy_task(), cfg).eval()
    ds = make_toy_dataset(8, seed=3)
    batch = ds.full_batch()
    present = batch["present"].clone()
    present[:, 1] = False
    noisy = {k: v.clone() for k, v in batch["inputs"].items()}
    noisy["image"] = torch.randn_like(noisy["image"]) * 100
    with torch.no_grad():
        torch.testing.assert_close(model.predict_proba(batch["inputs"], present), model.predict_proba(noisy, present))


def test_unimodal_loss_trains_every_encoder_and_counts_only_present_modalities():
    torch.manual_seed(0)
    cfg = Config(**TINY, fusion="concat", unimodal_loss=1.0)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    batch = make_toy_dataset(16, seed=1).full_batch()
    loss, parts = model.training_loss(batch)
    assert "loss_unimodal" in parts and "loss_joint" in parts
    loss.backward()
    for name in model.names:
        grads = [p.grad for p in model.encoders[name].parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
        assert model.param_group(f"aux_heads.{name}.weight") == f"enc:{name}"
    # a head's loss weighs only the patients who have its modality
    only_ehr = batch["present"].clone()
    only_ehr[:, 1:] = False
    only_ehr[:, 0] = True
    model.zero_grad()
    loss, _ = model.training_loss({**batch, "present": only_ehr})
    loss.backward()
    assert model.aux_heads["image"].weight.grad is None or model.aux_heads["image"].weight.grad.abs().sum() == 0
    assert model.aux_heads["ehr"].weight.grad.abs().sum() > 0


def test_without_unimodal_loss_concat_has_no_aux_heads():
    model = build_model(TOY_SPECS, toy_task(), Config(**TINY, fusion="concat"))
    assert model.aux_heads is None
    assert not any(k.startswith("aux_heads") for k in model.state_dict())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4), st.floats(0.0, 0.99))
def test_dwfuse_floor_keeps_every_weight_at_least_kappa(p, kappa):
    p_true = torch.tensor([p])
    plain = dwfuse_weights(p_true, 0.5)
    floored = dwfuse_weights(p_true, 0.5, floor=kappa)
    assert torch.all(floored >= kappa - 1e-6) and torch.all(floored <= 1.0 + 1e-6)
    torch.testing.assert_close(floored, kappa + (1 - kappa) * plain)


def test_dwfuse_floor_out_of_range_is_refused():
    with pytest.raises(ValueError, match="dwfuse-floor"):
        dwfuse_weights(torch.rand(2, 3), 0.5, floor=1.0)


def test_genomics_input_dropout_drops_genes_in_training_only_and_keeps_e0():
    cfg = Config(**TINY, fusion="concat", genomics_encoder="linear", genomics_input_dropout=0.5)
    torch.manual_seed(0)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    enc = model.encoders["genomics"]
    assert isinstance(enc[0], torch.nn.Dropout) and model.param_group("encoders.genomics.1.proj.weight") == \
        "enc:genomics"
    x = torch.randn(4, TOY_SPECS[3].shape[0])
    enc.train()
    assert not torch.equal(enc(x), enc(x))  # a fresh gene mask per call
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x))
    enc.train()
    zero = torch.zeros(2, TOY_SPECS[3].shape[0])
    torch.testing.assert_close(enc(zero), enc.eval()(zero))  # e(0) does not depend on the mask
    with pytest.raises(ConfigError, match="genomics-input-dropout"):
        Config(genomics_input_dropout=1.0).validate()


def test_joint_input_latents_plus_embeddings_widens_g_rp_and_trains():
    """joint-input: latents+embeddings hands g_rp the completed embeddings beside the CRA latents (both views)."""
    torch.manual_seed(0)
    base = build_model(TOY_SPECS, toy_task(), Config(**TINY, fusion="omnifuse"))
    wide = build_model(TOY_SPECS, toy_task(), Config(**TINY, fusion="omnifuse", joint_input="latents+embeddings"))
    m, d = len(TOY_SPECS), TINY["embed_dim"]
    assert wide.joint_head.mlp[0].in_features == base.joint_head.mlp[0].in_features + m * d
    batch = make_toy_dataset(16, seed=1).full_batch()
    loss, _ = wide.training_loss(batch)
    loss.backward()
    grad = wide.joint_head.mlp[0].weight.grad
    assert grad is not None and grad[:, -m * d:].abs().sum() > 0  # the embedding columns are trained
    wide.eval()
    with torch.no_grad():
        p = wide.predict_all(batch["inputs"], batch["present"])
    assert set(p) >= {"joint", "heads", "both"} and torch.isfinite(p["joint"]).all()
    with pytest.raises(ConfigError, match="joint-input"):
        Config(joint_input="embeddings").validate()
