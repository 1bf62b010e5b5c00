"""Config: one name per setting, YAML <-> flat run-config round trip, clear errors, docs in sync."""
import subprocess
import sys
from pathlib import Path

import pytest

from omnifuse_core.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["smoke", "smoke-dp", "demo", "demo-dp"])
def test_shipped_configs_load_and_round_trip(name, tmp_path):
    cfg = Config.load(name)
    cfg.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == cfg
    assert Config.from_flat(cfg.to_flat()) == cfg


def test_flower_style_values_are_coerced_and_unknown_keys_rejected():
    cfg = Config.from_flat({"local-epochs": "3", "dp": "true", "lr": "0.01", "modalities": "ehr,image"})
    assert cfg.local_epochs == 3 and cfg.dp is True and cfg.lr == 0.01 and cfg.modality_list == ["ehr", "image"]
    with pytest.raises(ConfigError, match="unknown config key 'local-epoch'"):
        Config.from_flat({"local-epoch": 1})
    assert Config.from_flat({"num-server-rounds": 3}, strict=False) == Config()
    with pytest.raises(ConfigError, match="'task'"):
        Config.from_flat({"task": "regression"})
    with pytest.raises(ConfigError, match="'batch-size'.*cannot read"):
        Config.from_flat({"batch-size": "many"})


def test_configuration_doc_lists_every_key_and_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_doc.py"), "--check"],
                          capture_output=True, text=True)
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for key in Config().to_flat():
        assert f"`{key}`" in doc, f"docs/configuration.md misses {key}; run scripts/gen_config_doc.py"
    assert proc.returncode == 0


def test_every_config_key_is_a_declared_flower_run_config_key():
    import tomllib
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    missing = [k for k in Config().to_flat() if k not in declared]
    assert not missing, f"declare these in [tool.flwr.app.config] (value \"\"): {missing}"
