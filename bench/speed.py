"""B6 speed: cost ratios of the framework's parts, all measured in one run on one machine.

Usage:
  .venv/bin/python bench/speed.py --preset laziness --config demo [--threads 1] [--timing-samples 640] \
      [--skip-federated] [--out bench/results/speed.json]
  .venv/bin/python bench/speed.py --quick      # smoke preset, 64 samples, no federated run

Measured:
* federated wall / centralized wall: ``sim.federated.run_federated`` vs ``sim.modes.run_centralized`` with the same
  config (rounds × local-epochs); wall time of the whole call, so the federated time includes starting the
  SuperLink and Ray (the per-round seconds from metrics.json are recorded too). Skipped with --quick.
* DP step / non-DP step: full OmniFuse built DP-compatible (GroupNorm, DPGRU) in both, one epoch over a fixed
  subset of the pooled train split (``--timing-samples``), σ = 1, C = max-grad-norm; step time = (epoch − TLA mining)
  / steps. TLA mining uses the plain selection in both (the DP run's report-noisy-max costs the same scoring).
* OmniFuse step / concat step: same encoders, same subset, same step definition; the epoch ratio (with mining) too.
  Every step timing is the median of ``--repeats`` epochs, each of a fresh model, interleaved across variants
  (a shared machine's load drifts).
* TLA mining share of an OmniFuse epoch (``on_epoch_start`` timed).
* text embedding: loading one site with an empty embedding cache, then again with the cache filled.
* bytes per round per site: the trainable parameters (float32) vs their Flower ``ArrayRecord`` payload (what a site
  uploads once and downloads twice per round: training and validation messages) and a safetensors file.
Each model is warmed up for one epoch on 32 samples first. Where torch has no CUDA the output says
"no GPU on this machine"; with CUDA it also samples nvidia-smi utilisation during the timed epochs.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (base_parser, environment, federation, load_all, load_config, resolve_args,  # noqa: E402
                          run_mode, warm_up, write_result)
from bench.stats import fnum, markdown_table, target, targets_lines  # noqa: E402

log = logging.getLogger("bench.speed")


def timed_epochs(variants: dict, specs, task, train, repeats: int) -> dict:
    """Per variant: a warm-up on 32 samples, then ``repeats`` timed epochs, each of a fresh model, interleaved
    across variants (round r times every variant once) so that a shared machine's load drift hits all alike.

    Returns:
        ``{variant: {epoch_s, mining_s, steps, step_s (medians), "repeats": [each repeat's values]}}``.
    """
    from omnifuse_core.models import build_model
    from omnifuse_core.trainer import DPSettings, set_seed, train_local

    settings = {n: DPSettings.for_config(c, 1.0, c.batch_size) if c.dp else None
                for n, c in variants.items()}
    for name, cfg in variants.items():
        set_seed(cfg.seed)
        train_local(build_model(specs, task, cfg), train.subset(range(min(32, len(train)))), cfg, epochs=1,
                    dp=settings[name])
    runs: dict[str, list] = {n: [] for n in variants}
    for _ in range(repeats):
        for name, cfg in variants.items():
            runs[name].append(_one_epoch(cfg, specs, task, train, settings[name]))
            log.info("%s: %s", name, runs[name][-1])
    out = {}
    for name, rs in runs.items():
        out[name] = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
        out[name]["repeats"] = rs
    return out


def _one_epoch(cfg, specs, task, train, settings) -> dict:
    from omnifuse_core.models import build_model
    from omnifuse_core.trainer import set_seed, train_local

    set_seed(cfg.seed)
    model = build_model(specs, task, cfg)
    mining = [0.0]
    hook = model.on_epoch_start

    def timed_hook(*a, **kw):
        t = time.perf_counter()
        try:
            return hook(*a, **kw)
        finally:
            mining[0] += time.perf_counter() - t

    model.on_epoch_start = timed_hook
    start = time.perf_counter()
    result = train_local(model, train, cfg, epochs=1, dp=settings)
    epoch = time.perf_counter() - start
    return {"epoch_s": epoch, "mining_s": mining[0], "steps": result.steps,
            "step_s": (epoch - mining[0]) / max(result.steps, 1)}


def gpu_sampler() -> tuple[threading.Event, list]:
    """Start sampling ``nvidia-smi`` GPU utilisation (%) every 0.2 s until the returned event is set."""
    stop, samples = threading.Event(), []

    def loop() -> None:
        while not stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5, check=True).stdout
                samples.append(float(out.split()[0]))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
                log.warning("nvidia-smi sampling failed (%s); GPU utilisation not recorded", exc)
                return
            stop.wait(0.2)

    threading.Thread(target=loop, daemon=True).start()
    return stop, samples


def text_embedding_cost(data: Path, cfg) -> dict:
    """Seconds to load the first site with an empty text cache, then with the cache it just filled."""
    from omnifuse_core.data.site import load_site
    from omnifuse_core.data.stats import combine_stats, site_stats
    from sim.modes import site_folders

    paths = site_folders(data)
    stats = combine_stats([site_stats(p, cfg) for p in paths])
    with tempfile.TemporaryDirectory(prefix="omnifuse-textcache-") as cache:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            site = load_site(paths[0], cfg, stats=stats, cache_dir=cache)
            times.append(time.perf_counter() - start)
    texts = sum(int(ds.present[:, ds.modality_names.index("text")].sum()) for ds in site.splits.values()) \
        if "text" in site.train.modality_names else 0
    return {"site": site.name, "texts": texts, "first_load_s": times[0], "later_load_s": times[1],
            "ratio": times[0] / times[1], "embedding_s": times[0] - times[1]}


def payload_bytes(model) -> dict:
    """Trainable parameter bytes vs the ArrayRecord payload and a safetensors file of the same arrays."""
    from flwr.app import Array
    from safetensors.numpy import save_file

    from omnifuse_core.weights import get_trainable

    arrays = get_trainable(model)
    params = int(sum(a.nbytes for a in arrays.values()))
    record = int(sum(len(Array(a).data) for a in arrays.values()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        save_file(dict(arrays), str(path))
        st = path.stat().st_size
    return {"tensors": len(arrays), "parameters": int(sum(a.size for a in arrays.values())), "param_bytes": params,
            "array_record_bytes": record, "safetensors_bytes": st, "upload_per_round_bytes": record,
            "download_per_round_bytes": 2 * record, "upload_over_param": record / params}


def wall_breakdown(wall: dict) -> dict:
    """Per-round seconds from the run's metrics.json and the time spent outside the rounds (process start,
    site loading, final test); for federated runs also the server loop's own total (``final.seconds``)."""
    from sim.modes import read_metrics

    metrics = read_metrics(wall["run_dir"])
    rounds = [float(r.get("seconds") or 0.0) for r in metrics.get("rounds", [])]
    out = {"round_seconds": rounds, "outside_rounds_s": wall["seconds"] - sum(rounds)}
    if metrics.get("final", {}).get("seconds") is not None:
        out["server_loop_s"] = float(metrics["final"]["seconds"])
    return out


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0], seeds=1)
    ap.add_argument("--timing-samples", type=int, default=640, help="pooled train samples timed per variant")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per variant (median reported)")
    ap.add_argument("--skip-federated", action="store_true", help="skip the federated vs centralized wall time")
    args = resolve_args(ap.parse_args(), "speed")
    if args.quick:
        args.timing_samples, args.skip_federated, args.repeats = min(args.timing_samples, 64), True, 1
    import torch

    from omnifuse_core.batch import MultimodalDataset
    from omnifuse_core.models import build_model

    cfg = load_config(args, fusion="omnifuse")
    env = environment()
    warm_up()
    data = federation(args.preset, args.sites, args.data_seed, args.work)
    text = text_embedding_cost(data, cfg)
    log.info("text embedding: %s", text)
    sites = load_all(data, cfg)
    pooled = MultimodalDataset.concat([s.train for s in sites])
    idx = np.sort(np.random.default_rng(0).permutation(len(pooled))[:args.timing_samples])
    sub = pooled.subset(idx)
    specs, task = sites[0].specs, sites[0].task
    variants = {"concat": cfg.replace(fusion="concat"), "omnifuse": cfg,
                "omnifuse_dp_compatible": cfg.replace(dp_compatible=True),
                "omnifuse_dp": cfg.replace(dp=True, dp_compatible=True)}
    util = None
    stop, samples = gpu_sampler() if torch.cuda.is_available() else (None, None)
    steps = timed_epochs(variants, specs, task, sub, max(1, args.repeats))
    if stop is not None:
        stop.set()
        util = {"mean_pct_all_variants": float(np.mean(samples)) if samples else None, "samples": len(samples)}
    payload = payload_bytes(build_model(specs, task, cfg))
    ratios = {"dp_step_over_nondp": steps["omnifuse_dp"]["step_s"] / steps["omnifuse_dp_compatible"]["step_s"],
              "dp_step_over_default_nondp": steps["omnifuse_dp"]["step_s"] / steps["omnifuse"]["step_s"],
              "dp_compatible_over_default_step": steps["omnifuse_dp_compatible"]["step_s"] / steps["omnifuse"]["step_s"],
              "omnifuse_step_over_concat": steps["omnifuse"]["step_s"] / steps["concat"]["step_s"],
              "omnifuse_epoch_over_concat": steps["omnifuse"]["epoch_s"] / steps["concat"]["epoch_s"],
              "tla_mining_share": steps["omnifuse"]["mining_s"] / steps["omnifuse"]["epoch_s"],
              "text_first_over_later_load": text["ratio"],
              "upload_over_param_bytes": payload["upload_over_param"]}
    walls = None
    if not args.skip_federated:
        runs = args.work / "runs" / "speed"
        walls = {m: run_mode(m, cfg, data, runs / m) for m in ("centralized", "federated")}
        ratios["federated_over_centralized_wall"] = walls["federated"]["seconds"] / walls["centralized"]["seconds"]
        for w in walls.values():
            w.update(wall_breakdown(w))
        ratios["federated_over_centralized_last_round"] = (walls["federated"]["round_seconds"][-1]
                                                           / walls["centralized"]["round_seconds"][-1])
    targets = {"fl_wall": target("federated / centralized wall", ratios.get("federated_over_centralized_wall"),
                                 1.3, "<="),
               "dp_step": target("DP step / non-DP step", ratios["dp_step_over_nondp"], 2.0, "<="),
               "omnifuse_step": target("OmniFuse step / concat step", ratios["omnifuse_step_over_concat"], 1.5, "<=")}
    rows = [["federated / centralized wall", fnum(ratios.get("federated_over_centralized_wall"), 2),
             "skipped" if walls is None else f"{walls['federated']['seconds']:.1f} s / "
             f"{walls['centralized']['seconds']:.1f} s"],
            ["last round, federated / centralized", fnum(ratios.get("federated_over_centralized_last_round"), 2),
             "skipped" if walls is None else f"{walls['federated']['round_seconds'][-1]:.1f} s / "
             f"{walls['centralized']['round_seconds'][-1]:.1f} s; outside rounds "
             f"{walls['federated']['outside_rounds_s']:.1f} s / {walls['centralized']['outside_rounds_s']:.1f} s"],
            ["DP step / non-DP step (DP-compatible OmniFuse)", fnum(ratios["dp_step_over_nondp"], 2),
             f"{steps['omnifuse_dp']['step_s'] * 1e3:.1f} ms / {steps['omnifuse_dp_compatible']['step_s'] * 1e3:.1f} ms"],
            ["DP-compatible layers / default layers, non-DP step", fnum(ratios["dp_compatible_over_default_step"], 2),
             f"DP step / default non-DP step: {fnum(ratios['dp_step_over_default_nondp'], 2)}"],
            ["OmniFuse step / concat step", fnum(ratios["omnifuse_step_over_concat"], 2),
             f"{steps['omnifuse']['step_s'] * 1e3:.1f} ms / {steps['concat']['step_s'] * 1e3:.1f} ms"],
            ["OmniFuse epoch / concat epoch (with TLA mining)", fnum(ratios["omnifuse_epoch_over_concat"], 2),
             f"{steps['omnifuse']['epoch_s']:.2f} s / {steps['concat']['epoch_s']:.2f} s"],
            ["TLA mining share of an OmniFuse epoch", f"{ratios['tla_mining_share']:.1%}",
             f"{steps['omnifuse']['mining_s']:.2f} s of {steps['omnifuse']['epoch_s']:.2f} s"],
            ["site load, empty / filled text cache", fnum(text["ratio"], 2),
             f"{text['first_load_s']:.1f} s / {text['later_load_s']:.1f} s ({text['texts']} texts)"],
            ["bytes up per round per site / trainable bytes", fnum(payload["upload_over_param"], 4),
             f"{payload['array_record_bytes']:,} B / {payload['param_bytes']:,} B (down: 2×; safetensors "
             f"{payload['safetensors_bytes']:,} B)"]]
    md = markdown_table(["ratio", "value", "measured"], rows)
    write_result(args.out, {
        "benchmark": "B6 speed", "preset": args.preset, "config": args.config, "quick": args.quick,
        "timing_samples": len(sub), "repeats": max(1, args.repeats), "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "gpu": env["gpu"], "gpu_utilization": util, "ratios": ratios, "steps": steps, "text": text,
        "payload": payload, "walls": walls, "targets": targets, "config_resolved": cfg.to_flat(),
        "environment": env, "markdown": md})
    print(f"B6 speed (preset {args.preset}, config {args.config}, {len(sub)} timed samples, median of "
          f"{max(1, args.repeats)} epoch(s), device "
          f"{'cuda: ' + env['gpu'] if torch.cuda.is_available() else 'cpu: no GPU on this machine'}, "
          f"{env['torch_threads']} torch thread(s))")
    print(md)
    print("\n".join(["Targets:"] + targets_lines(targets)))


if __name__ == "__main__":
    main()
