"""Shared helpers of the benchmark scripts (B1–B7): arguments, a cached federation, runs through the real entry
points (``--reuse``), environment and result files. In-memory training: ``bench/training.py``; parallel runs:
``bench/runner.py``; statistics and tables: ``bench/stats.py`` and ``bench/bootstrap.py``.

Every script follows the same shape (see ``bench/federation_value.py``): one command, fixed seeds, synthetic
federations generated once under ``--work`` (``<work>/<preset>-<sites>-<data-seed>``, shared between scripts),
results as JSON under ``bench/results/`` plus a printed Markdown table. ``--quick`` picks the ``smoke`` preset and
config (unless given) and the tiniest settings; the smoke test runs every script that way.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bench.training import restrict, restrict_sites, train_centralized  # noqa: F401  (re-exported)

log = logging.getLogger("bench.common")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_WORK = Path("/tmp/omnifuse-bench")
QUICK_OVERRIDES = {"rounds": 1, "local_epochs": 1}


# --- arguments ------------------------------------------------------------------------------------------------
def base_parser(description: str, *, seeds: int = 5) -> argparse.ArgumentParser:
    """Arguments every script shares: preset, sites, data seed, config, seeds, quick, work and out.

    Args:
        description: the script's one-line description (shown by ``--help``).
        seeds: default number of training seeds (0..N-1).
    """
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--preset", default=None,
                    help="synthetic preset of sim/presets.py, e.g. laziness, reliability (default laziness; smoke "
                         "with --quick)")
    ap.add_argument("--sites", type=int, default=None, help="number of sites (default: the preset's)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the (first) generated federation")
    ap.add_argument("--config", default=None,
                    help="shipped config name or YAML file (default demo; smoke with --quick)")
    ap.add_argument("--seeds", type=int, default=seeds, help="training seeds 0..N-1 (paired across methods)")
    ap.add_argument("--rounds", type=int, default=None, help="override the config's rounds")
    ap.add_argument("--local-epochs", type=int, default=None, help="override the config's local-epochs")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0 = torch's default); 1 is far faster on a busy shared machine")
    ap.add_argument("--quick", action="store_true", help="tiny settings for the smoke test (seconds)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="folder for generated data and run folders")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/<name>.json)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key for every run, as `omnifuse train --set` (repeatable), "
                         "e.g. --set final-model=best-val")
    ap.add_argument("--reuse", action="store_true",
                    help="keep a finished run folder under --work whose config.yaml matches the run's config "
                         "(resume an interrupted benchmark; assumes the code has not changed since)")
    ap.add_argument("--device", default=None,
                    help="torch device for every run (default: the config's `device`; auto = CUDA when present)")
    return ap


def add_run_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of the paired benchmarks B1–B4: data seeds, parallel jobs and the bootstrap."""
    ap.add_argument("--data-seeds", type=int, default=1,
                    help="synthetic federations generated with seeds DATA_SEED..DATA_SEED+N-1 (paired across rows)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="independent runs in N spawned worker processes (results identical to --jobs 1 at the "
                         "same --threads; with --threads 0 each worker gets cores/N threads)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates of every paired difference")
    ap.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling")
    return ap


def seeds_of(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """``(data seeds, model seeds)`` of a paired benchmark."""
    return list(range(args.data_seed, args.data_seed + args.data_seeds)), list(range(args.seeds))


def resolve_args(args: argparse.Namespace, name: str, *, preset_in_name: bool = False) -> argparse.Namespace:
    """Fill defaults that depend on ``--quick`` (preset, config, seeds, out) and set up logging; with
    ``preset_in_name`` the default result file of a preset other than laziness is ``<name>-<preset>.json``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers", "flwr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    args.preset = args.preset or ("smoke" if args.quick else "laziness")
    args.config = args.config or ("smoke" if args.quick else "demo")
    if args.quick:
        args.seeds = 1
    if args.out is None:
        name += f"-{args.preset}" if preset_in_name and args.preset not in ("laziness", "smoke") else ""
        args.out = RESULTS_DIR / (f"{name}-quick.json" if args.quick else f"{name}.json")
    return args


def choose(ap: argparse.ArgumentParser, text: str, choices: Sequence[str], default: Sequence[str],
           what: str) -> list[str]:
    """The comma-separated names in ``text`` (or ``default`` when empty), each checked against ``choices``."""
    names = [n for n in text.split(",") if n] or list(default)
    for bad in [n for n in names if n not in choices]:
        ap.error(f"unknown {what} {bad!r}; choose from {list(choices)}")
    return names


def load_config(args: argparse.Namespace, **overrides):
    """The run configuration: ``--config`` plus ``--rounds``/``--local-epochs``, ``--quick`` settings, overrides."""
    from omnifuse_core.config import Config, ConfigError

    changes = dict(QUICK_OVERRIDES) if args.quick else {}
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if args.local_epochs is not None:
        changes["local_epochs"] = args.local_epochs
    try:
        cfg = Config.load(args.config).with_overrides(getattr(args, "overrides", []))
    except ConfigError as exc:
        raise SystemExit(str(exc)) from exc
    if getattr(args, "device", None):
        changes["device"] = args.device
    changes.update(overrides)
    return cfg.replace(**changes)


# --- data -----------------------------------------------------------------------------------------------------
def federation(preset: str, sites: Optional[int], seed: int, work: Path, ehr_format: str = "csv") -> Path:
    """The federation folder ``<work>/<preset>-<sites>-<seed>`` (``-meds`` appended for a MEDS EHR), generated on
    first use and reused afterwards.

    Args:
        preset: synthetic preset name (``sim.presets``).
        sites: number of sites; None = the preset's default.
        seed: generator seed.
        work: the benchmark work folder.
        ehr_format: ``csv`` or ``meds`` (``omnifuse synth --ehr-format``): the same patients and splits either way.
    """
    from sim.generator import generate_federation
    from sim.presets import get_preset

    n = sites if sites is not None else get_preset(preset).default_sites
    data = Path(work) / f"{preset}-{n}-{seed}{'' if ehr_format == 'csv' else '-' + ehr_format}"
    if not (data / "federation.yaml").is_file():
        shutil.rmtree(data, ignore_errors=True)
        generate_federation(preset, n, data, seed=seed, ehr_format=ehr_format)
    return data


def load_all(data: Path, cfg) -> list:
    """Every site of ``data`` with all four modalities (combined statistics), for in-memory runs."""
    from sim.modes import load_sites

    return load_sites(data, cfg.replace(modalities="ehr,image,text,genomics"))


# --- runs through the real entry points -----------------------------------------------------------------
# keys the runners fill in themselves; a reused run must match every other key
_RUNNER_KEYS = {"min-sites", "data-root", "run-dir"}


def finished_run(cfg, data: Path, out: Path) -> Optional[dict]:
    """``out``'s ``metrics.json`` when ``out`` is a finished run of exactly ``cfg`` on ``data``, else None.

    A run is finished when its ``metrics.json`` has a final global AUROC; it is the same run when its ``config.yaml``
    equals ``cfg`` on every key except those the runner fills in, and those name ``data`` and ``out``.
    """
    from omnifuse_core.config import Config, ConfigError

    metrics, saved = Path(out) / "metrics.json", Path(out) / "config.yaml"
    if not (metrics.is_file() and saved.is_file()):
        return None
    try:
        result = json.loads(metrics.read_text())
        old = Config.load(str(saved)).to_flat()
    except (OSError, ValueError, ConfigError) as exc:
        log.warning("not reusing %s: %s", out, exc)
        return None
    new = cfg.to_flat()
    differ = sorted(k for k in set(old) | set(new) if k not in _RUNNER_KEYS and old.get(k) != new.get(k))
    if differ or old.get("data-root") != str(data) or old.get("run-dir") != str(out):
        log.info("not reusing %s: its config differs in %s", out, differ or ["data-root/run-dir"])
        return None
    final = result.get("final") or {}
    if final.get("global", {}).get("auroc") is None:
        return None
    return result


def run_mode(mode: str, cfg, data: Path, out: Path, *, reuse: bool = False) -> dict:
    """One run through the real entry points (``centralized``, ``local`` or ``federated``) on a federation folder.

    Args:
        reuse: return a finished run already in ``out`` (same config, :func:`finished_run`) instead of re-running;
            its ``seconds`` are the ones that run recorded.

    Returns:
        ``{"auroc": final.global AUROC, "sites": {site: auroc}, "seconds": wall time, "run_dir", "reused"}``.
    """
    from sim.modes import read_metrics, run_centralized, run_local

    if reuse:
        done = finished_run(cfg, data, out)
        if done is not None:
            final = done["final"]
            log.info("reusing the finished run in %s", out)
            return {"auroc": final["global"]["auroc"], "sites": {s: v.get("auroc") for s, v in final["sites"].items()},
                    "seconds": float(final.get("seconds") or float("nan")), "run_dir": str(out), "reused": True}

    if mode == "federated":
        from sim.federated import run_federated as runner
    else:
        runners = {"centralized": run_centralized, "local": run_local}
        if mode not in runners:
            raise ValueError(f"unknown mode {mode!r}; choose centralized, local or federated")
        runner = runners[mode]
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    run_dir = runner(cfg, data, out)
    seconds = time.perf_counter() - start
    final = read_metrics(run_dir)["final"]
    return {"auroc": final["global"].get("auroc"), "sites": {s: v.get("auroc") for s, v in final["sites"].items()},
            "seconds": seconds, "run_dir": str(run_dir), "reused": False}


def warm_up() -> float:
    """Pay torch's one-time costs before anything is timed (the first optimizer imports torch._dynamo, seconds).

    Returns:
        The seconds it took.
    """
    import torch

    start = time.perf_counter()
    p = torch.nn.Parameter(torch.zeros(1))
    torch.optim.Adam([p]).step()
    return time.perf_counter() - start


# --- environment and output -----------------------------------------------------------------------------------
def environment() -> dict:
    """Machine, date, versions and the code's git commit recorded with every result; says ``no GPU on this
    machine`` when so."""
    import torch

    from omnifuse_core.provenance import code_revision

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU on this machine"
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0], "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "python": platform.python_version(), "code_revision": code_revision()}


def write_scores(path: Path, results: list[dict]) -> Path:
    """Every run's per-patient test scores (and each federation's labels) as ``<path stem>.scores.npz``: arrays
    ``score|<key>|d<data seed>|s<model seed>|<site>`` and ``label|d<data seed>|<site>``, for re-analysis."""
    arrays = {}
    for r in results:
        for site, score in (r.get("scores") or {}).items():
            arrays[f"score|{r['key']}|d{r['data_seed']}|s{r['seed']}|{site}"] = np.asarray(score, dtype=np.float32)
            arrays[f"label|d{r['data_seed']}|{site}"] = np.asarray(r["labels"][site], dtype=np.int8)
    out = Path(path).with_suffix(".scores.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


def run_records(results: list[dict]) -> list[dict]:
    """The per-run part of a result JSON: identity, AUROC (global and per site), mode, selection, TLA trace, time."""
    keep = ("key", "data_seed", "seed", "mode", "auroc", "pooled_auroc", "sites", "prediction_mode", "model_round",
            "lazy", "seconds", "ids", "flower_auroc", "run_dir", "reused", "privacy", "mia")
    return [{k: r[k] for k in keep if k in r} for r in results]


def write_result(path: Path, payload: dict) -> None:
    """Write the result JSON (NaN written as null) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    log.info("results written to %s", path)


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
