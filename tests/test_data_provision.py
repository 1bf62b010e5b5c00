"""The data-layer entry point that provisions a synthetic site for a node given no data (issue 26)."""
from __future__ import annotations

from pathlib import Path

from omnifuse_core.data.provision import synthetic_federation


def test_synthetic_federation_is_built_once_and_reused(tmp_path):
    fed = synthetic_federation(1, 2, root=tmp_path)
    assert (fed / "federation.yaml").is_file() and (fed / "hospital_b" / "site.yaml").is_file()
    stamp = (fed / "federation.yaml").stat().st_mtime_ns
    assert synthetic_federation(1, 2, root=tmp_path) == fed
    assert (fed / "federation.yaml").stat().st_mtime_ns == stamp


def test_the_client_no_longer_imports_the_simulator():
    root = Path(__file__).resolve().parent.parent / "client"
    for f in root.glob("*.py"):
        assert "from sim" not in f.read_text() and "import sim" not in f.read_text(), f
