"""Before round 1: the federated preprocessing exchange and the initial global model.

1. ``query.stats``: every site sends aggregate statistics (sums, sums of squares, counts); the server combines them.
2. ``query.describe``: every site loads its data with the combined statistics and sends its modality specs and task
   spec (shapes only). All sites must agree on the specs.
3. The server builds the model (seeded by ``cfg.seed``); its trainable weights are the initial global model.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from omnifuse_core import protocol as P
from omnifuse_core.batch import ModalitySpec, TaskSpec
from omnifuse_core.config import Config

from .exchange import send_and_receive

log = logging.getLogger(__name__)


class FederationSetupError(RuntimeError):
    """Sites are missing, failed the setup queries, or disagree on data shapes."""


@dataclass
class Federation:
    stats: dict | None
    specs_json: str
    task_json: str
    node_sites: dict[int, str]
    max_train: int = 0  # the largest site's training patients (stats query): secure aggregation's count scale


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    """Node ids once at least ``minimum`` SuperNodes are connected (raises after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise FederationSetupError(f"only {len(nodes)} of min-sites={minimum} SuperNodes connected within "
                                       f"{timeout:.0f} s; start more SuperNodes or lower min-sites")
        time.sleep(1.0)
    return nodes


def query(grid: Grid, nodes: list[int], action: str, config: dict, timeout: float,
          poll: float = 0.1) -> dict[int, Message]:
    """Send one query to every node; returns ``node id -> reply``. Any failed node aborts the setup."""
    msgs = [Message(RecordDict({P.CONFIG: ConfigRecord(dict(config))}), dst_node_id=n, message_type=action)
            for n in nodes]
    replies = {r.metadata.src_node_id: r for r in send_and_receive(grid, msgs, timeout=timeout, poll=poll)}
    errors = [f"node {n}: {r.error.reason}" for n, r in replies.items() if r.has_error()]
    missing = [n for n in nodes if n not in replies]
    if errors or missing:
        raise FederationSetupError(f"{action} failed: {'; '.join(errors)}"
                                   + (f"; no reply from nodes {missing}" if missing else ""))
    return replies


def _check_declared(replies: dict[int, Message], cfg: Config) -> None:
    """Every configured modality must be declared by some site (``omnifuse_core.data.declared``)."""
    from omnifuse_core.config import ConfigError
    from omnifuse_core.data.declared import check_declared

    infos = [r.content.config_records[P.INFO] for r in replies.values()]
    declared = {str(i[P.SITE]): json.loads(i[P.DECLARED_JSON]) for i in infos if P.DECLARED_JSON in i}
    try:
        check_declared(declared, cfg)
    except ConfigError as exc:
        raise FederationSetupError(str(exc)) from exc


def exchange(grid: Grid, cfg: Config, base: dict, timeout: float) -> Federation:
    """Run the stats and describe queries (see module docstring)."""
    from omnifuse_core.data.stats import combine_stats

    nodes = wait_for_nodes(grid, cfg.min_sites, timeout)
    log.info("setup: %d site(s) connected; exchanging preprocessing statistics", len(nodes))
    replies = query(grid, nodes, P.QUERY_STATS, base, timeout, cfg.poll_interval)
    site_stats = [json.loads(r.content.config_records[P.INFO][P.SITE_STATS_JSON]) for r in replies.values()]
    _check_declared(replies, cfg)
    stats = combine_stats(site_stats, gene_policy=cfg.genomics_gene_policy, vocab_size=cfg.ehr_vocab_size)
    replies = query(grid, nodes, P.QUERY_DESCRIBE, {**base, P.STATS_JSON: json.dumps(stats)}, timeout,
                    cfg.poll_interval)
    infos = {n: dict(r.content.config_records[P.INFO]) for n, r in replies.items()}
    node_sites = {n: str(i[P.SITE]) for n, i in infos.items()}
    first = infos[nodes[0]]
    for n, info in infos.items():
        if json.loads(info[P.SPECS_JSON]) != json.loads(first[P.SPECS_JSON]):
            raise FederationSetupError(
                f"site '{node_sites[n]}' has modality shapes {info[P.SPECS_JSON]} but site '{node_sites[nodes[0]]}' "
                f"has {first[P.SPECS_JSON]}; set image-size / image-channels / genomics-genes so all sites agree")
        if info[P.TASK_JSON] != first[P.TASK_JSON]:
            log.warning("site '%s' reports task %s, site '%s' %s; the federation uses the latter",
                        node_sites[n], info[P.TASK_JSON], node_sites[nodes[0]], first[P.TASK_JSON])
    log.info("setup: sites %s", sorted(node_sites.values()))
    return Federation(stats=stats, specs_json=first[P.SPECS_JSON], task_json=first[P.TASK_JSON],
                      node_sites=node_sites, max_train=max(int(s.get("n_train", 0) or 0) for s in site_stats))


def initial_model(cfg: Config, specs_json: str, task_json: str):
    """The seeded global model: ``(weights, shapes, groups)`` of its trainable parameters."""
    from omnifuse_core.models import build_model
    from omnifuse_core.trainer import set_seed
    from omnifuse_core.weights import get_trainable, param_groups, trainable_shapes

    set_seed(cfg.seed)
    model = build_model([ModalitySpec.from_dict(d) for d in json.loads(specs_json)],
                        TaskSpec.from_dict(json.loads(task_json)), cfg)
    weights: dict[str, np.ndarray] = dict(get_trainable(model))
    return weights, dict(trainable_shapes(model)), dict(param_groups(model))
