"""Integration (issue 26): a real `flower-superlink` + one `flower-supernode` whose site's EHR is a MEDS root
(`omnifuse synth --ehr-format meds`) run 1 round of configs/smoke.yaml through `flwr run`: the vocabulary travels
with the preprocessing statistics, the site loads its events behind the leakage guard, trains and is evaluated."""
from __future__ import annotations

import json

import pytest

from sim.deploy import flower_processes, flwr_run, is_running, start_superlink, start_supernode, write_connection
from sim.generator import generate_federation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_one_meds_site_trains_in_real_processes(tmp_path):
    data = generate_federation("smoke", 1, tmp_path / "data", seed=0, ehr_format="meds")
    site = data / "hospital_a"
    run_dir = tmp_path / "run"
    with flower_processes(tmp_path / "flower") as procs:
        port = start_superlink(procs, simulation=False)
        start_supernode(procs, site.name, port, {"data-path": str(site), "state-dir": str(tmp_path / "state")})
        write_connection(procs.env, port)
        flwr_run(procs, {"config": "smoke", "run-dir": str(run_dir), "rounds": 1, "min-sites": 1,
                         "ehr-vocab-min-patients": 3}, timeout=840)
    assert not [pid for pid in procs.stopped_pids if is_running(pid)], "a Flower process outlived the test"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["final"]["sites"]) == {"hospital_a"}
    assert 0.0 <= metrics["final"]["global"]["auroc"] <= 1.0
    vocab = json.loads((run_dir / "checkpoints" / "federation.json").read_text())["stats"]["vocab"]["ehr"]
    assert "ICU//Heart Rate" in vocab["codes"] and "MEDS_DEATH" not in vocab["codes"]
    assert min(vocab["patients"]) >= 3
