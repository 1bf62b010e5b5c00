"""Every command has --help with an example; errors are one sentence without a traceback."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from omnifuse_cli.main import cli

COMMANDS = ["synth", "check-site", "train", "cv", "supernode", "demo", "privacy-report", "import-mimic", "predict", "report"]


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
    proc = subprocess.run([sys.executable, "-m", "omnifuse_cli.main", "train", "--no-report", "--mode", "centralized",
                           "--config", "no-such-config", "--data", str(tmp_path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "config 'no-such-config' not found" in proc.stderr


def test_bad_override_names_the_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "omnifuse_cli.main", "train", "--no-report", "--mode", "local", "--config", "smoke",
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


@pytest.mark.parametrize("flag", [[], ["--no-report"]])
def test_train_writes_the_report_and_model_card_unless_told_not_to(tmp_path, monkeypatch, flag):
    import omnifuse_cli.main as main
    import omnifuse_core.report as report

    written = []
    monkeypatch.setattr(main, "_run_mode", lambda mode, cfg, data, out: tmp_path / "run")
    monkeypatch.setattr(report, "write_report", lambda run_dir, sites: written.append((run_dir, sites)) or (
        tmp_path / "run" / "report.html"))
    result = CliRunner().invoke(cli, ["train", *flag, "--mode", "centralized", "--data", str(tmp_path / "d"),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    if flag:
        assert not written and "report:" not in result.output
    else:
        assert written == [(tmp_path / "run", [tmp_path / "d"])]
        assert f"report: {(tmp_path / 'run' / 'report.html').resolve()}" in result.output
        assert f"model card: {(tmp_path / 'run' / 'model_card.md').resolve()}" in result.output


def _unsplit_site(smoke_federation, tmp_path):
    """A copy of a smoke site without its split column: patients are split at random with split-seed."""
    import shutil

    import yaml

    site = tmp_path / "site"
    shutil.copytree(smoke_federation / "hospital_a", site)
    desc = yaml.safe_load((site / "site.yaml").read_text())
    desc["split-column"] = None  # no split column: a seeded random split
    desc["ignore-columns"] = ["split"]
    (site / "site.yaml").write_text(yaml.safe_dump(desc))
    return site


def test_check_site_takes_the_runs_config_and_overrides(smoke_federation, tmp_path):
    """check-site --config/--set sees the run's split: split-seed changes the split it reports, seed does not."""
    site = str(_unsplit_site(smoke_federation, tmp_path))

    def report(*args):
        result = CliRunner().invoke(cli, ["check-site", site, "--config", "smoke", *args])
        assert result.exit_code == 0, result.output
        return result.output

    base = report()
    assert report("--set", "seed=7") == base
    assert report("--set", "val-fraction=0.4") != base  # the run's split fractions, not the defaults
    bad = CliRunner().invoke(cli, ["check-site", site, "--set", "no-such-key=1"])
    assert bad.exit_code != 0 and "no-such-key" in (bad.output + str(bad.exception))


def test_split_seed_moves_patients_and_seed_does_not(smoke_federation, tmp_path):
    from omnifuse_core.config import Config
    from omnifuse_core.data.site import load_site

    site = _unsplit_site(smoke_federation, tmp_path)
    ids = lambda cfg: sorted(load_site(site, cfg).test.patient_ids)  # noqa: E731
    base = Config.load("smoke")
    assert ids(base.replace(seed=5)) == ids(base)
    assert ids(base.replace(split_seed=5)) != ids(base)
