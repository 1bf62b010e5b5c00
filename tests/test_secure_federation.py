"""Secure aggregation (SecAgg+) through the project's server loop, in process: the real ClientApp (with
``secaggplus_mod``) behind an in-process Grid, the real SecAggPlusWorkflow (issue 24)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from grid_fakes import task_identity  # noqa: F401 (autouse fixture)
from omnifuse_core.config import Config
from server.loop import run_federation
from test_federation_loop import InProcessGrid

pytestmark = pytest.mark.slow


def _run(root, run_dir, **kw) -> dict:
    cfg = Config.load("smoke").replace(data_root=str(root), run_dir=str(run_dir), min_sites=3, **kw)
    run_federation(InProcessGrid(3), cfg)
    return json.loads((run_dir / "metrics.json").read_text())


def test_secure_rounds_equal_plaintext_rounds_and_show_only_sums(smoke_federation, tmp_path):
    plain = _run(smoke_federation, tmp_path / "plain", rounds=2)
    secure = _run(smoke_federation, tmp_path / "secure", rounds=2, secure_aggregation=True)
    assert abs(secure["final"]["global"]["auroc"] - plain["final"]["global"]["auroc"]) <= 0.005
    a = load_file(str(tmp_path / "plain" / "checkpoints" / "round-0001.safetensors"))
    b = load_file(str(tmp_path / "secure" / "checkpoints" / "round-0001.safetensors"))
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4  # quantization error only (measured ~2e-6)
    for p_rnd, s_rnd in zip(plain["rounds"], secure["rounds"]):
        summed = {k: sum(t["counts"][k] for t in p_rnd["train"].values()) for k in ("ehr", "genomics", "any", "n")}
        assert {k: s_rnd["secure_sum"]["counts"][k] for k in summed} == summed
        assert s_rnd["secure_sum"]["contributors"] == 3 and not s_rnd["rejected"]
        assert all(t["counts"] == {} for t in s_rnd["train"].values())  # no per-site count reaches the server
        assert set(s_rnd["train"]) == set(p_rnd["train"])  # per-site clear-text metrics still recorded


def test_site_checks_withhold_before_masking_and_the_model_is_kept(smoke_federation, tmp_path):
    m = _run(smoke_federation, tmp_path / "run", rounds=1, secure_aggregation=True, max_update_norm=1e-9)
    rnd = m["rounds"][0]
    assert set(rnd["rejected"]) == {"hospital_a", "hospital_b", "hospital_c"}
    assert all("withheld at the site: update norm" in r for r in rnd["rejected"].values())
    assert rnd["secure_sum"]["contributors"] == 0


def test_dp_with_secure_aggregation_keeps_the_ledger_and_says_what_the_server_saw(smoke_federation, tmp_path):
    m = _run(smoke_federation, tmp_path / "run", rounds=1, secure_aggregation=True, dp=True, target_epsilon=8.0,
             dp_preflight="warn")
    assert m["rounds"][0]["secure_sum"]["contributors"] == 3
    summary = json.loads((tmp_path / "run" / "privacy" / "summary.json").read_text())
    assert set(summary["sites"]) == {"hospital_a", "hospital_b", "hospital_c"}
    assert all(0 < s["epsilon"] <= 8.0 for s in summary["sites"].values())
    sa = summary["secure_aggregation"]
    assert sa["enabled"] and any("sum over the round's sites" in x for x in sa["server_saw"])
    assert "Secure aggregation" in (tmp_path / "run" / "privacy" / "privacy.md").read_text()
    assert list((tmp_path / "run" / "site-state").glob("*/privacy-ledger*")) or \
        list((tmp_path / "run" / "site-state").rglob("*.jsonl"))  # each site's own ledger, on its disk


def test_too_few_sites_for_the_threshold_fail_the_round_by_name_and_resume_finishes(smoke_federation, tmp_path):
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    from omnifuse_core.secure_sum import SecureSumError

    class LosesOneInRoundTwo(InProcessGrid):  # the last site goes silent at round 2's collect stage
        collects = 0

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            configs = messages[0].content.config_records.get(RECORD_KEY_CONFIGS) if messages else None
            collect = configs is not None and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS  # read before
            replies = super().send_and_receive(messages, timeout=timeout)  # the site's mod edits it in place
            if collect:
                self.collects += 1
                if self.collects == 2:
                    victim = max(m.metadata.dst_node_id for m in messages)
                    return [r for r, m in zip(replies, messages) if m.metadata.dst_node_id != victim]
            return replies

    run_dir = tmp_path / "run"
    cfg = Config.load("smoke").replace(data_root=str(smoke_federation), run_dir=str(run_dir), min_sites=3,
                                       rounds=2, secure_aggregation=True, secagg_reconstruction_threshold=3)
    grid = LosesOneInRoundTwo(3)
    with pytest.raises(SecureSumError, match="secagg-reconstruction-threshold=3.*resume=true"):
        run_federation(grid, cfg)
    assert grid.collects == 2
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["round"] == 1  # round 1 kept
    run_federation(InProcessGrid(3), cfg, resume=True)  # the sites are back: resume finishes round 2
    m = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in m["rounds"]] == [1, 2]
    assert m["rounds"][1]["secure_sum"]["contributors"] == 3
