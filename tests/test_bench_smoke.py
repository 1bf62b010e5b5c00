"""Every benchmark script runs in a small mode: B1–B4, B6, B7 with ``--quick`` on the ``smoke`` preset (one
subprocess per script, sharing one generated federation), B5 with ``--mode smoke``, the memory benchmark at 60
patients and B0 at 1 seed x 1 epoch; each writes a JSON with the expected rows and finite numbers. Plus the shared
statistics and the B3 masking. No timing assertions."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def work(tmp_path_factory, smoke_federation) -> Path:
    """A bench work folder holding the session's smoke federation where the scripts look for it."""
    w = tmp_path_factory.mktemp("bench")
    shutil.copytree(smoke_federation, w / "smoke-3-0")
    return w


def run_script(name: str, work: Path, *extra: str) -> tuple[dict, str]:
    out = work / f"{name}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", "--threads", "1",
                           "--work", str(work), "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def is_num(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_fusion_comparison_quick(work):
    res, stdout = run_script("fusion_comparison", work)
    assert res["mode"] == "centralized" and res["preset"] == "smoke" and res["seeds"] == [0]
    assert set(res["table"]) == {"all"} and set(res["table"]["all"]) == {"concat", "omnifuse"}
    for cell in res["table"]["all"].values():
        assert is_num(cell["auroc"]["mean"]) and 0.0 <= cell["auroc"]["mean"] <= 1.0
    assert res["table"]["all"]["omnifuse"]["vs_concat"]["pairs"] == 1
    assert is_num(res["dominant"]["auroc"]["mean"])
    assert res["targets"]["omnifuse_vs_concat[all]"]["met"] in (True, False)
    assert "| omnifuse |" in stdout and "Targets:" in stdout


def test_ablation_quick(work):
    res, stdout = run_script("ablation", work)
    assert res["rows"] == ["a", "f"]
    assert res["table"]["f"]["overrides"] == {"use_dwfuse": False, "use_tla": False, "use_forward": False,
                                              "use_backward": False}
    assert all(is_num(res["table"][r]["auroc"]["mean"]) for r in ("a", "f"))
    assert is_num(res["targets"]["row_f"]["value"]) and "full OmniFuse" in stdout


def test_missing_sweep_quick(work):
    res, _ = run_script("missing_sweep", work)
    assert res["rates"] == [0.0, 0.9] and res["variants"] == ["imputation", "no_imputation"]
    assert res["hidden_modalities"] == ["image", "text", "genomics"]
    for v in res["variants"]:
        assert all(is_num(res["table"][v][r]["mean"]) for r in ("0", "0.9"))
    frac = res["missing_fraction"]
    assert frac["0"]["ehr"] == frac["0.9"]["ehr"]  # the dominant modality is never hidden
    assert all(frac["0.9"][m] >= 0.9 > frac["0"][m] for m in ("image", "text"))
    assert is_num(res["drop"]["imputation"]["mean_diff"]) and "imputation_drop" in res["targets"]


def test_speed_quick(work):
    res, stdout = run_script("speed", work)
    expected = {"dp_step_over_nondp", "dp_step_over_default_nondp", "dp_compatible_over_default_step", "omnifuse_step_over_concat", "omnifuse_epoch_over_concat", "tla_mining_share",
                "text_first_over_later_load", "upload_over_param_bytes"}
    assert set(res["ratios"]) == expected and all(is_num(v) and v > 0 for v in res["ratios"].values())
    assert res["walls"] is None and res["targets"]["fl_wall"]["met"] is None  # --quick skips the federated run
    assert 0 < res["ratios"]["tla_mining_share"] < 1
    pay = res["payload"]
    assert pay["param_bytes"] == 4 * pay["parameters"] and pay["download_per_round_bytes"] == 2 * pay["array_record_bytes"]
    assert pay["param_bytes"] < pay["array_record_bytes"] < 1.2 * pay["param_bytes"]
    assert res["steps"]["omnifuse_dp"]["steps"] > 0 and res["text"]["texts"] > 0
    if res["device"] == "cpu":
        assert res["gpu"] == "no GPU on this machine" and "no GPU on this machine" in stdout


def test_scale_quick(work):
    res, stdout = run_script("scale", work)
    assert res["site_counts"] == [2, 3] and set(res["results"]) == {"2", "3"}
    assert [res["results"][k]["patients"] for k in ("2", "3")] == [80, 120]  # smoke sites have 40 patients
    for r in res["results"].values():
        assert is_num(r["site_round_s"]) and r["site_round_s"] > 0 and r["peak_rss_mb"] > 0
        assert len(r["round_s"]) == 1
    assert "| 3 | 120 |" in stdout


def test_scale_flower_quick(work):
    """B7 through Flower's simulation runtime: 2 generated smoke sites, 1 round; the memory sampler sees the
    Flower processes (SuperLink, simulation, Ray actors), so the peak exceeds one Python process's import cost."""
    res, stdout = run_script("scale_flower", work)
    assert res["runtimes"] == ["simulation"] and res["site_counts"] == [2] and len(res["results"]) == 1
    r = res["results"][0]
    assert len(r["round_seconds"]) == 1 and is_num(r["s_per_site_round"]) and r["s_per_site_round"] > 0
    assert r["peak_tree_rss_mb"] > 500 and is_num(r["auroc"])
    assert "| simulation | 2 |" in stdout


def test_statistics_helpers():
    from scipy import stats

    from bench.stats import mean_std, paired_test, target

    ms = mean_std([1.0, 2.0, 3.0, float("nan"), None])
    assert (ms["mean"], ms["std"], ms["n"]) == (2.0, 1.0, 3)
    a, b = [0.8, 0.7, 0.9, 0.85], [0.7, 0.69, 0.8, 0.8]
    t = paired_test(a, b)
    assert t["pairs"] == 4 and t["mean_diff"] == pytest.approx(0.065)
    assert t["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert paired_test([0.5], [0.4])["t_p"] is None
    assert target("x", 1.1, 1.2, "<=")["met"] is True and target("x", 0.0, 0.0, ">")["met"] is False
    assert target("x", None, 1.0)["met"] is None


def toy_sites(n_sites: int = 2) -> list:
    """In-memory sites of the toy cohort (no files), shaped like loaded sites."""
    from omnifuse_core.data.site import SiteData
    from omnifuse_core.toy import TOY_SPECS, make_toy_dataset, toy_task

    sites = []
    for i in range(n_sites):
        ds = make_toy_dataset(60, seed=i)
        parts = [ds.subset(range(0, 40)), ds.subset(range(40, 50)), ds.subset(range(50, 60))]
        sites.append(SiteData(f"toy_{i}", Path("."), list(TOY_SPECS), toy_task(), *parts))
    return sites


def test_missing_masks_are_nested_and_zeroed():
    from bench.missing_sweep import draws, mask_sites, missing_fraction

    sites = toy_sites()
    before = [float(s.train.inputs["image"].abs().sum()) for s in sites]
    u = draws(sites, seed=3)
    half, most = mask_sites(sites, u, 0.5, ["image"]), mask_sites(sites, u, 0.9, ["image"])
    for s, h, m in zip(sites, half, most):
        for k in ("train", "val", "test"):
            orig, ph, pm = s.splits[k].present, h.splits[k].present, m.splits[k].present
            assert bool((ph[:, 0] == orig[:, 0]).all()) and bool((pm[:, 2:] == orig[:, 2:]).all())
            assert not (pm & ~ph).any() and not (ph & ~orig).any()  # nested, and nothing is made present
            hidden = orig[:, 1] & ~pm[:, 1]
            assert float(m.splits[k].inputs["image"][hidden].abs().sum()) == 0.0
    total = sum(int(s.train.present[:, 1].sum()) for s in sites)
    kept = sum(int(m.train.present[:, 1].sum()) for m in most)
    assert 0 <= kept < 0.3 * total  # about 10 % of the present images are kept at rate 0.9
    assert missing_fraction(most)["image"] > missing_fraction(sites)["image"]
    assert [float(s.train.inputs["image"].abs().sum()) for s in sites] == before  # the originals are untouched


def test_federation_value_quick(work):
    """B4 on smoke: centralized, local-only and federated (a real Flower simulation) OmniFuse, beside the oracle."""
    res, stdout = run_script("federation_value", work)
    assert res["runs"] == ["centralized/omnifuse", "local/omnifuse", "federated/omnifuse"] and res["seeds"] == [0]
    sites = sorted(res["oracle"]["sites"])
    assert sites == ["hospital_a", "hospital_b", "hospital_c"] and 0.5 < res["oracle"]["global"] <= 1.0
    for name in res["runs"]:
        summary = res["summary"][name]
        assert is_num(summary["global"]["mean"]) and 0.0 <= summary["global"]["mean"] <= 1.0
        assert sorted(summary["sites"]) == sites
    assert {"federated_vs_centralized", "federated_vs_oracle"} <= set(res["targets"])
    assert {f"federated_vs_local[{s}]" for s in sites} <= set(res["targets"])
    assert "| oracle (observed modalities) |" in stdout and "Targets:" in stdout


def test_dp_utility_smoke(tmp_path):
    """B5 in its smoke mode: one DP run (epsilon 8, spent within the target) and one non-DP run, each with a test
    AUROC and a membership-inference AUC."""
    out = tmp_path / "dp_utility.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "dp_utility.py"), "--mode", "smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "smoke" and res["preset"] == "smoke" and set(res["table"]) == {"8", "inf"}
    dp_run, plain = res["runs"]
    assert dp_run["epsilon_target"] == 8.0 and 0 < dp_run["epsilon_spent"] <= 8.0 + 1e-6
    assert dp_run["noise_multiplier"] > 0 and plain["epsilon_spent"] is None and plain["noise_multiplier"] == 0.0
    for run in res["runs"]:
        assert 0.0 <= run["test_auroc"] <= 1.0 and 0.0 <= run["mia_auc"] <= 1.0 and run["steps"] > 0


def _run_plain(script: str, *args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_scale_memory_small(tmp_path):
    """The 10,000-patient memory benchmark at 60 patients: every stage is timed and its peak RSS recorded."""
    out = tmp_path / "mem.json"
    _run_plain("scale_memory.py", "--patients", "60", "--out", str(out))
    res = json.loads(out.read_text())
    assert res["patients"] == 60 and 0 < res["train_patients"] < 60
    peaks = [res["rss_after_generate_mb"], res["rss_after_load_mb"], res["rss_after_train_mb"]]
    assert peaks == sorted(peaks) and peaks[0] > 0  # a running peak never decreases
    assert all(is_num(res[k]) for k in ("generate_s", "load_s", "train_s"))


def test_toy_fusion_small(tmp_path):
    """B0 at 1 seed x 1 epoch on a small toy cohort: an AUROC summary for every compared model."""
    out = tmp_path / "toy.json"
    _run_plain("toy_fusion.py", "--seeds", "1", "--epochs", "1", "--n", "200", "--out", str(out))
    res = json.loads(out.read_text())
    assert res["epochs"] == 1 and res["n"] == 200
    assert {"concat", "omnifuse", "ehr_only"} <= set(res["auroc"])
    for summary in res["auroc"].values():
        assert len(summary["runs"]) == 1 and all(is_num(v) and 0.0 <= v <= 1.0 for v in summary["runs"])
        assert summary["mean"] == pytest.approx(summary["runs"][0])


def test_reuse_keeps_only_a_finished_run_of_the_same_config(tmp_path):
    """``--reuse``: a run folder counts only when its config.yaml matches the run's config (runner-filled keys
    aside, and those name the same data and folder) and its metrics.json has a final AUROC."""
    from bench.common import finished_run
    from omnifuse_core.config import Config

    data, out = tmp_path / "fed", tmp_path / "run"
    out.mkdir()
    cfg = Config.load("smoke").replace(seed=3)
    assert finished_run(cfg, data, out) is None  # nothing there
    cfg.replace(data_root=str(data), run_dir=str(out), min_sites=3).save(out / "config.yaml")
    (out / "metrics.json").write_text(json.dumps({"final": {}}))
    assert finished_run(cfg, data, out) is None  # not finished
    (out / "metrics.json").write_text(json.dumps({"final": {"global": {"auroc": 0.7}, "sites": {}}}))
    assert finished_run(cfg, data, out)["final"]["global"]["auroc"] == 0.7
    assert finished_run(cfg.replace(seed=4), data, out) is None  # another seed
    assert finished_run(cfg, tmp_path / "other", out) is None  # other data
    (out / "config.yaml").write_text("not: [valid")
    assert finished_run(cfg, data, out) is None  # unreadable: re-run, never crash
