"""Run-config resolution (Flower run config -> Config) and site resolution from node config."""
from __future__ import annotations

from pathlib import Path

import pytest

from client.site_runtime import SiteSetupError, resolve_node_site
from omnifuse_core.config import Config, ConfigError
from server.run_config import resolve_run_config


def test_empty_string_keeps_the_yaml_value_and_overrides_apply(tmp_path):
    base = Config.load("smoke")
    cfg, resume = resolve_run_config({"config": "smoke", "run-dir": str(tmp_path), "rounds": "", "strategy": "median",
                                      "local-epochs": 3, "resume": True, "num-server-rounds": 9})
    assert cfg.rounds == base.rounds and cfg.strategy == "median" and cfg.local_epochs == 3 and resume is True
    assert cfg.embed_dim == base.embed_dim  # everything else from configs/smoke.yaml


@pytest.mark.parametrize("run_dir", ["", "relative/run"])
def test_run_dir_must_be_absolute(run_dir):
    with pytest.raises(ConfigError, match="run-dir"):
        resolve_run_config({"config": "smoke", "run-dir": run_dir})


def test_partition_id_maps_through_federation_yaml(tmp_path):
    (tmp_path / "site_x").mkdir()
    (tmp_path / "site_y").mkdir()
    (tmp_path / "federation.yaml").write_text("sites:\n- site_x\n- site_y\n")
    cfg = Config(data_root=str(tmp_path), run_dir=str(tmp_path / "run"))
    node = resolve_node_site({"partition-id": 1, "num-partitions": 2}, cfg)
    assert node.path == (tmp_path / "site_y").resolve()
    assert node.state_dir == tmp_path / "run" / "site-state" / "site_y"
    with pytest.raises(SiteSetupError, match="num-supernodes"):
        resolve_node_site({"partition-id": 2}, cfg)


def test_deployment_node_config_wins(tmp_path):
    (tmp_path / "h1").mkdir()
    node = resolve_node_site({"data-path": str(tmp_path / "h1"), "state-dir": str(tmp_path / "st"),
                              "device": "cpu", "max-epsilon": 3}, Config())
    assert node.path == (tmp_path / "h1").resolve() and node.state_dir == tmp_path / "st"
    assert node.device == "cpu" and node.max_epsilon == 3.0
    with pytest.raises(SiteSetupError, match="data-path"):
        resolve_node_site({}, Config())
    with pytest.raises(SiteSetupError, match="does not exist"):
        resolve_node_site({"data-path": str(tmp_path / "nope")}, Config())
