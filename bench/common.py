"""Shared helpers of the benchmark scripts (B1–B7): arguments, a cached federation, in-memory training, runs
through the real entry points (``--reuse``), environment and result files. Statistics and tables: ``bench/stats.py``.

Every script follows the same shape (see ``bench/federation_value.py``): one command, fixed seeds, a synthetic
federation generated once under ``--work`` (``<work>/<preset>-<sites>-<data-seed>``, shared with B4), results as
JSON under ``bench/results/`` plus a printed Markdown table. ``--quick`` picks the ``smoke`` preset and config (unless
given) and the tiniest settings; the smoke test runs every script that way.

In-memory centralized training (:func:`train_centralized`) is exactly what ``sim.modes.run_centralized`` does
(pool the sites' train splits, ``rounds`` chunks of ``local-epochs`` epochs with ``seed_offset = round``, the
prediction mode chosen on the pooled validation split, per-site test metrics and their sample-weighted mean), but it
reuses sites loaded once, so that many runs, modality subsets and masked cohorts do not reload site folders.
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
    ap.add_argument("--preset", default=None, help="synthetic preset (default laziness; smoke with --quick)")
    ap.add_argument("--sites", type=int, default=None, help="number of sites (default: the preset's)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the generated federation")
    ap.add_argument("--config", default=None, help="shipped config name or YAML file (default demo; smoke with --quick)")
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
    return ap


def resolve_args(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """Fill defaults that depend on ``--quick`` (preset, config, seeds, out) and set up logging."""
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
    changes.update(overrides)
    return cfg.replace(**changes)


# --- data -----------------------------------------------------------------------------------------------------
def federation(preset: str, sites: Optional[int], seed: int, work: Path) -> Path:
    """The federation folder ``<work>/<preset>-<sites>-<seed>``, generated on first use and reused afterwards.

    Args:
        preset: synthetic preset name (``sim.presets``).
        sites: number of sites; None = the preset's default.
        seed: generator seed.
        work: the benchmark work folder.
    """
    from sim.generator import generate_federation
    from sim.presets import get_preset

    n = sites if sites is not None else get_preset(preset).default_sites
    data = Path(work) / f"{preset}-{n}-{seed}"
    if not (data / "federation.yaml").is_file():
        shutil.rmtree(data, ignore_errors=True)
        generate_federation(preset, n, data, seed=seed)
    return data


def load_all(data: Path, cfg) -> list:
    """Every site of ``data`` with all four modalities (combined statistics), for in-memory runs."""
    from sim.modes import load_sites

    return load_sites(data, cfg.replace(modalities="ehr,image,text,genomics"))


def restrict(ds, names: Sequence[str]):
    """The dataset with only the modalities ``names`` (in that order); what loading with ``modalities`` gives."""
    from omnifuse_core.batch import MultimodalDataset

    index = [ds.modality_names.index(n) for n in names]
    specs = [ds.specs[i] for i in index]
    return MultimodalDataset(specs, {n: ds.inputs[n] for n in names}, ds.present[:, index].clone(), ds.labels,
                             list(ds.patient_ids))


def restrict_sites(sites: list, names: Sequence[str]) -> list:
    """Copies of ``sites`` whose splits hold only the modalities ``names``."""
    import dataclasses

    out = []
    for s in sites:
        parts = {k: restrict(v, names) for k, v in s.splits.items()}
        out.append(dataclasses.replace(s, specs=list(parts["train"].specs), **parts))
    return out


# --- training -------------------------------------------------------------------------------------------------
def train_centralized(sites: list, cfg, *, timer: Optional[dict] = None) -> dict:
    """Centralized (pooled) training and test evaluation in memory, as ``sim.modes.run_centralized`` does.

    Args:
        sites: loaded sites (``SiteData``) with the modalities of ``cfg.modalities`` in that order.
        cfg: the run configuration (fusion, seed, rounds, local-epochs, ...).
        timer: optional dict that receives ``train_s`` (training wall time).

    Returns:
        ``{"auroc": sample-weighted mean of per-site test AUROC, "pooled_auroc", "sites": {site: auroc},
        "prediction_mode", "seconds"}``.
    """
    from omnifuse_core.batch import MultimodalDataset
    from omnifuse_core.models import build_model
    from omnifuse_core.metrics import headline_metric
    from omnifuse_core.selection import RoundSelection, load_selected, offer_model
    from omnifuse_core.trainer import choose_prediction_mode, evaluate, resolve_device, set_seed, train_local
    from server.run_dir import weighted_global

    names = [s.name for s in sites[0].specs]
    if names != cfg.modality_list:
        raise ValueError(f"sites hold modalities {names} but the config asks for {cfg.modality_list}; "
                         "restrict the sites with restrict_sites() first")
    start = time.perf_counter()
    device = resolve_device(cfg)
    set_seed(cfg.seed)
    model = build_model(sites[0].specs, sites[0].task, cfg)
    train = MultimodalDataset.concat([s.train for s in sites])
    selection = RoundSelection(cfg.final_model)
    for rnd in range(1, cfg.rounds + 1):
        train_local(model, train, cfg, device=device, seed_offset=rnd)
        if selection.rule == "best-val":  # the per-site validation metrics run_centralized records each round
            val = {s.name: evaluate(model, s.val, cfg, device=device) for s in sites if len(s.val)}
            offer_model(selection, rnd, weighted_global(val).get(headline_metric(cfg.task)), model)
    if timer is not None:
        timer["train_s"] = time.perf_counter() - start
    model_round = load_selected(selection, model, cfg.rounds)
    mode = choose_prediction_mode(model, evaluate(model, MultimodalDataset.concat([s.val for s in sites]), cfg,
                                                  device=device))
    test = {s.name: evaluate(model, s.test, cfg, device=device) for s in sites if len(s.test)}
    pooled = evaluate(model, MultimodalDataset.concat([s.test for s in sites]), cfg, device=device)
    return {"auroc": weighted_global(test).get("auroc", float("nan")), "pooled_auroc": pooled.get("auroc"),
            "sites": {k: v.get("auroc") for k, v in test.items()}, "prediction_mode": mode,
            "model_round": model_round, "seconds": time.perf_counter() - start}


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
