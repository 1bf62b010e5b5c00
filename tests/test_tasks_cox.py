"""survival-loss: cox — the Cox partial likelihood (Breslow ties, risk sets within the batch) on the model's own risk
score: the formula against a direct computation, its invariances, training, and the refusal under DP."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from omnifuse_core.batch import TaskSpec
from omnifuse_core.config import Config, ConfigError
from omnifuse_core.models import build_model
from omnifuse_core.tasks import CoxSurvivalTask, SurvivalTask, build_task, cox_partial_nll
from omnifuse_core.toy import TOY_SPECS, make_toy_dataset, toy_task
from omnifuse_core.trainer import evaluate, train_local

SPEC = TaskSpec("survival", 4, bin_edges=(0.5, 1.0, 2.0))


def _direct(eta, time, event):
    """The partial likelihood written out, one patient at a time."""
    out = []
    for i in range(len(eta)):
        risk = [math.exp(eta[j]) for j in range(len(eta)) if time[j] >= time[i]]
        out.append(event[i] * (math.log(sum(risk)) - eta[i]))
    return out


def test_matches_the_partial_likelihood_written_out_with_ties():
    eta, time, event = [0.3, -1.0, 2.0, 0.5, 0.0], [1.0, 2.0, 2.0, 0.5, 3.0], [1, 1, 0, 1, 0]
    got = torch.tensor(event) * cox_partial_nll(torch.tensor(eta), torch.tensor(time), torch.tensor(event))
    assert got.tolist() == pytest.approx(_direct(eta, time, event), abs=1e-5)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 12), shift=st.floats(-5, 5), seed=st.integers(0, 10_000))
def test_shift_invariant_and_permutation_equivariant(n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    eta, time = torch.randn(n, generator=g), torch.rand(n, generator=g) * 3
    event = (torch.rand(n, generator=g) < 0.6).float()
    base = event * cox_partial_nll(eta, time, event)
    assert torch.allclose(event * cox_partial_nll(eta + shift, time, event), base, atol=1e-4)
    perm = torch.randperm(n, generator=g)
    assert torch.allclose((event * cox_partial_nll(eta, time, event))[perm],
                          event[perm] * cox_partial_nll(eta[perm], time[perm], event[perm]), atol=1e-5)
    assert (base >= -1e-6).all()


def test_task_uses_the_discrete_models_risk_score_and_keeps_its_predictions():
    cox, nll = build_task(SPEC, "cox"), build_task(SPEC, "nll")
    assert isinstance(cox, CoxSurvivalTask) and type(nll) is SurvivalTask
    logits = torch.randn(6, 4)
    labels = torch.tensor([[0.3, 1], [0.7, 0], [1.5, 1], [2.5, 1], [0.2, 0], [1.0, 1]])
    assert torch.equal(cox.score(cox.to_prob(logits)), nll.score(nll.to_prob(logits)))
    eta = nll.score(nll.to_prob(logits))
    expected = labels[:, 1] * cox_partial_nll(eta, labels[:, 0], labels[:, 1])
    assert torch.allclose(cox.loss(logits, labels), expected)
    p = cox.p_true(logits, labels)
    assert p.shape == (6, 1) and ((p > 0) & (p <= 1)).all()
    with pytest.raises(ValueError, match="survival-loss 'x' unknown"):
        build_task(SPEC, "x")


def test_omnifuse_trains_with_the_cox_loss():
    ds = make_toy_dataset(64, missing=[0, 0.3, 0.3, 0.5], seed=2, task="survival")
    cfg = Config(task="survival", survival_loss="cox", embed_dim=8, encoder_hidden=8, head_hidden=8,
                 cra_hidden="16,8", cra_blocks=1, batch_size=16, local_epochs=2)
    torch.manual_seed(0)
    model = build_model(TOY_SPECS, toy_task("survival"), cfg)
    result = train_local(model, ds, cfg)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert 0.0 <= evaluate(model, ds, cfg)["c_index"] <= 1.0


def test_cox_is_refused_under_dp():
    with pytest.raises(ConfigError, match="survival-loss: cox couples the patients"):
        Config(task="survival", survival_loss="cox", dp=True).validate()
