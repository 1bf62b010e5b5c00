"""`flwr run .` with Flower's default local connection in a fresh FLWR_HOME: Flower starts its own local simulation
SuperLink, every virtual node builds its own synthetic site from its partition id, and the run writes its default
absolute run folder, printed at start and end. The local SuperLink the run started is stopped afterwards."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sim.processes import descendants, free_port, marked_processes

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_flwr_run_dot_out_of_the_box(tmp_path):
    home, flwr_home = tmp_path / "home", tmp_path / "flwr_home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="ofr-")  # Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "HOME": str(home), "FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_TMPDIR": ray_tmp}
    try:
        proc = subprocess.run([str(BIN / "flwr"), "run", str(ROOT), "--stream"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=840)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        runs = list((home / ".omnifuse" / "runs").glob("flwr-*"))
        assert len(runs) == 1, out[-3000:]
        run = runs[0]
        assert f"OmniFuse run folder: {run}" in out and f"OmniFuse run finished: {run}" in out
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["final"]["split"] == "test" and len(metrics["final"]["sites"]) >= 2
        assert (home / ".omnifuse" / "synthetic").is_dir()  # each node's own synthetic site
    finally:
        for pid in marked_processes(str(flwr_home).encode()):  # the local SuperLink Flower started, and its children
            for p in [*descendants(pid), pid]:
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        time.sleep(0.5)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not marked_processes(str(flwr_home).encode())
