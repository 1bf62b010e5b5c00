"""`sim.federated.run_federated`: Flower's simulation runtime behind a SuperLink on a free loopback port; the run
directory is complete and nothing it started is left running."""
from __future__ import annotations

import json

import pytest

from omnifuse_core.config import Config
from sim.deploy import is_running, marked_processes
from sim.federated import run_federated

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_run_federated_fedadam_one_round(tmp_path):
    from sim.generator import generate_federation

    data = generate_federation("smoke", 3, tmp_path / "data", seed=0)
    out = run_federated(Config.load("smoke").replace(rounds=1, strategy="fedadam"), data, tmp_path / "run")
    assert out == (tmp_path / "run").resolve()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["strategy"] == "fedadam" and [r["round"] for r in metrics["rounds"]] == [1]
    assert set(metrics["final"]["sites"]) == {"hospital_a", "hospital_b", "hospital_c"}
    assert Config.load(out / "config.yaml").min_sites == 3
    state = json.loads((out / "checkpoints" / "round-0001.json").read_text())
    assert state["strategy"] == "fedadam" and state["strategy_state"]["t"] == 1
    marker = f"FLWR_HOME={out / 'logs' / 'flower' / 'flwr_home'}\0".encode()
    assert not [p for p in marked_processes(marker) if is_running(p)], "a simulation process is still running"


def test_run_federated_secure_aggregation_matches_plaintext(tmp_path):
    """Issue 24 in Flower's simulation runtime: SecAgg+ rounds decode to the plaintext run's model (same seeds), and
    the server records only the summed counts."""
    from sim.generator import generate_federation

    data = generate_federation("smoke", 3, tmp_path / "data", seed=0)
    finals = {}
    for secure in (False, True):
        out = run_federated(Config.load("smoke").replace(rounds=1, secure_aggregation=secure), data,
                            tmp_path / f"run-{secure}")
        metrics = json.loads((out / "metrics.json").read_text())
        finals[secure] = metrics["final"]["global"]["auroc"]
        if secure:
            summed = metrics["rounds"][0]["secure_sum"]
            assert summed["contributors"] == 3 and summed["counts"]["n"] > 0
    assert abs(finals[True] - finals[False]) <= 0.005, finals
