"""One-command federated simulation: a simulation-runtime SuperLink on free loopback ports, one virtual SuperNode
per site, ``flwr run`` with the run's config; the SuperLink and everything it spawned are stopped afterwards."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml

from omnifuse_core.config import Config

from .deploy import flower_processes, flwr_run, start_superlink, write_connection

log = logging.getLogger(__name__)


def _num_sites(data_root: Path) -> int:
    fed = data_root / "federation.yaml"
    try:
        sites = (yaml.safe_load(fed.read_text()) or {}).get("sites")
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{fed}: cannot read the federation file ({exc}); create it with `omnifuse synth`") from exc
    if not isinstance(sites, list) or not sites:
        raise ValueError(f"{fed}: key 'sites' must list the site folders")
    return len(sites)


def _gpu_share(parallel: int) -> float:
    """Each virtual node's share of one GPU when CUDA is present (Ray hides GPUs from actors that ask for none)."""
    import torch

    return round(1.0 / max(1, parallel), 3) if torch.cuda.is_available() else 0.0


def run_federated(cfg: Config, data_root: Path, out: Path, *, resume: bool = False, parallel: int = 2,
                  timeout: float = 6 * 3600) -> Path:
    """Federated training in Flower's simulation runtime, one virtual node per site of ``data_root``.

    Args:
        cfg: the run configuration (``data-root``, ``run-dir`` and ``min-sites`` are set here).
        data_root: folder with ``federation.yaml`` and the site folders.
        out: the run directory (created; made absolute).
        resume: continue from ``out/checkpoints`` when present.
        parallel: ClientApps running at once (CPU cores are shared; 2 suits a 2-core machine).
        timeout: seconds allowed for the whole run.

    Returns:
        The run directory (``metrics.json``, ``config.yaml``, ``checkpoints/``, ``logs/``).

    Raises:
        RuntimeError: the run failed (the Flower log tail is included); TimeoutError past ``timeout``.
    """
    data_root, out = Path(data_root).resolve(), Path(out).resolve()
    n = _num_sites(data_root)
    cfg = cfg.replace(data_root=str(data_root), run_dir=str(out), min_sites=n)
    out.mkdir(parents=True, exist_ok=True)
    resolved = out / "config.yaml"
    cfg.save(resolved)
    work = out / "logs" / "flower"
    t0 = time.monotonic()
    with flower_processes(work) as procs:
        port = start_superlink(procs, simulation=True)
        write_connection(procs.env, port)
        fed = (f"num-supernodes={n} client-resources-num-cpus=1 init-args-num-cpus={max(1, parallel)} "
               f"client-resources-num-gpus={_gpu_share(parallel)}")
        flwr_run(procs, {"config": str(resolved), "resume": resume}, federation_config=fed, timeout=timeout,
                 run_dir=out)
    metrics = out / "metrics.json"
    if not metrics.exists() or '"final": {}' in metrics.read_text():
        logs = (work / "flwr_run.log").read_text(errors="replace")[-4000:] if (work / "flwr_run.log").exists() else ""
        raise RuntimeError(f"federated run finished without final metrics in {metrics}; Flower log tail:\n{logs}")
    log.info("federated simulation of %d sites done in %.1f s: %s", n, time.monotonic() - t0, out)
    return out
