"""Secure aggregation with real processes on 127.0.0.1 (issue 24): `flower-superlink` + 3 `flower-supernode`s run
two secure rounds of configs/smoke.yaml through `flwr run`.

With ``OMNIFUSE_SECAGG_AUDIT_DIR`` the ServerApp writes what it received from each site and each site what it
uploaded before masking. Round 1: the vector the server received from a site is uncorrelated with that site's
upload, while the unmasked aggregate equals the plaintext sum of the uploads within quantization error (and so the
plaintext modality-aware mean: tests/test_secure_sum.py). Round 2: one SuperNode is killed once the first site has
uploaded; SecAgg+ reconstructs around it (2 of 3 shares suffice) and the run completes.
(Secure vs plaintext final metrics on the same seeds: tests/test_secure_federation.py.)
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from sim.deploy import flower_processes, flwr_run, start_superlink, start_supernode, wait_supernodes_online, \
    write_connection

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
STEP = 2 * 8.0 / 2 ** 24  # SecAgg+ quantization step at the default secagg-* settings


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64) - a.mean(), b.astype(np.float64) - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_server_sees_masked_vectors_the_sum_equals_plaintext_and_a_lost_site_is_tolerated(tmp_path):
    from sim.generator import generate_federation

    data = generate_federation("smoke", 3, tmp_path / "data", seed=0)
    sites = sorted(p for p in data.iterdir() if p.is_dir())
    audit, run_dir, victim, events = tmp_path / "audit", tmp_path / "run", sites[-1].name, {}
    stop = threading.Event()

    def chaos() -> None:  # kill the victim's SuperNode in round 2, once the first site has uploaded
        while not stop.is_set():
            if any(audit.glob("sent-*-r2.npy")):
                events["killed"] = procs.kill(f"supernode_{victim}")
                return
            time.sleep(0.05)

    with flower_processes(tmp_path / "flower") as procs:
        procs.env["OMNIFUSE_SECAGG_AUDIT_DIR"] = str(audit)
        port = start_superlink(procs, simulation=False)
        for site in sites:
            start_supernode(procs, site.name, port, {"data-path": str(site),
                                                     "state-dir": str(tmp_path / "state" / site.name)})
        write_connection(procs.env, port)
        wait_supernodes_online(procs, 3)
        watcher = threading.Thread(target=chaos, daemon=True)
        watcher.start()
        try:  # min-sites 2: the exchanges after the kill must not wait for the lost site to come back
            flwr_run(procs, {"config": "smoke", "rounds": 2, "min-sites": 2, "secure-aggregation": True,
                             "round-timeout": 120.0, "run-dir": str(run_dir)}, timeout=900)
        finally:
            stop.set()

    sent = {s.name: np.load(audit / f"sent-{s.name}-r1.npy") for s in sites}
    for name, vector in sent.items():
        received = np.load(audit / f"received-{name}-r1.npy")
        assert received.shape == vector.shape and received.dtype.kind in "iu"
        assert abs(_corr(received, vector)) < 0.05, name  # masked: nothing of the site's update shows
    mean = np.load(audit / "mean-r1.npy")
    assert np.abs(mean - sum(sent.values()) / 3).max() <= STEP  # the unmasked sum is the plaintext sum
    metrics = json.loads((run_dir / "metrics.json").read_text())
    r1, r2 = metrics["rounds"]
    assert r1["secure_sum"]["contributors"] == 3 and not r1["missing"]

    assert events.get("killed"), events
    assert r2["secure_sum"]["contributors"] in (2, 3), r2  # 3: it died after uploading, before unmasking
    if r2["secure_sum"]["contributors"] == 2:
        assert victim in r2["missing"], r2
    assert metrics["final"]["global"]["auroc"] is not None
