"""Shared fixtures: one synthetic `smoke` federation per test session (real site folders on disk)."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def smoke_federation(tmp_path_factory) -> Path:
    """`omnifuse synth --preset smoke --sites 3 --seed 0`, generated once per session. Treat it as read-only."""
    from sim.generator import generate_federation
    return generate_federation("smoke", 3, tmp_path_factory.mktemp("smoke") / "fed", seed=0)
