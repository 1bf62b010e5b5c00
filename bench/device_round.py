"""Per-site round time and accelerator use of the demo federation on one device (CPU or CUDA).

Usage:
  .venv/bin/python bench/device_round.py [--preset demo] [--config demo] [--rounds 2] [--device auto] \
      [--set KEY=VALUE ...] [--out bench/results/device_round.json]

How (in-process, like B7's ``bench/scale.py``; Flower's per-message overhead is not included): the federation is
generated once (seed 0) and loaded once; each round trains the global model at every site in turn from the global
weights with ``train_local`` (the config's local-epochs), then averages the replies (sample-weighted FedAvg) and
evaluates each site's validation split. Round 1 is a warm-up (CUDA context, kernel selection) and is reported
apart. On CUDA it records the peak allocated memory (``torch.cuda.max_memory_allocated``) and the GPU utilisation
sampled every 0.2 s by NVML (``nvidia-ml-py``) while sites train.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("bench.device_round")


class _UtilSampler:
    """Samples NVML GPU utilisation (%) in a background thread; no-op without CUDA or NVML."""

    def __init__(self, period: float = 0.2) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = None
        self.period = period
        self._nvml = None
        try:
            import pynvml
        except ImportError:
            log.info("GPU utilisation not sampled: the nvidia-ml-py package (pynvml) is not installed")
            return
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except pynvml.NVMLError as exc:
            log.info("GPU utilisation not sampled: NVML has no GPU to read (%s)", exc)

    def __enter__(self):
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(int(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def main() -> None:
    import torch

    from bench.common import federation
    from bench.scale import fedavg
    from omnifuse_core.weights import get_trainable, set_trainable
    from omnifuse_core.config import Config
    from omnifuse_core.models import build_model
    from omnifuse_core.trainer import evaluate, resolve_device, train_local
    from sim.modes import load_sites

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--work", type=Path, default=Path("bench/work"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/device_round.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config.load(args.config).with_overrides(args.set).replace(device=args.device)
    device = resolve_device(cfg)
    t0 = time.perf_counter()
    data = federation(args.preset, None, 0, args.work)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    sites = load_sites(data, cfg)
    t_load = time.perf_counter() - t0
    model = build_model(sites[0].specs, sites[0].task, cfg).to(device)
    global_w = dict(get_trainable(model))
    rounds = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for rnd in range(1, args.rounds + 1):
        per_site, replies = {}, []
        with _UtilSampler() as util:
            for s in sites:
                set_trainable(model, global_w)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                train_local(model, s.train, cfg, device=device, seed_offset=rnd, trained=rnd > 1)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                per_site[s.name] = {"seconds": time.perf_counter() - start, "n_train": len(s.train)}
                replies.append((dict(get_trainable(model)), len(s.train)))
        global_w = fedavg(replies)
        set_trainable(model, global_w)
        val = {s.name: evaluate(model, s.val, cfg, device=device).get("auroc") for s in sites}
        rounds.append({"round": rnd, "sites": per_site, "val_auroc": val,
                       "gpu_util_mean": (sum(util.samples) / len(util.samples)) if util.samples else None,
                       "gpu_util_samples": len(util.samples)})
        log.info("round %d: %s", rnd, {k: round(v["seconds"], 2) for k, v in per_site.items()})
    timed = [r for r in rounds if r["round"] > 1] or rounds
    site_rounds = [v["seconds"] for r in timed for v in r["sites"].values()]
    result = {
        "preset": args.preset, "config": args.config, "overrides": args.set, "device": str(device),
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "local_epochs": cfg.local_epochs,
        "generate_seconds": t_gen, "load_seconds": t_load, "rounds": rounds,
        "mean_site_round_seconds_after_warmup": sum(site_rounds) / len(site_rounds),
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))


if __name__ == "__main__":
    main()
