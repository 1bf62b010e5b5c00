"""Flower ClientApp: one hospital. Thin: converts Flower records to numpy/dicts and calls ``site_runtime``.

Node config (set by the hospital on its SuperNode): ``data-path``, ``state-dir``, ``device``, ``max-epsilon``.
In simulation Flower supplies ``partition-id``, mapped to a site folder through ``<data-root>/federation.yaml``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from omnifuse_core import protocol as P
from omnifuse_core import weights_wire as wire
from omnifuse_core.config import Config

from . import site_runtime as rt
from .secure import secure_train_mod

log = logging.getLogger(__name__)
app = ClientApp()

# A failure we can explain (bad node config, spec mismatch, refused privacy budget) becomes an error reply whose
# reason the server logs; anything else propagates and Flower reports it as a ClientApp exception.
_EXPLAINED = (rt.SiteSetupError, ValueError, OSError, RuntimeError)
CLIENT_ERROR_CODE = 2  # flwr ErrorCode.CLIENT_APP_RAISED_EXCEPTION


def _config(msg: Message) -> tuple[Config, dict]:
    raw = dict(msg.content[P.CONFIG]) if P.CONFIG in msg.content.config_records else {}
    return Config.from_flat(raw, strict=False), raw


def _stats(raw: dict) -> dict | None:
    text = raw.get(P.STATS_JSON, "")
    return json.loads(text) if text else None


def _weights(msg: Message) -> dict:
    record = msg.content[P.ARRAYS]
    return wire.unpack({name: arr.numpy() for name, arr in record.items()})


def _process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks after boot
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return None


_FIRST_MESSAGE = [True]
_STARTUP: list[float | None] = [None]  # this message's process start-up seconds, if it is the process's first message


def _note_startup() -> None:
    """Called for every message (``_guard``): the first one a process handles gets its start-up time."""
    _STARTUP[0] = _process_age() if _FIRST_MESSAGE[0] else None
    _FIRST_MESSAGE[0] = False


class _Clock:
    """Seconds a message spends per stage (``time.load``, ``time.evaluate``, ``time.train``, ``time.serialise``),
    and, for the first message of a process, ``time.startup``: from the process's start to the handler (Python and
    package imports, Flower's app install and message pull; in a deployment every message is a fresh process)."""

    def __init__(self) -> None:
        self._t, self._laps = time.perf_counter(), {}
        if _STARTUP[0] is not None:
            self._laps["startup"] = _STARTUP[0]

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self._laps[stage] = self._laps.get(stage, 0.0) + (now - self._t)
        self._t = now

    def metrics(self) -> dict[str, float]:
        return {f"{P.TIME_PREFIX}{k}": round(v, 4) for k, v in self._laps.items()}


def _guard(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    def wrapped(msg: Message, context: Context) -> Message:
        _note_startup()
        try:
            return handler(msg, context)
        except _EXPLAINED as exc:
            log.error("%s failed at this site: %s", msg.metadata.message_type, exc)
            return Message(Error(code=CLIENT_ERROR_CODE, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
    wrapped.__name__ = handler.__name__
    return wrapped


@app.query("stats")
@_guard
def query_stats(msg: Message, context: Context) -> Message:
    """First exchange: aggregate preprocessing statistics of this site (sums, sums of squares, counts)."""
    cfg, _ = _config(msg)
    node = rt.resolve_node_site(context.node_config, cfg)
    stats = rt.site_statistics(node.path, cfg)
    info = ConfigRecord({P.SITE: node.path.name, P.SITE_STATS_JSON: json.dumps(stats),
                         P.DECLARED_JSON: json.dumps(rt.declared_modalities(node.path))})
    return Message(RecordDict({P.INFO: info}), reply_to=msg)


@app.query("describe")
@_guard
def query_describe(msg: Message, context: Context) -> Message:
    """Modality specs and task spec of this site (shapes only), loaded with the combined statistics."""
    cfg, raw = _config(msg)
    node = rt.resolve_node_site(context.node_config, cfg)
    site = rt.load_site_cached(node.path, cfg, _stats(raw), node.cache_dir)
    return Message(RecordDict({P.INFO: ConfigRecord(rt.describe(site))}), reply_to=msg)


@app.train(mods=[secure_train_mod])  # Flower SecAgg+ when the server runs it (client/secure.py)
@_guard
def train(msg: Message, context: Context) -> Message:
    """Local training from the global weights; replies with trainable weights, counts and local metrics. With
    ``eval-split`` in the config (fused evaluation) the received model is first evaluated on that split and the reply
    also carries those metrics (``val-metrics``): one exchange per round instead of two.

    With ``dp: true`` the site's privacy layer runs first and last: a refused round (corrupt ledger, budget cap)
    becomes an error reply naming the site and the projected epsilon; the spend is in the site's ledger before
    this reply is built, and the reply carries ``privacy.*`` metrics and the site's privacy report (JSON).
    """
    clock = _Clock()
    cfg, raw = _config(msg)
    node = rt.resolve_node_site(context.node_config, cfg)
    site = rt.load_site_cached(node.path, cfg, _stats(raw), node.cache_dir)
    clock.lap("load")
    received = _weights(msg)
    val = None
    if raw.get(P.EVAL_SPLIT):  # fused evaluation: the received global model on validation, before training on it
        val = rt.run_evaluate(site, cfg, received, specs_json=raw[P.SPECS_JSON], task_json=raw[P.TASK_JSON],
                              node=node, split=str(raw[P.EVAL_SPLIT]),
                              prediction_mode=str(raw.get(P.PREDICTION_MODE, "")))
        clock.lap("evaluate")
    weights, metrics, info = rt.run_train(site, cfg, received, specs_json=raw[P.SPECS_JSON],
                                          task_json=raw[P.TASK_JSON], node=node,
                                          server_round=int(raw.get(P.SERVER_ROUND, 0)),
                                          run_id=f"flower-{msg.metadata.run_id}")
    clock.lap("train")
    arrays = ArrayRecord({n: Array(a) for n, a in wire.pack(weights).items()})  # 2 Flower objects, not 1 per tensor
    clock.lap("serialise")
    content = RecordDict({P.ARRAYS: arrays, P.METRICS: MetricRecord({**metrics, **clock.metrics()}),
                          P.INFO: ConfigRecord(info), **({P.VAL_METRICS: MetricRecord(val)} if val is not None else {})})
    return Message(content, reply_to=msg)


@app.evaluate()
@_guard
def evaluate(msg: Message, context: Context) -> Message:
    """Metrics of the global model on this site's validation or test split."""
    clock = _Clock()
    cfg, raw = _config(msg)
    node = rt.resolve_node_site(context.node_config, cfg)
    site = rt.load_site_cached(node.path, cfg, _stats(raw), node.cache_dir)
    clock.lap("load")
    metrics = rt.run_evaluate(site, cfg, _weights(msg), specs_json=raw[P.SPECS_JSON], task_json=raw[P.TASK_JSON],
                              node=node, split=str(raw.get(P.SPLIT, "val")),
                              prediction_mode=str(raw.get(P.PREDICTION_MODE, "")),
                              threshold=float(raw.get(P.THRESHOLD, cfg.threshold)))
    clock.lap("evaluate")
    content = RecordDict({P.METRICS: MetricRecord({**metrics, **clock.metrics()}),
                          P.INFO: ConfigRecord({P.SITE: site.name})})
    return Message(content, reply_to=msg)

