"""Every benchmark script runs in a small mode: B1–B4, B6, B7 with ``--quick`` on the ``smoke`` preset (one
subprocess per script, sharing one generated federation), B5 with ``--mode smoke``, the memory benchmark at 60
patients and B0 at 1 seed x 1 epoch; each writes a JSON with the expected rows and finite numbers. B2 runs
centralized and federated (the latter with flwr, opacus and dp_accounting unimportable), and with ``--jobs 2``
(identical to ``--jobs 1``). Plus the shared statistics, the paired bootstrap, the B3 masking, and the in-process
federated loop against a Flower simulation. No timing assertions."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
from grid_fakes import task_identity  # noqa: E402,F401  (fixture: messages built outside a Flower runtime)
sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def work(tmp_path_factory, smoke_federation) -> Path:
    """A bench work folder holding the session's smoke federation where the scripts look for it."""
    w = tmp_path_factory.mktemp("bench")
    shutil.copytree(smoke_federation, w / "smoke-3-0")
    return w


# runs a script with flwr, opacus and dp_accounting unimportable (the GPU benchmark machine has none of them)
BLOCKED = ("import runpy, sys\n"
           "class Blocker:\n"
           "    def find_spec(self, name, path=None, target=None):\n"
           "        if name.split('.')[0] in ('flwr', 'opacus', 'dp_accounting'):\n"
           "            raise ImportError(f'{name} is blocked in this test')\n"
           "sys.meta_path.insert(0, Blocker())\n"
           "script = sys.argv[1]\n"
           "sys.argv = sys.argv[1:]\n"
           "runpy.run_path(script, run_name='__main__')\n")


def run_script(name: str, work: Path, *extra: str, out_name: str = "", blocked: bool = False) -> tuple[dict, str]:
    out = work / f"{out_name or name}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, *(["-c", BLOCKED] if blocked else []), str(ROOT / "bench" / f"{name}.py"), "--quick",
           "--threads", "1", "--work", str(work), "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def is_num(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def has_ci(c: dict) -> bool:
    """A comparison with a paired mean difference and a finite bootstrap interval around it."""
    return is_num(c["mean_diff"]) and is_num(c["lo"]) and is_num(c["hi"]) and c["lo"] <= c["hi"] \
        and c["bootstrap"]["reps"] == 2000


def test_fusion_comparison_quick(work):
    res, stdout = run_script("fusion_comparison", work, "--fusions", "concat,moddrop_matched,omnifuse,omnifuse_hfp")
    assert res["mode"] == "centralized" and res["preset"] == "smoke" and res["seeds"] == [0]
    assert res["data_seeds"] == [0] and set(res["table"]) == {"all"}
    cells = {k: v for k, v in res["table"]["all"].items() if k != "_extra"}
    assert set(cells) == {"concat", "moddrop_matched", "omnifuse", "omnifuse_hfp"}
    for cell in cells.values():
        assert is_num(cell["auroc"]["mean"]) and 0.0 <= cell["auroc"]["mean"] <= 1.0
    assert cells["omnifuse_hfp"]["overrides"] == {"fusion": "omnifuse", "hide_for_prediction": True}
    assert cells["moddrop_matched"]["overrides"]["moddrop_prob"] == pytest.approx(
        res["config_resolved"]["hide-prob"] / 2)
    assert cells["omnifuse"]["vs_concat"]["pairs"] == 1 and has_ci(cells["omnifuse"]["vs_concat"])
    assert set(res["table"]["all"]["_extra"]) == {"omnifuse_hfp − omnifuse", "omnifuse_hfp − moddrop_matched",
                                                  "omnifuse − dominant"}
    assert is_num(res["dominant"]["auroc"]["mean"])
    assert res["targets"]["omnifuse_vs_concat[all]"]["met"] in (True, False)
    assert len(res["runs"]) == 5 and Path(res["scores_file"]).is_file()
    assert "| full OmniFuse |" in stdout and "Targets:" in stdout and "OmniFuse (hide-for-prediction)" in stdout


def check_table4(res: dict, place: list[str]) -> None:
    """The quick Table 4 ablation: rows a, c, f, each compared with (a) and with the previous row, TLA traces."""
    assert res["style"] == "table4" and res["rows"] == ["a", "c", "f"]
    t = res["table"]
    assert t["a"]["overrides"] == {"fusion": "concat"}
    assert t["c"]["overrides"] == {"fusion": "omnifuse", "use_dwfuse": True, "use_tla": True, "use_forward": False,
                                   "use_backward": False}
    assert all(is_num(t[r]["auroc"]["mean"]) for r in ("a", "c", "f"))
    assert "vs_first" not in t["a"] and has_ci(t["c"]["vs_first"]) and has_ci(t["f"]["vs_prev"])
    assert (t["f"]["vs_prev"]["a"], t["f"]["vs_prev"]["b"]) == ("f", "c")
    assert {"row_c_vs_prev", "row_f_vs_prev", "f_vs_a"} <= set(res["targets"])
    assert "lazy" not in t["a"]
    for r in ("c", "f"):
        lazy = t[r]["lazy"]
        assert sorted(lazy["counts"]) == place and 0.0 <= lazy["dominant_share"] <= 1.0
        for epochs in lazy["counts"].values():  # 2 epochs: nothing to mine before the first, one mining after it
            assert epochs["1"] == {"(not mined)": 1} and sum(epochs["2"].values()) == 1
        assert lazy["epochs_mined"] == len(place)


def test_ablation_quick(work):
    res, stdout = run_script("ablation", work, "--rounds", "2")
    assert res["mode"] == "centralized"
    check_table4(res, ["pooled"])
    assert "| f | all four (full OmniFuse) |" in stdout and "TLA trace" in stdout


def test_ablation_quick_federated_without_flower(work):
    """B2 federated (in-process round loop) runs with flwr, opacus and dp_accounting unimportable."""
    res, stdout = run_script("ablation", work, "--rounds", "2", "--federated", out_name="ablation-fed", blocked=True)
    assert res["mode"] == "federated"
    check_table4(res, ["hospital_a", "hospital_b", "hospital_c"])
    assert "| c | hospital_a |" in stdout


def test_ablation_jobs_match_one_process(work):
    """B2b (imputation-reduction sum vs mean) with --jobs 2 gives exactly the --jobs 1 results."""
    one, _ = run_script("ablation", work, "--style", "reduction", out_name="reduction-1")
    two, stdout = run_script("ablation", work, "--style", "reduction", "--jobs", "2", out_name="reduction-2")
    assert one["rows"] == ["mean", "sum"] and one["table"]["sum"]["overrides"]["imputation_reduction"] == "sum"
    assert has_ci(one["table"]["sum"]["vs_first"]) and two["jobs"] == 2
    assert [r["auroc"] for r in one["runs"]] == [r["auroc"] for r in two["runs"]]
    a, b = np.load(one["scores_file"]), np.load(two["scores_file"])
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert one["table"]["sum"]["vs_first"]["lo"] == two["table"]["sum"]["vs_first"]["lo"]
    assert "imputation-reduction sum" in stdout


def test_missing_sweep_quick(work):
    res, _ = run_script("missing_sweep", work)
    assert res["rates"] == [0.0, 0.9] and res["variants"] == ["imputation", "no_imputation"]
    assert res["hidden_modalities"] == ["image", "text", "genomics"]
    for v in res["variants"]:
        assert all(is_num(res["table"][v][r]["mean"]) for r in ("0", "0.9"))
    frac = res["missing_fraction"]
    assert frac["0"]["ehr"] == frac["0.9"]["ehr"]  # the dominant modality is never hidden
    assert all(frac["0.9"][m] >= 0.9 > frac["0"][m] for m in ("image", "text"))
    assert has_ci(res["drop"]["imputation"]) and "imputation_drop" in res["targets"]
    assert set(res["imputation_gain"]["imputation − no_imputation"]) == {"0", "0.9"}


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
    """B4 on smoke: centralized, local-only and federated (in-process round loop) OmniFuse, beside the oracle."""
    res, stdout = run_script("federation_value", work)
    assert res["runs_compared"] == ["centralized/omnifuse", "local/omnifuse", "federated/omnifuse",
                                    "anchor/pooled_hgb", "anchor/local_hgb"]  # the classical anchor beside them
    assert res["seeds"] == [0] and res["run_modes"]["federated/omnifuse"] == "federated"
    assert res["run_modes"]["anchor/pooled_hgb"] == "anchor"
    sites = sorted(res["oracle"]["sites"])
    assert sites == ["hospital_a", "hospital_b", "hospital_c"] and 0.5 < res["oracle"]["global"] <= 1.0
    for name in res["runs_compared"]:
        summary = res["summary"][name]
        assert is_num(summary["global"]["mean"]) and 0.0 <= summary["global"]["mean"] <= 1.0
        assert sorted(summary["sites"]) == sites
    assert {"federated_vs_centralized", "federated_vs_oracle"} <= set(res["targets"])
    assert {f"federated_vs_local[{s}]" for s in sites} <= set(res["targets"])
    assert has_ci(res["comparisons"]["federated − centralized (OmniFuse)"])
    assert has_ci(res["comparisons"]["federated/omnifuse − pooled HGB anchor"])
    assert "| anchor/pooled_hgb |" in stdout
    assert "| oracle (observed modalities) |" in stdout and "Targets:" in stdout


def test_federated_loop_matches_flower(smoke_federation, tmp_path):
    """The benchmarks' in-process federated loop gives the test scores of a real Flower simulation of the same
    config (2 rounds, TLA mining in round 2), and the scores rebuilt from the Flower run's final checkpoint
    reproduce that run's own metrics."""
    import torch

    from bench.common import load_all, run_mode
    from bench.training import flower_test_outputs, train_federated
    from omnifuse_core.config import Config

    torch.set_num_threads(1)
    cfg = Config.load("smoke").replace(fusion="omnifuse", rounds=2, local_epochs=1, seed=0)
    sites = load_all(smoke_federation, cfg)
    ours = train_federated(sites, cfg)
    flower = run_mode("federated", cfg, smoke_federation, tmp_path / "run")
    rebuilt = flower_test_outputs(Path(flower["run_dir"]), sites, cfg)
    for s in flower["sites"]:
        assert rebuilt["metrics"][s]["auroc"] == pytest.approx(flower["sites"][s], abs=1e-9)
        assert np.allclose(rebuilt["scores"][s], ours["scores"][s], atol=1e-5)
        assert ours["sites"][s] == pytest.approx(flower["sites"][s], abs=1e-6)
    assert sorted(ours["lazy"]) == sorted(flower["sites"])


def test_dp_utility_smoke(tmp_path):
    """B5 quick: federated and centralized at epsilon 8 (spent within the target, one accountant per site / for the
    pooled set) and without DP, each with a test AUROC, a paired comparison and a membership-inference AUC."""
    out = tmp_path / "dp_utility.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "dp_utility.py"), "--quick", "--threads", "1",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["preset"] == "smoke" and res["config"] == "smoke-dp"
    assert set(res["table"]) == {"federated/eps8", "federated/epsinf", "centralized/eps8", "centralized/epsinf"}
    runs = {r["key"]: r for r in res["runs"]}
    assert set(runs["federated/eps8"]["privacy"]) == {"hospital_a", "hospital_b", "hospital_c"}
    assert set(runs["centralized/eps8"]["privacy"]) == {"pooled"}
    for key in ("federated/eps8", "centralized/eps8"):
        for spent in runs[key]["privacy"].values():
            assert 0 < spent["epsilon"] <= 8.0 + 1e-6 and spent["noise_multiplier"] > 0
        assert "mean_diff" in res["table"][key]["vs_nodp"]
    assert runs["federated/epsinf"]["privacy"] == {}
    for run in res["runs"]:
        assert 0.0 <= run["auroc"] <= 1.0 and 0.0 <= run["mia"]["auc"] <= 1.0


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


def test_learnability_small(work):
    out = work / "learnability.json"
    cmd = [sys.executable, str(ROOT / "bench" / "learnability.py"), "--preset", "smoke", "--config", "smoke",
           "--subsets", "ehr", "ehr,image", "--rounds", "1", "--work", str(work), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["subset"] for r in rows] == ["ehr", "ehr+image"]
    assert all(is_num(r["learned_auroc"]) and 0 <= r["learned_auroc"] <= 1 for r in rows)
    # read from the federation's oracle.json; smoke's oracle scores single modalities only, so the pair has none
    assert is_num(rows[0]["oracle_auroc"]) and rows[1]["oracle_auroc"] is None
    assert "| ehr+image |" in proc.stdout and "| — |" in proc.stdout


def test_probe_small(work):
    """bench/probe.py (issue 23 diagnosis): one trained model, a ridge probe per modality and latent factor."""
    out = work / "probe.json"
    cmd = [sys.executable, str(ROOT / "bench" / "probe.py"), "--preset", "smoke", "--config", "smoke",
           "--set", "rounds=1", "--min-patients", "5", "--work", str(work), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows and {r["modality"] for r in rows} <= {"ehr", "image", "text", "genomics"}
    for r in rows:
        assert is_num(r["r2_raw"]) and is_num(r["r2_learned"]) and r["r2_raw"] <= 1 and r["r2_learned"] <= 1
    assert "| R² raw features |" in proc.stdout.replace("| modality | latent factor ", "")


def test_noop_floor_app_echoes_the_payload_and_reports_its_startup(monkeypatch, task_identity):
    """bench/noop_app (B7 floor): the Flower components its pyproject names load, and its ClientApp echoes the
    arrays it gets with a start-up time; the whole benchmark runs real processes (bench/deploy_floor.py)."""
    import tomllib

    from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

    app_dir = ROOT / "bench" / "noop_app"
    components = tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "noop_floor.server:app", "clientapp": "noop_floor.client:app"}
    monkeypatch.syspath_prepend(str(app_dir))
    from noop_floor.client import app as client_app
    from noop_floor.server import app as server_app  # noqa: F401  (imports: the ServerApp module is valid)

    payload = np.arange(5, dtype=np.float32)
    msg = Message(RecordDict({"arrays": ArrayRecord({"w": Array(payload)})}), dst_node_id=1, message_type="train")
    reply = client_app(msg, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}))
    np.testing.assert_array_equal(reply.content["arrays"]["w"].numpy(), payload)
    assert reply.content["metrics"]["startup"] > 0


def test_adaptive_clip_quick(work):
    """B12 quick: fixed (config C), fixed C = 1 and adaptive clipping at the same target epsilon: the same sigma and
    epsilon in every arm, the adaptive arm ends at its own C, each arm compared with the fixed one."""
    res, _ = run_script("adaptive_clip", work)
    cells = res["table"]
    assert set(cells) == {"centralized/fixed", "centralized/fixed-1", "centralized/adaptive"}
    assert len({c["spent"]["noise_multiplier"] for c in cells.values()}) == 1
    assert all(0 < c["spent"]["epsilon"] <= 8.0 + 1e-6 for c in cells.values())
    assert cells["centralized/adaptive"]["spent"]["max_grad_norm"] != 1.0  # smoke-dp's C_0 = clip-initial = 1
    assert "mean_diff" in cells["centralized/adaptive"]["vs_fixed"] and "vs_fixed" not in cells["centralized/fixed"]
    assert res["arms"]["adaptive"] == {"max_grad_norm": "adaptive"}
