"""The report renders offline in headless Chromium: every image loads, no error, nothing fetched from outside.

A test copy of the page gets a strict Content-Security-Policy (only inline styles/scripts and data: images) and a
small inline script that records image loading, errors and policy violations into the DOM, which
``chromium --dump-dom`` prints. Chromium is Debian's ``chromium`` package; the test installs it when missing and
skips only if the installation fails.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from omnifuse_core.config import Config
from omnifuse_core.models import build_model
from omnifuse_core.report import write_report
from omnifuse_core.weights import get_trainable
from server.checkpoint import Checkpoint, save_checkpoint
from server.run_dir import RunRecorder
from sim.modes import load_sites

CHROMIUM = Path("/usr/bin/chromium")
PROBE = """<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:;
 style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push('error: ' + (e.message || (e.target && (e.target.tagName + ' ' + (e.target.alt || '')))));
}, true);
document.addEventListener('securitypolicyviolation', function (e) {
  window.__errors.push('csp: ' + e.blockedURI + ' ' + e.violatedDirective);
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = {images: imgs.length,
             loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
             errors: window.__errors};
  var div = document.createElement('div');
  div.id = 'probe-result';
  div.textContent = JSON.stringify(out);
  document.body.appendChild(div);
});
</script>"""


def ensure_chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and apt-get is not available")
    steps = (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"])
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                              env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if proc.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(cmd)} exited {proc.returncode}: "
                        f"{proc.stderr.strip().splitlines()[-1:] or 'no output'})")
    if not CHROMIUM.exists():
        pytest.skip("apt-get install chromium succeeded but /usr/bin/chromium is missing")
    return CHROMIUM


@pytest.fixture(scope="module")
def report(smoke_federation, tmp_path_factory) -> Path:
    """Report of a run holding an untrained model (rendering is under test, not training) with two rounds."""
    cfg = Config.load("smoke")
    sites = load_sites(smoke_federation, cfg)
    model = build_model(sites[0].specs, sites[0].task, cfg)
    rec = RunRecorder(cfg.replace(run_dir=str(tmp_path_factory.mktemp("browser") / "run")))
    rec.data["mode"] = "centralized"
    for rnd in (1, 2):
        rec.record_round({"round": rnd, "global": {"auroc": 0.5 + rnd / 10, "n": 18},
                          "sites": {s.name: {"auroc": 0.5, "n": 6} for s in sites},
                          "trace": {"pooled": {"lazy": ["ehr" if rnd == 1 else "ehr+image"]}}})
    rec.record_final({"global": {"auroc": 0.7, "n": 18}, "sites": {s.name: {"auroc": 0.7, "n": 6} for s in sites}})
    save_checkpoint(rec.checkpoints, Checkpoint(2, get_trainable(model), state={
        "specs": [s.to_dict() for s in model.specs], "task": model.task_spec.to_dict(), "fusion": cfg.fusion}))
    return write_report(rec.root, sites=[smoke_federation])


def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = ensure_chromium()
    html = report.read_text()
    n_images = html.count("<img")
    assert n_images >= 8
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    cmd = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<div id="probe-result">(.*?)</div>', proc.stdout, re.S)
    assert match, f"the probe did not run; chromium stderr: {proc.stderr[-1500:]}"
    result = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["errors"] == []
    assert result["images"] == n_images and result["loaded"] == n_images


def test_probe_detects_a_broken_image(tmp_path):
    """The check can fail: an external image is blocked (CSP) and does not load."""
    chromium = ensure_chromium()
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    "<img alt='x' src='http://127.0.0.1:9/x.png'></body></html>".replace("<head>", "<head>" + PROBE))
    proc = subprocess.run([str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'p'}",
                           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=180)
    result = json.loads(re.search(r'<div id="probe-result">(.*?)</div>', proc.stdout, re.S).group(1)
                        .replace("&quot;", '"').replace("&amp;", "&"))
    assert result["loaded"] == 0 and result["errors"]
