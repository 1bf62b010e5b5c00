"""`omnifuse supernode`: checks the site, then execs flower-supernode with the node config a hospital needs; a real
SuperLink sees the node come online."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from omnifuse_cli.main import cli

BIN = Path(sys.executable).parent


def test_dry_run_checks_the_site_and_prints_the_flower_command(smoke_federation, tmp_path):
    site = smoke_federation / "hospital_a"
    result = CliRunner().invoke(cli, ["supernode", "--data", str(site), "--state", str(tmp_path / "state"),
                                      "--superlink", "127.0.0.1:9092", "--insecure", "--max-epsilon", "8",
                                      "--config", "smoke", "--dry-run"])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("starting: "))
    assert "flower-supernode --superlink 127.0.0.1:9092 --isolation subprocess --node-config" in line
    assert f'data-path="{site.resolve()}"' in line and f'state-dir="{(tmp_path / "state").resolve()}"' in line
    assert "max-epsilon=8.0" in line and line.rstrip().endswith("--insecure")
    assert (tmp_path / "state").is_dir()


@pytest.mark.parametrize("dont_write", ["1", ""])
def test_a_bytecode_free_environment_is_pointed_out(smoke_federation, tmp_path, monkeypatch, dont_write):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", dont_write)
    result = CliRunner().invoke(cli, ["supernode", "--data", str(smoke_federation / "hospital_a"), "--state",
                                      str(tmp_path / "state"), "--superlink", "127.0.0.1:9092", "--insecure",
                                      "--config", "smoke", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert ("PYTHONDONTWRITEBYTECODE is set" in result.output) == bool(dont_write)


def test_bad_site_or_missing_tls_choice_stops_before_flower(smoke_federation, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(smoke_federation / "hospital_a", bad)
    (bad / "cohort.csv").write_text("patient_id,split\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["supernode", "--data", str(bad), "--state", str(tmp_path / "s"), "--superlink",
                                 "127.0.0.1:9092", "--insecure", "--dry-run"])
    assert result.exit_code != 0 and "has problems" in result.output and "starting:" not in result.output
    result = runner.invoke(cli, ["supernode", "--data", str(smoke_federation / "hospital_a"), "--state",
                                 str(tmp_path / "s"), "--superlink", "127.0.0.1:9092", "--dry-run"])
    assert result.exit_code != 0 and "--root-certificates" in result.output


@pytest.mark.slow
def test_the_supernode_joins_a_real_superlink(smoke_federation, tmp_path):
    from sim.deploy import list_supernodes, start_superlink, wait_supernodes_online, write_connection
    from sim.processes import flower_processes, free_port

    with flower_processes(tmp_path / "flower") as procs:
        port = start_superlink(procs, simulation=False)
        write_connection(procs.env, port)
        env = dict(procs.env)
        env["FLWR_HOME"] = str(tmp_path / "flwr_home_node")
        procs.start("omnifuse_supernode", [str(BIN / "omnifuse"), "supernode", "--data",
                                           str(smoke_federation / "hospital_a"), "--state", str(tmp_path / "state"),
                                           "--superlink", f"127.0.0.1:{port}", "--insecure", "--port", str(free_port())],
                   env)
        nodes = wait_supernodes_online(procs, 1, timeout=120)
        assert len(nodes) == 1 and list_supernodes(procs)
