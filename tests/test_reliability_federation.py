"""Faults in a federated run, in-process (the real ServerApp loop and ClientApp; a Grid that can lose replies or
crash): a site that drops out of a round is recorded as missing and rejoins later; a server stopped after round k
resumes to the same final metrics; a resumed DP run does not re-run (and re-charge) a recorded round."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from grid_fakes import DirectGrid, task_identity  # noqa: F401 (autouse fixture)
from client.app import app as client_app
from omnifuse_core import protocol as P
from omnifuse_core.config import Config
from server.loop import run_federation

pytestmark = pytest.mark.slow


class ServerCrash(RuntimeError):
    """Stands for the ServerApp process dying."""


class FaultyGrid(DirectGrid):
    """Delivers messages straight to the ClientApp of virtual nodes 100.. (partition-id = index).

    ``fault(kind, rnd, node)`` decides per message: None (deliver), ``"drop"`` (no reply: the node died) or
    ``"unavailable"`` (the SuperLink's own "Node Unavailable" error reply, sent from the SuperLink's node id, as
    for a node that missed its heartbeats) or ``"crash"`` (raise :class:`ServerCrash` before anything of this batch
    is delivered). ``rnd`` counts the train
    batches sent so far (setup queries: 0; the train batch of round r and its evaluation: r).
    """

    def __init__(self, n: int, fault: Optional[Callable[[str, int, int], Optional[str]]] = None,
                 node_config: Optional[dict] = None) -> None:
        super().__init__(n, node_config=node_config)
        self.fault = fault or (lambda kind, rnd, node: None)
        self.rnd = 0


    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == P.TRAIN:
            self.rnd += 1
        actions = [self.fault(m.metadata.message_type, self.rnd, m.metadata.dst_node_id) for m in messages]
        if "crash" in actions:
            raise ServerCrash(f"server stopped in round {self.rnd}")
        for m in messages:  # as Flower's Grid does when it pushes a message
            m.metadata.__dict__["_message_id"] = m.object_id
        return [create_message_error_unavailable_res_message(m.metadata, "node_unavail") if a == "unavailable"
                else client_app(m, self.nodes[m.metadata.dst_node_id])
                for m, a in zip(messages, actions) if a != "drop"]




@pytest.fixture(scope="module")
def fed_root(tmp_path_factory) -> Path:
    from sim.generator import generate_federation

    return generate_federation("smoke", 3, tmp_path_factory.mktemp("relfed") / "data", seed=0)


def _cfg(root: Path, run_dir: Path, name: str = "smoke", **kw) -> Config:
    return Config.load(name).replace(data_root=str(root), run_dir=str(run_dir), **kw)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_site_drops_out_of_one_round_and_rejoins(fed_root, tmp_path):
    """hospital_b (node 101) dies during round 1 (no train or evaluate reply) and is back for round 2."""
    def fault(kind, rnd, node):
        return "drop" if node == 101 and rnd == 1 and kind in (P.TRAIN, P.EVALUATE) else None

    run_dir = tmp_path / "run"
    run_federation(FaultyGrid(3, fault), _cfg(fed_root, run_dir, rounds=2, min_sites=2, min_train_replies=2,
                                              modalities="ehr,genomics"))
    m = _metrics(run_dir)
    r1, r2 = m["rounds"]
    everyone = {"hospital_a", "hospital_b", "hospital_c"}
    assert set(r1["train"]) == {"hospital_a", "hospital_c"}
    assert list(r1["missing"]) == ["hospital_b"] and "no reply" in r1["missing"]["hospital_b"]
    # fused evaluation: round 1's model is validated with round 2's train exchange, where hospital_b is back
    assert set(r1["sites"]) == everyone
    assert set(r2["train"]) == everyone and r2["missing"] == {}  # it rejoined and trained
    assert r2["train"]["hospital_b"]["counts"]["n"] > 0
    assert set(m["final"]["sites"]) == everyone
    log = (run_dir / "logs" / "server.log").read_text()
    assert "round 1: no update from site(s) 'hospital_b' (no reply" in log
    _assert_no_patient_ids(fed_root, run_dir)


def test_node_unavailable_error_from_the_superlink_is_charged_to_that_site(fed_root, tmp_path):
    """Flower's SuperLink answers for a dead node itself (source = the SuperLink's id); the reply is traced back to
    the node it was sent to, so metadata names the site, not 'node-1', and the site is not also 'no reply'."""
    def fault(kind, rnd, node):
        return "unavailable" if node == 102 and rnd == 1 and kind in (P.TRAIN, P.EVALUATE) else None

    run_dir = tmp_path / "run"
    run_federation(FaultyGrid(3, fault), _cfg(fed_root, run_dir, rounds=2, min_sites=2, min_train_replies=2,
                                              modalities="ehr,genomics"))
    r1, r2 = _metrics(run_dir)["rounds"]
    assert list(r1["missing"]) == ["hospital_c"] and "Node Unavailable" in r1["missing"]["hospital_c"]
    assert list(r1["rejected"]) == ["hospital_c"]
    assert set(r1["train"]) == {"hospital_a", "hospital_b"} and r2["missing"] == {}
    assert "node-1" not in (run_dir / "logs" / "server.log").read_text()


def _assert_no_patient_ids(fed_root: Path, run_dir: Path) -> None:
    """No patient identifier of any site appears in any file of the run directory (metrics, checkpoints, logs --
    in-process the server log also captures the sites' log lines -- privacy reports, site state)."""
    import pandas as pd

    ids = [str(i) for site in sorted(p for p in fed_root.iterdir() if p.is_dir())
           for i in pd.read_csv(site / "cohort.csv", dtype=str)["patient_id"]]
    assert len(ids) > 50 and all(len(i) > 8 for i in ids)  # distinctive ids, e.g. hospital_a-00007
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    assert any(f.suffix == ".safetensors" for f in files) and any(f.name == "server.log" for f in files)
    for f in files:
        blob = f.read_bytes()
        leaked = [i for i in ids if i.encode() in blob]
        assert not leaked, f"{f} contains patient ids {leaked[:3]}"


def test_round_with_too_few_updates_keeps_the_model(fed_root, tmp_path):
    """min-train-replies=3 and one site silent in round 1: round 1 is not aggregated (weights unchanged)."""
    from safetensors.numpy import load_file

    def fault(kind, rnd, node):
        return "drop" if node == 102 and rnd == 1 and kind == P.TRAIN else None

    run_dir = tmp_path / "run"
    cfg = _cfg(fed_root, run_dir, rounds=1, min_sites=2, min_train_replies=3, modalities="ehr,genomics")
    run_federation(FaultyGrid(3, fault), cfg)
    r1 = _metrics(run_dir)["rounds"][0]
    assert list(r1["missing"]) == ["hospital_c"]
    from server.setup import initial_model
    ck = json.loads((run_dir / "checkpoints" / "round-0001.json").read_text())
    init, _, _ = initial_model(cfg, json.dumps(ck["specs"]), json.dumps(ck["task"]))
    saved = load_file(str(run_dir / "checkpoints" / "round-0001.safetensors"))
    assert all(np.array_equal(saved[n], w) for n, w in init.items())


def test_resume_after_server_stop_matches_uninterrupted_run(fed_root, tmp_path):
    """Stop the server when round 2 starts; resume from the run directory; final AUROC within 0.005 of an
    uninterrupted run (the loop is deterministic, so the final weights agree as well)."""
    from safetensors.numpy import load_file

    kw = dict(rounds=2, min_sites=3, modalities="ehr,genomics")
    full = tmp_path / "full"
    run_federation(FaultyGrid(3), _cfg(fed_root, full, **kw))
    part = tmp_path / "part"
    with pytest.raises(ServerCrash):
        run_federation(FaultyGrid(3, lambda kind, rnd, node: "crash" if rnd == 2 and kind == P.TRAIN else None),
                       _cfg(fed_root, part, **kw))
    assert json.loads((part / "checkpoints" / "latest.json").read_text())["round"] == 1
    assert _metrics(part)["final"] == {}
    run_federation(FaultyGrid(3), _cfg(fed_root, part, **kw), resume=True)
    a, b = _metrics(full), _metrics(part)
    assert [r["round"] for r in b["rounds"]] == [1, 2]
    head = a["headline"]
    assert abs(a["final"]["global"][head] - b["final"]["global"][head]) <= 0.005
    wa = load_file(str(full / "checkpoints" / "round-0002.safetensors"))
    wb = load_file(str(part / "checkpoints" / "round-0002.safetensors"))
    assert max(float(np.abs(wa[n] - wb[n]).max()) for n in wa) < 1e-5


def _ledger_rounds(state_root: Path) -> dict[str, list]:
    """``site -> [round of every DP-SGD training event]`` read straight from each site's ledger files."""
    out: dict[str, list] = {}
    for f in sorted(state_root.glob("*/privacy-ledger/*.jsonl")):
        site = f.parent.parent.name
        for line in f.read_text().splitlines():
            ev = json.loads(line)
            ev = ev.get("event", ev)
            if isinstance(ev, dict) and "round" in ev and ev.get("steps") is not None:
                out.setdefault(site, []).append(ev["round"])
    return out


def test_resumed_dp_run_does_not_rerun_a_recorded_round(fed_root, tmp_path):
    """Under DP: server stops when round 2 starts, resumes; every site's ledger holds rounds [1, 2] exactly once and
    metrics.json reports the ledger's epsilon."""
    pytest.importorskip("client.site_privacy")
    kw = dict(rounds=2, min_sites=3, modalities="ehr,genomics")
    run_dir = tmp_path / "run"
    with pytest.raises(ServerCrash):
        run_federation(FaultyGrid(3, lambda kind, rnd, node: "crash" if rnd == 2 and kind == P.TRAIN else None),
                       _cfg(fed_root, run_dir, "smoke-dp", **kw))
    assert _ledger_rounds(run_dir / "site-state") == {s: [1] for s in ("hospital_a", "hospital_b", "hospital_c")}
    run_federation(FaultyGrid(3), _cfg(fed_root, run_dir, "smoke-dp", **kw), resume=True)
    ledger = _ledger_rounds(run_dir / "site-state")
    assert ledger == {s: [1, 2] for s in ("hospital_a", "hospital_b", "hospital_c")}
    m = _metrics(run_dir)
    for site in ledger:
        eps = m["privacy"][site]["epsilon"]
        assert eps == m["rounds"][1]["train"][site].get("epsilon", eps) and eps > 0
