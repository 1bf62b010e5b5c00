"""The compact encoders of the DP profile (``linear``, ``summary``, ``pooled``): shapes, per-sample independence, an
exact e(0), Opacus compatibility with no layer swap, few parameters, and repeated DP-SGD calls on one model (the
reference modes and the benchmark trainers train the same model round after round)."""
import pytest
import torch
from opacus.validators import ModuleValidator

from omnifuse_core.batch import KIND_GENOMICS, KIND_IMAGE, KIND_SEQUENCE, KIND_TABULAR, KIND_TEXT, ModalitySpec
from omnifuse_core.config import Config
from omnifuse_core.encoders import LinearEncoder, PooledImageEncoder, SequenceSummaryEncoder, build_encoder
from omnifuse_core.models import build_model
from omnifuse_core.toy import TOY_SPECS, make_toy_dataset, toy_task
from omnifuse_core.trainer import DPSettings, train_local
from omnifuse_core.weights import trainable_count

CFG = Config(embed_dim=8, head_hidden=8, cra_hidden="16,8", cra_blocks=1, batch_size=8)
COMPACT = dict(ehr_encoder="summary", image_encoder="pooled", text_encoder="linear", genomics_encoder="linear")
CASES = [(ModalitySpec("ehr", KIND_SEQUENCE, (24, 7)), "ehr_encoder", "summary", SequenceSummaryEncoder, 3 * 7),
         (ModalitySpec("image", KIND_IMAGE, (1, 64, 64)), "image_encoder", "pooled", PooledImageEncoder, 64),
         (ModalitySpec("text", KIND_TEXT, (384,)), "text_encoder", "linear", LinearEncoder, 384),
         (ModalitySpec("genomics", KIND_GENOMICS, (50,)), "genomics_encoder", "linear", LinearEncoder, 50),
         (ModalitySpec("ehr", KIND_TABULAR, (9,)), "ehr_encoder", "linear", LinearEncoder, 9)]


@pytest.mark.parametrize("spec,key,name,cls,n_in", CASES, ids=[c[0].kind for c in CASES])
def test_compact_encoder_is_one_linear_map_per_sample(spec, key, name, cls, n_in):
    torch.manual_seed(0)
    enc = build_encoder(spec, CFG.replace(**{key: name}, dp=True))
    assert isinstance(enc, cls)
    assert trainable_count(enc) == n_in * 8 + 8  # one Linear(n_in, embed_dim): nothing else is trained
    assert ModuleValidator.validate(enc, strict=False) == []
    enc.eval()
    x = torch.randn(5, *spec.shape)
    out = enc(x)
    assert out.shape == (5, 8)
    x2 = x.clone()
    x2[1:] = torch.randn(4, *spec.shape) * 50
    assert torch.allclose(enc(x2)[0], out[0], atol=1e-5)  # one patient's embedding ignores the others
    zero = enc(torch.zeros(2, *spec.shape))
    assert torch.allclose(zero, enc.proj.bias.expand(2, -1), atol=1e-6)  # e(0) is the bias: a missing input adds nothing


def test_summary_reads_mean_spread_and_last_value():
    enc = SequenceSummaryEncoder(spec=ModalitySpec("ehr", KIND_SEQUENCE, (4, 2)), cfg=CFG)
    with torch.no_grad():
        enc.proj.weight.zero_(), enc.proj.bias.zero_()
        enc.proj.weight[0, 0] = 1.0  # mean of feature 0
        enc.proj.weight[1, 2] = 1.0  # std of feature 0
        enc.proj.weight[2, 5] = 1.0  # last value of feature 1
    x = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [1.0, 0.0], [3.0, 7.0]]])
    out = enc(x)[0]
    assert out[0].item() == pytest.approx(2.0) and out[1].item() == pytest.approx(1.0, abs=1e-3)
    assert out[2].item() == pytest.approx(7.0)


@pytest.mark.parametrize("name,cls", [("summary", SequenceSummaryEncoder), ("pooled", PooledImageEncoder)])
def test_compact_encoders_refuse_the_wrong_modality_kind(name, cls):
    with pytest.raises(ValueError, match=f"'{name}' needs"):
        cls(spec=ModalitySpec("x", KIND_GENOMICS, (5,)), cfg=CFG)


def test_dp_profile_model_is_small_and_trains_round_after_round_under_dp():
    """Opacus' hooks come off after each call, so the same model trains again (no 'hooks twice' error)."""
    ds = make_toy_dataset(40, missing=[0, 0.4, 0.4, 0.5], seed=3)
    cfg = CFG.replace(**COMPACT, dp=True, local_epochs=1)
    torch.manual_seed(0)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    default = build_model(TOY_SPECS, toy_task(), Config(embed_dim=8, head_hidden=8, cra_hidden="16,8",
                                                        cra_blocks=1, encoder_hidden=8))
    assert trainable_count(model) < trainable_count(default)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for rnd in (1, 2):
        result = train_local(model, ds, cfg, dp=DPSettings(1.0, 1.0), seed_offset=rnd, trained=rnd > 1)
        assert result.steps == 5
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_every_grad_sample_mode_computes_per_sample_gradients_through_training_loss(mode):
    """With (almost) no noise a DP step must move the weights as the clipped gradient says: a per-sample mode that
    only works through the wrapper's forward (Opacus' ExpandedWeights) would leave every gradient at zero here."""
    ds = make_toy_dataset(32, missing=[0, 0.4, 0.4, 0.5], seed=3)
    cfg = CFG.replace(**COMPACT, dp=True, local_epochs=1, dp_grad_sample_mode=mode)
    torch.manual_seed(0)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, ds, cfg, dp=DPSettings(1e-9, 1.0))
    moved = [k for k, v in model.state_dict().items() if (v - before[k]).abs().max() > 1e-4]
    assert any(k.startswith("encoders.") for k in moved) and any(k.startswith("joint_head") for k in moved)
