"""Encoder properties that hold for every sequence encoder choice, and the temporal-convolution (``tcn``) EHR
encoder: shape, per-sample independence, an exact e(0), Opacus compatibility without a layer swap, DP training."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from opacus.validators import ModuleValidator

from omnifuse_core.batch import KIND_SEQUENCE, ModalitySpec
from omnifuse_core.config import Config
from omnifuse_core.encoders import TemporalConvEncoder, build_encoder
from omnifuse_core.models import build_model
from omnifuse_core.toy import TOY_SPECS, make_toy_dataset, toy_task
from omnifuse_core.trainer import DPSettings, train_local

SPEC = ModalitySpec("ehr", KIND_SEQUENCE, (24, 7))
CFG = Config(embed_dim=8, encoder_hidden=8, head_hidden=8, cra_hidden="16,8,4", cra_blocks=2, batch_size=8)


@pytest.mark.parametrize("name", ["gru", "lstm", "tcn"])
def test_sequence_encoders_map_each_sample_on_its_own(name):
    torch.manual_seed(0)
    enc = build_encoder(SPEC, CFG.replace(ehr_encoder=name)).eval()
    x = torch.randn(5, 24, 7)
    out = enc(x)
    assert out.shape == (5, 8)
    x2 = x.clone()
    x2[1:] = torch.randn(4, 24, 7) * 50  # change every other patient
    assert torch.allclose(enc(x2)[0], out[0], atol=1e-5)


def test_tcn_is_the_registered_ehr_encoder_and_needs_no_dp_swap():
    enc = build_encoder(SPEC, CFG.replace(ehr_encoder="tcn", dp_compatible=True))
    assert isinstance(enc, TemporalConvEncoder)
    assert ModuleValidator.validate(enc, strict=False) == []
    assert ModuleValidator.validate(build_model(TOY_SPECS, toy_task(), CFG.replace(ehr_encoder="tcn")),
                                    strict=False) == []


@settings(max_examples=10, deadline=None)
@given(steps=st.integers(1, 40))
def test_tcn_zero_input_is_an_exact_constant(steps):
    """e(0) for a zero series is the same for every patient and finite at any length (bias-free convs before
    GroupNorm: a zero-variance map normalises to exactly 0, never to rounding noise scaled by 1/sqrt(eps))."""
    torch.manual_seed(1)
    enc = TemporalConvEncoder(spec=ModalitySpec("ehr", KIND_SEQUENCE, (steps, 7)), cfg=CFG).eval()
    out = enc(torch.zeros(3, steps, 7))
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_tcn_rejects_a_non_sequence_modality():
    with pytest.raises(ValueError, match="'tcn' needs a sequence input"):
        TemporalConvEncoder(spec=ModalitySpec("x", "genomics", (5,)), cfg=CFG)


def test_omnifuse_with_tcn_trains_under_dp_sgd():
    ds = make_toy_dataset(40, missing=[0, 0.4, 0.4, 0.5], seed=3)
    cfg = CFG.replace(ehr_encoder="tcn", dp=True, local_epochs=1)
    torch.manual_seed(0)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    before = {k: v.clone() for k, v in model.encoders["ehr"].state_dict().items()}
    result = train_local(model, ds, cfg, dp=DPSettings(1.0, 1.0))
    assert result.steps == 5 and result.sample_rate == pytest.approx(8 / 40)
    after = model.encoders["ehr"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
