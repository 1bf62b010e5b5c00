"""The ServerApp round loop against the real ClientApp, in-process (a Grid that delivers messages directly):
run directory contents, resume from a checkpoint, rejection of a bad reply, and exactly what leaves a site."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Context, Message, RecordDict

from grid_fakes import DirectGrid, task_identity  # noqa: F401 (autouse fixture)
from client.app import app as client_app
from omnifuse_core import protocol as P
from omnifuse_core.config import Config
from server.loop import run_federation

pytestmark = pytest.mark.slow


class InProcessGrid(DirectGrid):
    """Delivers each message straight to the ClientApp of a virtual node (partition-id = index)."""

    def __init__(self, n: int, tamper: Optional[Callable[[int, Message], None]] = None) -> None:
        super().__init__(n)
        self.tamper = tamper


    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            reply = client_app(msg, self.nodes[msg.metadata.dst_node_id])
            if self.tamper is not None:
                self.tamper(msg.metadata.dst_node_id, reply)
            replies.append(reply)
        return replies




@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    from sim.generator import generate_federation

    return generate_federation("smoke", 3, tmp_path_factory.mktemp("fed") / "data", seed=0)


def _cfg(root: Path, run_dir: Path, **kw) -> Config:
    return Config.load("smoke").replace(data_root=str(root), run_dir=str(run_dir), min_sites=3, **kw)


def _scripted(root: Path, run_dir: Path, **kw) -> Config:
    """For ScriptedValidation (it edits evaluate replies): validation as its own exchange."""
    return _cfg(root, run_dir, fused_evaluate=False, **kw)


def test_loop_writes_run_dir_and_resumes(smoke_root, tmp_path):
    run_dir = tmp_path / "run"
    run_federation(InProcessGrid(3), _cfg(smoke_root, run_dir, rounds=1))
    first = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in first["rounds"]] == [1]
    assert set(first["rounds"][0]["sites"]) == {"hospital_a", "hospital_b", "hospital_c"}
    assert first["final"]["global"]["n"] == sum(s["n"] for s in first["final"]["sites"].values()) > 0
    assert (run_dir / "checkpoints" / "round-0001.safetensors").exists()
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["round"] == 1
    assert (run_dir / "config.yaml").exists() and (run_dir / "logs" / "server.log").stat().st_size > 0

    run_federation(InProcessGrid(3), _cfg(smoke_root, run_dir, rounds=2), resume=True)
    second = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in second["rounds"]] == [1, 2]
    assert second["rounds"][0] == first["rounds"][0]  # round 1 was not re-run
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["round"] == 2
    counts = second["rounds"][1]["train"]["hospital_c"]["counts"]
    assert counts["n"] >= counts["any"] >= counts["ehr"] and counts["genomics"] == 0  # hospital_c has no genomics


def test_nan_reply_is_rejected_and_left_out(smoke_root, tmp_path):
    def poison(node: int, reply: Message) -> None:
        if node == 101 and reply.metadata.message_type == "train" and reply.has_content():
            arrays = reply.content.array_records[P.ARRAYS]
            name = next(iter(arrays))
            bad = arrays[name].numpy().copy()
            bad.flat[0] = np.nan
            arrays[name] = Array(bad)

    run_dir = tmp_path / "run"
    run_federation(InProcessGrid(3, poison), _cfg(smoke_root, run_dir, rounds=1))
    rnd = json.loads((run_dir / "metrics.json").read_text())["rounds"][0]
    assert list(rnd["rejected"]) == ["hospital_b"] and "non-finite" in rnd["rejected"]["hospital_b"]
    assert set(rnd["train"]) == {"hospital_a", "hospital_c"}
    assert "hospital_b" in (run_dir / "logs" / "server.log").read_text()


def test_only_weights_counts_and_metrics_leave_a_site(smoke_root, tmp_path):
    from client import site_runtime as rt
    from omnifuse_core.models import build_model
    from omnifuse_core.batch import ModalitySpec, TaskSpec
    from omnifuse_core.trainer import set_seed
    from omnifuse_core.weights import get_trainable

    cfg = _cfg(smoke_root, tmp_path / "run")
    grid = InProcessGrid(3)
    node = grid.nodes[100]
    base = {**cfg.to_flat()}
    describe = client_app(Message(RecordDict({P.CONFIG: ConfigRecord(base)}), dst_node_id=100,
                                  message_type=P.QUERY_DESCRIBE), node)
    info = dict(describe.content.config_records[P.INFO])
    set_seed(0)
    model = build_model([ModalitySpec.from_dict(d) for d in json.loads(info[P.SPECS_JSON])],
                        TaskSpec.from_dict(json.loads(info[P.TASK_JSON])), cfg)
    weights = get_trainable(model)
    config = ConfigRecord({**base, P.SPECS_JSON: info[P.SPECS_JSON], P.TASK_JSON: info[P.TASK_JSON],
                           P.SERVER_ROUND: 1})
    from server.strategy import to_record
    reply = client_app(Message(RecordDict({P.ARRAYS: to_record(weights), P.CONFIG: config}), dst_node_id=100,
                               message_type=P.TRAIN), node)
    assert not reply.has_error()
    content = reply.content
    assert set(content.array_records) == {P.ARRAYS} and set(content.metric_records) == {P.METRICS}
    assert set(content.config_records) == {P.INFO}
    # arrays: exactly the trainable parameters, same shapes, float32, packed into one vector + layout (2 objects)
    from omnifuse_core import weights_wire
    from server.strategy import to_numpy

    assert set(content.array_records[P.ARRAYS]) == {weights_wire.PACKED, weights_wire.LAYOUT}
    arrays = to_numpy(content.array_records[P.ARRAYS])
    assert list(arrays) == list(weights)
    assert all(arrays[n].shape == w.shape and arrays[n].dtype == np.float32 for n, w in weights.items())
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert not set(frozen) & set(arrays)
    # metrics: counts, training losses and the step count only
    metrics = dict(content.metric_records[P.METRICS])
    assert all(k.startswith(P.TRAIN_METRIC_PREFIXES) or k == P.STEPS for k in metrics)
    assert set(P.metrics_to_counts(metrics)) == set(cfg.modality_list) | {"any", "n"}
    # info: the site name and the lazy-combination trace, no patient identifiers
    info_out = dict(content.config_records[P.INFO])
    assert set(info_out) == {P.SITE, P.TRACE_JSON}
    assert set(json.loads(info_out[P.TRACE_JSON])) <= set(rt.SHARED_TRACE_KEYS)
    site = rt.load_site_cached(rt.resolve_node_site(node.node_config, cfg).path, cfg, None)
    text = json.dumps(info_out) + json.dumps(metrics)
    leaked = [pid for pid in site.train.patient_ids + site.val.patient_ids if pid in text]
    assert not leaked


class ScriptedValidation:
    """Tamper hook: the k-th round's validation replies report AUROC ``values[k]`` (test replies untouched)."""

    def __init__(self, values: dict[int, float], first_round: int, sites: int = 3) -> None:
        self.values, self.first, self.sites, self.seen = values, first_round, sites, 0

    def __call__(self, node: int, reply: Message) -> None:
        if reply.metadata.message_type != "evaluate" or not reply.has_content():
            return
        rnd = self.first + self.seen // self.sites
        self.seen += 1
        if rnd in self.values:
            reply.content.metric_records[P.METRICS]["auroc"] = self.values[rnd]


def test_best_val_tests_the_best_round_and_keeps_it_across_a_resume(smoke_root, tmp_path):
    from omnifuse_core.predict import load_run_model

    run_dir = tmp_path / "run"
    run_federation(InProcessGrid(3, ScriptedValidation({1: 0.9, 2: 0.5}, 1)),
                   _scripted(smoke_root, run_dir, rounds=2, final_model="best-val"))
    first = json.loads((run_dir / "metrics.json").read_text())
    assert [r["global"]["auroc"] for r in first["rounds"]] == pytest.approx([0.9, 0.5])
    assert first["final"]["model_round"] == 1 and first["final"]["final_model"] == "best-val"
    assert json.loads((run_dir / "checkpoints" / "final.json").read_text())["round"] == 1
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["round"] == 2
    _, _, meta = load_run_model(run_dir)
    assert meta["checkpoint"].endswith("round-0001.safetensors")
    # resume to 3 rounds: round 3 (0.6) does not beat round 1, whose weights come back from disk
    run_federation(InProcessGrid(3, ScriptedValidation({3: 0.6}, 3)),
                   _scripted(smoke_root, run_dir, rounds=3, final_model="best-val"), resume=True)
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert resumed["final"]["model_round"] == 1
    assert json.loads((run_dir / "checkpoints" / "final.json").read_text())["round"] == 1


def test_last_tests_the_last_round(smoke_root, tmp_path):
    run_dir = tmp_path / "run"
    run_federation(InProcessGrid(3, ScriptedValidation({1: 0.9, 2: 0.5}, 1)), _scripted(smoke_root, run_dir, rounds=2))
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert final["model_round"] == 2 and final["final_model"] == "last"
    assert json.loads((run_dir / "checkpoints" / "final.json").read_text())["round"] == 2


def test_early_stopping_ends_the_run_patience_rounds_after_the_best(smoke_root, tmp_path):
    run_dir = tmp_path / "run"
    run_federation(InProcessGrid(3, ScriptedValidation({1: 0.6, 2: 0.8, 3: 0.7, 4: 0.75, 5: 0.9}, 1)),
                   _scripted(smoke_root, run_dir, rounds=6, final_model="best-val", early_stopping=2))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3, 4]  # rounds 3 and 4 did not beat round 2
    assert metrics["final"]["stopped_early"] == 4 and metrics["final"]["model_round"] == 2



def test_fused_evaluation_records_what_a_separate_validation_exchange_records(smoke_root, tmp_path):
    """One exchange per round: each round's validation rides on the next round's train replies (the last round gets
    its own); the run records the same validation and test numbers as with a separate evaluate exchange."""
    sent = {}

    class Counting(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            for m in messages:
                sent[m.metadata.message_type] = sent.get(m.metadata.message_type, 0) + 1
            return super().send_and_receive(messages, timeout=timeout)

    runs = {}
    for fused in (True, False):
        sent.clear()
        run_federation(Counting(3), _cfg(smoke_root, tmp_path / str(fused), rounds=3, fused_evaluate=fused))
        runs[fused] = (json.loads((tmp_path / str(fused) / "metrics.json").read_text()), dict(sent))
    (fused, n_fused), (plain, n_plain) = runs[True], runs[False]
    assert n_fused["train"] == n_plain["train"] == 9
    assert n_fused["evaluate"] == 3 + 3 and n_plain["evaluate"] == 9 + 3  # last round's val + test; every val + test
    for a, b in zip(fused["rounds"], plain["rounds"]):
        assert a["round"] == b["round"] and a["global"]["auroc"] == pytest.approx(b["global"]["auroc"], abs=1e-9)
        assert a["threshold"] == b["threshold"] and set(a["sites"]) == set(b["sites"])
    assert fused["final"]["global"]["auroc"] == pytest.approx(plain["final"]["global"]["auroc"], abs=1e-9)


def test_rounds_record_each_sites_message_timing(smoke_root, tmp_path):
    """metrics.json: per round and site, seconds the train message spent loading, evaluating (fused), training and
    serialising; the last round's own validation exchange and the final test record theirs."""
    run_dir = tmp_path / "run"
    run_federation(InProcessGrid(3), _cfg(smoke_root, run_dir, rounds=2))
    m = json.loads((run_dir / "metrics.json").read_text())
    r1, r2 = m["rounds"]
    sites = {"hospital_a", "hospital_b", "hospital_c"}
    assert set(r1["timing"]) == sites and set(r1["timing"]["hospital_a"]["train"]) == {"load", "train", "serialise"}
    assert set(r2["timing"]["hospital_a"]["train"]) == {"load", "evaluate", "train", "serialise"}  # fused val of r1
    assert set(r2["timing"]["hospital_a"]["evaluate"]) == {"load", "evaluate"}  # the last model's own validation
    assert all(v >= 0 for t in r2["timing"].values() for msg in t.values() for v in msg.values())
    assert set(m["final"]["timing"]) == sites
    assert not any(k.startswith("time.") for k in r1["global"]) and "time.load" not in m["final"]["global"]


def test_tracking_writes_the_recorded_rounds_as_tensorboard_scalars(smoke_root, tmp_path):
    from test_tracking import read_scalars

    from omnifuse_core.tracking import record_scalars

    run_dir = tmp_path / "run"
    run_federation(InProcessGrid(3), _cfg(smoke_root, run_dir, rounds=2, tracking="tensorboard"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    events = read_scalars(run_dir / "tensorboard")
    expected = {(tag, step): value for tag, step, value in record_scalars(metrics)}
    assert events.keys() == expected.keys()
    assert all(events[k] == pytest.approx(v, rel=1e-6, abs=1e-9) for k, v in expected.items())
    assert {("val/auroc", 1), ("val/auroc", 2), ("test/auroc", 2), ("train/loss/hospital_a", 2)} <= events.keys()
