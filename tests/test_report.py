"""`write_report`: a tiny centralized run gives every plot that applies; absent parts are notes, never errors."""
import html
import json
import re
import shutil

import pytest
from click.testing import CliRunner

from omnifuse_cli.main import cli
from omnifuse_core.config import Config
from omnifuse_core.models import build_model
from omnifuse_core.report import write_report
from omnifuse_core.weights import get_trainable
from server.checkpoint import Checkpoint, save_checkpoint
from server.run_dir import RunRecorder
from sim.modes import load_sites, run_centralized

SECTIONS = ["overview", "rounds", "availability", "omega", "tla", "imputation", "embedding", "roc", "calibration",
            "survival", "stratification", "privacy", "config", "versions"]


def section(html: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert match, f"section {sid} missing"
    return match.group(1)


def assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', html))


@pytest.fixture(scope="module")
def run(smoke_federation, tmp_path_factory):
    return run_centralized(Config.load("smoke"), smoke_federation, tmp_path_factory.mktemp("rep") / "run")


@pytest.fixture(scope="module")
def report(run, smoke_federation):
    return write_report(run, sites=[smoke_federation]).read_text()


def test_centralized_report_has_every_plot_that_applies(report, run):
    assert_self_contained(report)
    for sid in SECTIONS:
        section(report, sid)
    with_plot = ["rounds", "availability", "omega", "tla", "imputation", "embedding", "roc", "calibration"]
    for sid in with_plot:
        assert "<img" in section(report, sid), sid
    assert report.count("<img") == 10  # rounds has two figures, timing one (seconds per round)
    assert "Kaplan" in section(report, "survival") and 'class="note"' in section(report, "survival")
    assert "<table>" in section(report, "stratification") and "positive rate" in section(report, "stratification")
    assert "trained without differential privacy" in section(report, "privacy")
    assert "task: binary" in section(report, "config") and "hospital_c" in section(report, "availability")


def test_model_card(report, run):
    card = (run / "model_card.md").read_text()
    for text in ("## Data", "hospital_a", "## Metrics per site", "## Fairness of performance across sites",
                 "Trained without DP", "## Intended use", "## Limits", "| ehr | image | text | genomics |"):
        assert text in card, text
    assert re.search(r"auroc ranges from \d\.\d{3} to \d\.\d{3} across 3 sites", card)


def test_report_without_sites_uses_run_records_only(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report.html", "model_card.md"))
    html = write_report(copy).read_text()
    assert_self_contained(html)
    assert "<img" in section(html, "rounds") and "<img" in section(html, "tla")
    assert "recorded by the run" in section(html, "availability")  # final.availability in metrics.json
    for sid in ("roc", "calibration", "embedding"):
        assert "<img" not in section(html, sid) and "--site DIR" in section(html, sid)
    assert html.count("<img") == 5  # the timing section adds seconds per round


def test_federated_records_and_privacy_reports(run, tmp_path):
    copy = tmp_path / "fed"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report.html", "model_card.md"))
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["mode"] = "federated"
    metrics["final"].pop("availability", None)  # the ServerApp records counts per round instead
    for rnd in metrics["rounds"]:  # the ServerApp's layout: per-site train records with counts and trace
        rnd["train"] = {"hospital_a": {"counts": {"ehr": 28, "image": 17, "n": 28, "any": 28},
                                       "trace": {"lazy": ["ehr+image"]}}}
        rnd.pop("trace")
        rnd["sites"]["hospital_a"].update({"impute_cos/ehr": 0.5 + rnd["round"] / 10,
                                           **{f"omega_hist/ehr/{b}": b for b in range(10)}})
    (copy / "metrics.json").write_text(json.dumps(metrics))
    (copy / "privacy").mkdir()
    (copy / "privacy" / "site-hospital_a.json").write_text(json.dumps({
        "site": "hospital_a", "epsilon": 2.5, "delta": 1e-5, "accountant": "prv", "statement": "Plain words.",
        "per_round": [{"round": 1, "epsilon": 1.4}, {"round": 2, "epsilon": 2.5}]}))
    html = write_report(copy).read_text()
    for sid in ("privacy", "tla", "availability", "omega", "imputation"):
        assert "<img" in section(html, sid), sid
    assert "embeddings never leave a site" in section(html, "embedding")
    assert "training-split counts reported by each site" in section(html, "availability")
    assert "per round" in section(html, "imputation")
    card = (copy / "model_card.md").read_text()
    assert "ε = 2.500 at δ = 1e-05" in card and "Plain words." in card


def test_survival_report_has_kaplan_meier_and_logrank(smoke_federation, tmp_path):
    cfg = Config.load("smoke").replace(task="survival")
    sites = load_sites(smoke_federation, cfg)
    model = build_model(sites[0].specs, sites[0].task, cfg)
    rec = RunRecorder(cfg.replace(run_dir=str(tmp_path / "surv")))
    rec.data["mode"] = "centralized"
    rec.record_round({"round": 1, "global": {"c_index": 0.6, "n": 18}, "sites": {"hospital_a": {"c_index": 0.6}}})
    rec.record_final({"global": {"c_index": 0.6, "n": 18}, "sites": {"hospital_a": {"c_index": 0.6, "n": 6}}})
    save_checkpoint(rec.checkpoints, Checkpoint(1, get_trainable(model), state={
        "specs": [s.to_dict() for s in model.specs], "task": model.task_spec.to_dict(), "fusion": cfg.fusion}))
    html = write_report(rec.root, sites=[smoke_federation], clusters=2).read_text()
    surv = section(html, "survival")
    assert "<img" in surv and re.search(r"Log-rank test across groups: χ² = \d+\.\d{3}, dof = 2, p = ", surv)
    strat = section(html, "stratification")
    assert "event rate" in strat and "k-means clusters" in strat
    assert "survival task" in section(html, "roc")


def test_cli_report(run, tmp_path):
    copy = tmp_path / "cli"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report.html", "model_card.md"))
    result = CliRunner().invoke(cli, ["-q", "report", str(copy)])
    assert result.exit_code == 0, result.output
    assert f"report: {(copy / 'report.html').resolve()}" in result.output
    assert (copy / "model_card.md").is_file()


@pytest.mark.skipif(not shutil.which("chromium") and not shutil.which("chromium-browser"),
                    reason="needs a headless Chromium")
@pytest.mark.parametrize("width", [1280, 390])
def test_report_fits_desktop_and_phone_widths(report, tmp_path, width):
    """Headless Chromium lays the report out at a desktop and a phone width: no image, table or section is wider
    than the viewport (the page never scrolls sideways), every section has its "how to read this" line, and a
    screenshot is taken at each width."""
    import subprocess

    probe = ("<script>window.addEventListener('load',()=>{const w=document.documentElement.clientWidth;"
             "const wide=[...document.querySelectorAll('img,table,section,pre,nav')]"
             ".filter(e=>e.getBoundingClientRect().right>w+1).map(e=>e.tagName+'#'+(e.id||e.closest('section')?.id));"
             "document.title='LAYOUT '+JSON.stringify({w,scroll:document.documentElement.scrollWidth,wide});});"
             "</script>")
    page = tmp_path / "report.html"
    page.write_text(report.replace("</body>", probe + "</body>"))
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    common = [chrome, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},2400",
              "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    title = re.search(r"<title>LAYOUT (.*?)</title>", dom)
    assert title, dom[:500]
    layout = json.loads(html.unescape(title.group(1)))
    assert layout["wide"] == [] and layout["scroll"] <= layout["w"], layout
    shot = tmp_path / f"report-{width}.png"
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert report.count("How to read this:") >= len(SECTIONS) - 2
