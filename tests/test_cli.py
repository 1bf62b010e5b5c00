"""Every command has --help with an example; errors are one sentence without a traceback."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from omnifuse_cli.main import cli

COMMANDS = ["synth", "check-site", "train", "demo", "privacy-report", "import-mimic", "predict", "report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output and f"omnifuse {command}" in result.output


def test_top_level_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_bad_config_is_one_sentence_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "omnifuse_cli.main", "train", "--mode", "centralized",
                           "--config", "no-such-config", "--data", str(tmp_path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "config 'no-such-config' not found" in proc.stderr


def test_bad_override_names_the_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "omnifuse_cli.main", "train", "--mode", "local", "--config", "smoke",
                           "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--set", "no-such-key=1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown config key 'no-such-key'" in proc.stderr


@pytest.mark.parametrize("args,config,dp", [([], "demo", False), (["--dp"], "demo-dp", True),
                                             (["--dp", "--config", "smoke"], "smoke", True)])
def test_demo_dp_flag_picks_the_dp_profile(tmp_path, monkeypatch, args, config, dp):
    """`omnifuse demo --dp` trains configs/demo-dp.yaml with dp on (an explicit --config still wins)."""
    import omnifuse_cli.main as main
    import omnifuse_core.report as report
    import sim.generator as generator
    from omnifuse_core.config import Config

    seen = {}
    monkeypatch.setattr(generator, "generate_federation", lambda *a, **k: None)
    monkeypatch.setattr(main, "_run_mode", lambda mode, cfg, data, out: seen.update(cfg=cfg) or tmp_path / "run")
    monkeypatch.setattr(report, "write_report", lambda run_dir, sites: tmp_path / "report.html")
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    expected = Config.load(config)
    assert seen["cfg"].dp is dp and seen["cfg"].embed_dim == expected.embed_dim
    assert seen["cfg"].ehr_encoder == expected.ehr_encoder
