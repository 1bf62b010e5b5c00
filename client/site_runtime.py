"""Site-side helpers behind the ClientApp: which site this node is, loading it (cached per process), and the
train/evaluate steps. Nothing here imports flwr; ``client/app.py`` only converts records.

What leaves the site is decided here and nowhere else: the model's trainable weights (``get_trainable``), the
per-modality training counts, scalar local metrics, and the site name. Patient ids, embeddings and raw inputs never
appear in a return value.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
import yaml

from omnifuse_core import protocol as P
from omnifuse_core.batch import ModalitySpec, TaskSpec
from omnifuse_core.config import Config
from omnifuse_core.data.sitedata import CACHE_DIRNAME
from omnifuse_core.weights import get_trainable, set_trainable, trainable_count

log = logging.getLogger(__name__)

SHARED_TRACE_KEYS = ("lazy",)  # trace entries that may leave the site


class SiteSetupError(RuntimeError):
    """The node is misconfigured (no data path, bad partition id, unreadable federation.yaml, spec mismatch)."""


@dataclass(frozen=True)
class NodeSite:
    """Where this node's site lives and its hospital-set options (from node config)."""

    path: Path
    state_dir: Path
    device: str
    max_epsilon: Optional[float]
    cache_dir: Optional[Path] = None  # the site cache: <state-dir>/site-cache, else inside the site folder


def resolve_node_site(node_config: Mapping[str, Any], cfg: Config) -> NodeSite:
    """Map node config to a site folder.

    Deployment: ``data-path`` (and optionally ``state-dir``, ``device``, ``max-epsilon``) set by the hospital.
    Simulation: ``partition-id`` indexes the ``sites`` list of ``<data-root>/federation.yaml``.

    Args:
        node_config: the SuperNode's node config.
        cfg: the run configuration sent by the server (``data_root``, ``run_dir``, ``device``).

    Raises:
        SiteSetupError: naming the missing key or file and what to set.
    """
    if node_config.get("data-path"):
        path = Path(str(node_config["data-path"])).expanduser()
    elif "partition-id" in node_config and not cfg.data_root:  # `flwr run .` out of the box
        path = _synthetic_site(int(node_config["partition-id"]), int(node_config.get("num-partitions", 1)))
    elif "partition-id" in node_config:
        path = _partition_site(int(node_config["partition-id"]), cfg.data_root)
    else:
        raise SiteSetupError("node config has neither 'data-path' (deployment) nor 'partition-id' (simulation); "
                             "start the SuperNode with --node-config 'data-path=\"/abs/site\"'")
    if not path.is_dir():
        raise SiteSetupError(f"site folder {path} does not exist; check the node config 'data-path'")
    cache = path.resolve() / CACHE_DIRNAME / "site-cache"  # next to the text-embedding cache, in the site folder
    if node_config.get("state-dir"):
        state = Path(str(node_config["state-dir"])).expanduser()
        cache = state / "site-cache"
    elif cfg.run_dir and "partition-id" in node_config:  # simulation: server and sites share the machine
        state = Path(cfg.run_dir) / "site-state" / path.name
    else:
        state = Path(os.path.expanduser("~")) / ".omnifuse" / "state" / path.name
        log.warning("node config has no 'state-dir'; keeping this site's state (privacy ledger) in %s", state)
    device = str(node_config.get("device", "") or cfg.device)
    max_eps = node_config.get("max-epsilon")
    return NodeSite(path=path.resolve(), state_dir=state, device=device,
                    max_epsilon=float(max_eps) if max_eps not in (None, "") else None, cache_dir=cache)


def _synthetic_site(pid: int, n: int) -> Path:
    """A simulation node without ``data-root``: its own small synthetic site, from the data layer
    (``omnifuse_core.data.provision``)."""
    from omnifuse_core.data.provision import synthetic_federation

    return _partition_site(pid, str(synthetic_federation(pid, n)))


def _partition_site(pid: int, data_root: str) -> Path:
    if not data_root:
        raise SiteSetupError("simulation node without 'data-root': set run config key 'data-root' to the folder "
                             "holding federation.yaml")
    fed = Path(data_root) / "federation.yaml"
    try:
        sites = (yaml.safe_load(fed.read_text()) or {}).get("sites")
    except (OSError, yaml.YAMLError) as exc:
        raise SiteSetupError(f"{fed}: cannot read ({exc}); run `omnifuse synth` or write a 'sites:' list") from exc
    if not isinstance(sites, list) or not sites:
        raise SiteSetupError(f"{fed}: key 'sites' must be a non-empty list of site folder names")
    if not 0 <= pid < len(sites):
        raise SiteSetupError(f"partition-id {pid} but {fed} lists {len(sites)} sites; set num-supernodes to "
                             f"{len(sites)}")
    entry = sites[pid]
    name = entry.get("path") or entry.get("name") if isinstance(entry, dict) else entry
    return Path(data_root) / str(name)


# --- loading (cached per process: simulation actors and long-lived processes reuse it) -------------------------
_CACHE: dict[tuple, Any] = {}
_CACHE_SIZE = 4


def load_site_cached(path: Path, cfg: Config, stats: Optional[dict], cache_dir: Optional[Path] = None):
    """``omnifuse_core.data.site.load_site`` memoised on (path, config digest, statistics), a few sites deep, and
    with ``site-cache`` on (default) through the on-disk cache in ``cache_dir`` (``NodeSite.cache_dir``) that
    later ClientApp processes map in (omnifuse_core.data.site_cache)."""
    from omnifuse_core.data.site import load_site
    from omnifuse_core.data.site_cache import load_site_disk_cached

    key = (str(path), cfg.digest(), json.dumps(stats, sort_keys=True, default=str))
    if key not in _CACHE:
        while len(_CACHE) >= _CACHE_SIZE:  # a simulation worker may serve several sites
            _CACHE.pop(next(iter(_CACHE)))
        if cfg.site_cache and cache_dir is not None:
            _CACHE[key] = load_site_disk_cached(path, cfg, stats, Path(cache_dir))
        else:
            _CACHE[key] = load_site(path, cfg, stats=stats)
    return _CACHE[key]


def site_statistics(path: Path, cfg: Config) -> dict:
    """Aggregate preprocessing statistics (sums, sums of squares, counts) of one site."""
    from omnifuse_core.data.stats import site_stats

    return site_stats(path, cfg)


def describe(site) -> dict[str, str]:
    """Shapes and task of a loaded site (no patient data)."""
    return {P.SITE: site.name, P.SPECS_JSON: json.dumps([s.to_dict() for s in site.specs]),
            P.TASK_JSON: json.dumps(site.task.to_dict()), P.FINGERPRINT: str(site.fingerprint)}


def declared_modalities(path: Path) -> list[str]:
    """The modality names the site's ``site.yaml`` declares (empty when it is unusable: loading reports that)."""
    from omnifuse_core.data.descriptor import parse_descriptor

    desc, _ = parse_descriptor(Path(path))
    return list(desc.modalities) if desc is not None else []


def build_site_model(site, cfg: Config, specs_json: str, task_json: str):
    """Build the model from the *server's* specs/task, after checking the site's own specs agree."""
    from omnifuse_core.models import build_model

    specs = [ModalitySpec.from_dict(d) for d in json.loads(specs_json)]
    if list(site.specs) != specs:
        raise SiteSetupError(f"site '{site.name}' has modality specs {[s.to_dict() for s in site.specs]} but the "
                             f"federation uses {[s.to_dict() for s in specs]}; align image-size/image-channels/"
                             f"genomics-genes in the config")
    return build_model(specs, TaskSpec.from_dict(json.loads(task_json)), cfg)


def run_train(site, cfg: Config, global_w: Mapping[str, np.ndarray], *, specs_json: str, task_json: str,
              node: NodeSite, server_round: int, run_id: str = "") -> tuple[dict[str, np.ndarray], dict[str, float],
                                                                         dict]:
    """One round of local training; with ``cfg.dp`` through the site's privacy layer (``client.site_privacy``).

    Under DP the site refuses the round (:class:`~client.site_privacy.PrivacyRefused`) when its ledger is corrupt or
    the round would exceed its cap, and records the spend in its ledger before this function returns.

    Args:
        site: the loaded ``SiteData``.
        cfg: run configuration from the server.
        global_w: global trainable weights.
        specs_json, task_json: the federation's model shapes (from the server).
        node: this node's site options (device, state dir, max-epsilon).
        server_round: the round number (offsets the local seed; recorded in the privacy ledger).
        run_id: run identifier recorded in the privacy ledger (default: derived from ``cfg.run_dir``).

    Returns:
        ``(weights, metrics, info)``: trainable weights after training; numbers only (``count.*``, ``train.*``,
        ``steps``, ``privacy.*``); strings (site name, the per-epoch trace as JSON, the privacy report as JSON).
    """
    from omnifuse_core.trainer import resolve_device, train_local

    device = resolve_device(node.device)
    model = build_site_model(site, cfg, specs_json, task_json)
    set_trainable(model, global_w)
    prox = None
    if cfg.strategy == "fedprox" or cfg.proximal_mu > 0:
        prox = {n: torch.as_tensor(np.asarray(a)) for n, a in global_w.items()}

    def train(run_cfg: Config, dp):
        return train_local(model, site.train, run_cfg, device=device, prox_center=prox, dp=dp,
                           seed_offset=server_round, trained=server_round > 1)

    privacy, report = {}, None
    if cfg.dp:
        from . import site_privacy

        result, privacy, report = site_privacy.dp_round(
            site, cfg, state_dir=node.state_dir, max_epsilon=node.max_epsilon, server_round=server_round,
            run_id=site_privacy.run_id_of(cfg, run_id or "run-unknown"),
            uses_tla=bool(getattr(model, "use_tla", False)), train=train, n_params=trainable_count(model))
    else:
        result = train(cfg, None)
    metrics: dict[str, float] = {}
    metrics.update(P.counts_to_metrics(result.counts))
    metrics.update(P.prefixed(P.TRAIN_PREFIX, result.metrics))
    metrics.update(P.prefixed(P.PRIVACY_PREFIX, privacy))
    metrics[P.STEPS] = int(result.steps)
    # Only the chosen lazy combination per epoch leaves the site (the "traceable" part); the per-combination
    # scores are sums over patients and stay local.
    trace = {k: v for k, v in result.trace.items() if k in SHARED_TRACE_KEYS}
    info = {P.SITE: site.name, P.TRACE_JSON: json.dumps(_jsonable(trace))}
    if report is not None:
        from omnifuse_core.privacy.report import REPORT_INFO_KEY

        info[REPORT_INFO_KEY] = json.dumps(report, default=str)
    return get_trainable(model), metrics, info


def run_evaluate(site, cfg: Config, global_w: Mapping[str, np.ndarray], *, specs_json: str, task_json: str,
                 node: NodeSite, split: str, prediction_mode: str = "", threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of the global model on this site's ``val`` or ``test`` split (numbers; binary decisions at
    ``threshold``), plus the counts of the pooled metrics (omnifuse_core.pooled): binary, patients per score bin
    (also on val: the server chooses the threshold from them); survival test, concordant and comparable pairs."""
    from omnifuse_core.trainer import evaluate, resolve_device

    if split not in ("val", "test"):
        raise SiteSetupError(f"evaluate split must be 'val' or 'test', got {split!r}")
    model = build_site_model(site, cfg, specs_json, task_json)
    set_trainable(model, global_w)
    if prediction_mode and hasattr(model, "prediction_mode"):
        model.prediction_mode = prediction_mode
    metrics = evaluate(model, getattr(site, split), cfg, device=resolve_device(node.device),
                       score_hist=True, pair_counts=split == "test", threshold=threshold)
    counts = {k: list(metrics.pop(k)) for k in P.POOLED_KEYS if k in metrics}
    return {**P.prefixed("", metrics), **counts}  # test: the counts of the pooled metric (omnifuse_core.pooled)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)
