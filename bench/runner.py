"""Independent benchmark runs — one (data seed, model seed, row) training each — in this process (``--jobs 1``) or
in N spawned worker processes (``--jobs N``), with identical results: every run seeds itself (``set_seed`` at its
start), loads its sites from the same folder and uses ``--threads`` torch threads in either case.

A run is a :class:`RunSpec`: which federation (data seed), which model seed, which trainer (``centralized``,
``federated`` = the in-process round loop, ``local``; ``flower`` = a real Flower simulation through
``sim.federated``, always in this process), the config overrides of its row, and an optional transform of the
loaded sites (e.g. B3's masking, ``"bench.missing_sweep:masked"``). Each worker loads a federation's sites once and
keeps them for its later runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger("bench.runner")
_SITES: dict = {}  # (federation folder) -> loaded sites, per process

# the argparse fields a worker needs to rebuild the run's configuration and find its data
SETTINGS = ("preset", "sites", "work", "config", "overrides", "quick", "rounds", "local_epochs", "device", "threads",
            "reuse", "mia")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a benchmark.

    Attributes:
        key: the row / arm it belongs to (e.g. ``"all/omnifuse"``).
        data_seed: seed of the generated federation.
        seed: model seed (``cfg.seed``).
        mode: ``centralized`` | ``federated`` | ``local`` | ``flower``.
        overrides: config overrides of the row (snake_case keys).
        transform: optional ``("module:function", kwargs)`` applied to the loaded sites before training.
        ehr_format: the federation's EHR files, ``csv`` or ``meds`` (same patients and splits).
    """

    key: str
    data_seed: int
    seed: int
    mode: str = "centralized"
    overrides: dict = field(default_factory=dict)
    transform: Optional[tuple] = None
    ehr_format: str = "csv"


def settings_of(args: argparse.Namespace) -> dict:
    """The picklable part of the parsed arguments that :func:`run_one` needs."""
    return {k: getattr(args, k, None) for k in SETTINGS}


def federation_dir(settings: dict, data_seed: int, ehr_format: str = "csv") -> Path:
    """The federation folder of ``data_seed`` (generated on first use, see ``bench.common.federation``)."""
    from bench.common import federation

    return federation(settings["preset"], settings["sites"], data_seed, Path(settings["work"]), ehr_format)


def load_federation(args: argparse.Namespace, data_seed: int) -> list:
    """The loaded sites (all four modalities) of ``data_seed``'s federation, cached in this process."""
    settings = settings_of(args)
    return _sites(settings, federation_dir(settings, data_seed))


def _sites(settings: dict, data: Path):
    from bench.common import load_all, load_config

    if data not in _SITES:
        _SITES[data] = load_all(data, load_config(argparse.Namespace(**settings)))
    return _SITES[data]


def run_one(spec: RunSpec, settings: dict) -> dict:
    """Train and test one run; the result of ``bench.training`` plus the spec's identity (``key``, seeds)."""
    from bench.common import load_config
    from bench.training import TRAINERS, flower_test_outputs, restrict_sites

    args = argparse.Namespace(**settings)
    cfg = load_config(args, seed=spec.seed, **spec.overrides)
    data = federation_dir(settings, spec.data_seed, spec.ehr_format)
    sites = _sites(settings, data)
    if spec.transform is not None:
        target, kwargs = spec.transform
        module, name = target.split(":")
        sites = getattr(importlib.import_module(module), name)(sites, **kwargs)
    if [s.name for s in sites[0].specs] != cfg.modality_list:
        sites = restrict_sites(sites, cfg.modality_list)
    if spec.mode == "flower":
        from bench.common import run_mode
        from bench.training import run_result

        out = Path(settings["work"]) / "runs" / spec.key.replace("/", "-") / f"d{spec.data_seed}-s{spec.seed}"
        start = time.perf_counter()
        res = run_mode("federated", cfg, data, out, reuse=bool(settings.get("reuse")))
        result = run_result(flower_test_outputs(Path(res["run_dir"]), sites, cfg), start, run_dir=res["run_dir"],
                            flower_auroc=res["auroc"], reused=res["reused"], lazy={})
        result["seconds"] = res["seconds"]
    else:
        result = TRAINERS[spec.mode](sites, cfg, **({"mia": True} if settings.get("mia") else {}))
    result.update({"key": spec.key, "data_seed": spec.data_seed, "seed": spec.seed, "mode": spec.mode})
    log.info("%s data seed %d model seed %d (%s): AUROC %.4f (%.1f s)", spec.key, spec.data_seed, spec.seed,
             spec.mode, result["auroc"], result["seconds"])
    return result


def _init_worker(threads: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def worker_threads(args: argparse.Namespace) -> int:
    """Torch threads per run: ``--threads``, or with ``--jobs N`` and ``--threads 0`` the cores divided by N."""
    if args.threads > 0 or args.jobs <= 1:
        return args.threads
    return max(1, (os.cpu_count() or 1) // args.jobs)


def execute(specs: list[RunSpec], args: argparse.Namespace) -> list[dict]:
    """Every spec's result, in the order of ``specs``. ``flower`` runs always run here, one after another.

    Before any worker starts, every federation is generated and loaded once here (which also fills its text
    embedding cache, so that no worker loads the text model).
    """
    settings = settings_of(args)
    settings["threads"] = worker_threads(args)
    for ds, fmt in sorted({(s.data_seed, s.ehr_format) for s in specs}):
        _sites(settings, federation_dir(settings, ds, fmt))
    results: list = [None] * len(specs)
    pooled = [i for i, s in enumerate(specs) if s.mode != "flower"]
    start = time.perf_counter()
    if args.jobs > 1 and len(pooled) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(args.jobs, len(pooled)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(settings["threads"],)) as pool:
            futures = {i: pool.submit(run_one, specs[i], settings) for i in pooled}
            for n, (i, fut) in enumerate(futures.items(), 1):
                results[i] = fut.result()
                log.info("%d/%d runs done (%.0f s)", n, len(pooled), time.perf_counter() - start)
    else:
        for i in pooled:
            results[i] = run_one(specs[i], settings)
    for i, s in enumerate(specs):
        if s.mode == "flower":
            results[i] = run_one(s, settings)
    log.info("%d runs in %.0f s (%d job(s), %d torch thread(s) each)", len(specs), time.perf_counter() - start,
             max(1, args.jobs), settings["threads"])
    return results


def by_key(results: list[dict]) -> dict[str, list[dict]]:
    """Results grouped by ``key``, each list ordered by (data seed, model seed)."""
    out: dict[str, list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["data_seed"], r["seed"])):
        out.setdefault(r["key"], []).append(r)
    return out


def publish(args: argparse.Namespace, payload: dict, results: list[dict], title: str, md: str,
            targets: dict) -> None:
    """Write the scores (``.scores.npz``) and the result JSON (``payload`` plus the per-run records, the bootstrap
    settings and the environment), then print the title, the Markdown table and the targets."""
    from bench.common import environment, run_records, write_result, write_scores
    from bench.stats import targets_lines

    scores = write_scores(args.out, results)
    payload = {**payload, "quick": args.quick, "jobs": args.jobs, "threads_per_run": worker_threads(args),
               "bootstrap": {"reps": args.bootstrap, "seed": args.bootstrap_seed, "level": 0.95,
                             "method": "two-level paired (data seeds, model seeds; test patients within site)"},
               "targets": targets, "runs": run_records(results), "scores_file": str(scores),
               "environment": environment(), "markdown": md}
    write_result(args.out, payload)
    print(title)
    print(md)
    print("\n".join(["Targets:"] + targets_lines(targets)))
