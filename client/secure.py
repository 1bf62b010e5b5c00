"""Secure aggregation at the site: Flower's ``secaggplus_mod`` around the project's train handler (issue 24).

``secure_train_mod`` is attached to the train handler only (DESIGN §9: mods that change updates break evaluate when
attached app-wide). A train message without SecAgg+ configs (``secure-aggregation: false``) goes straight to the
handler. A SecAgg+ message goes through ``secaggplus_mod``; at its collect stage the mod calls :func:`_adapter`,
which

1. turns the legacy ``fitins.parameters`` / ``fitins.config`` records into the handler's ``arrays`` / ``config``,
2. runs the handler (local training, DP ledger, fused validation: unchanged),
3. checks the update before masking (``omnifuse_core.secure_sum.check_update``: the server cannot see it any more)
   and encodes it per parameter group (``encode``; zeros when it withholds),
4. replies in the legacy layout the mod reads (``fitres.parameters`` = the encoded vector, ``num_examples`` = 1: every
   site has the same scalar weight, the group weights are inside the vector). The mod masks the vector and clears
   every array record; the count metrics are dropped from the clear-text metrics (they are in the masked vector).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from omnifuse_core import protocol as P
from omnifuse_core import secure_sum as ss
from omnifuse_core import weights_wire as wire
from omnifuse_core.config import Config

log = logging.getLogger(__name__)

FITINS_PARAMS, FITINS_CONFIG = "fitins.parameters", "fitins.config"
AUDIT_ENV = "OMNIFUSE_SECAGG_AUDIT_DIR"  # optional: write this site's unmasked upload there (audits, tests)


def secure_train_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Route SecAgg+ train messages through Flower's ``secaggplus_mod``; others straight to the handler."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    return secaggplus_mod(msg, ctxt, lambda m, c: _adapter(m, c, call_next))


def _legacy_reply(msg: Message, vector: np.ndarray, metrics: dict, records: dict) -> Message:
    content = RecordDict({
        "fitres.parameters": ArrayRecord({"0": Array(np.ascontiguousarray(vector, dtype=np.float64))}),
        "fitres.num_examples": MetricRecord({"num_examples": 1}),
        "fitres.metrics": ConfigRecord({}),
        "fitres.status": ConfigRecord({"code": 0, "message": "Success"}),
        P.METRICS: MetricRecord(metrics), **records})
    return Message(content, reply_to=msg)


def _adapter(msg: Message, ctxt: Context, call_next) -> Message:
    """The collect stage: legacy FitIns in, the project's handler, an encoded legacy FitRes out."""
    raw = dict(msg.content.config_records[FITINS_CONFIG])
    layout = ss.SumLayout.from_json(str(raw[P.SECURE_LAYOUT_JSON]))
    tensors = [bytes_to_ndarray(a.data) for a in msg.content.array_records[FITINS_PARAMS].values()]
    sent = {wire.PACKED: tensors[0], wire.LAYOUT: tensors[1]} if len(tensors) == 2 else {}
    global_w = wire.unpack(sent)
    msg.content.array_records[P.ARRAYS] = ArrayRecord({k: Array(v) for k, v in sent.items()})
    msg.content.config_records[P.CONFIG] = ConfigRecord(raw)
    reply = call_next(msg, ctxt)
    if reply.has_error():  # e.g. a privacy refusal: take part in the masking with zeros, say why in the clear
        log.warning("secure round: this site withholds its update: %s", reply.error.reason)
        return _legacy_reply(msg, ss.withheld(layout), {P.SECURE_WITHHELD: 1},
                             {P.INFO: ConfigRecord({P.SECURE_REASON: str(reply.error.reason)})})
    content = reply.content
    local = wire.unpack({n: a.numpy() for n, a in content.array_records[P.ARRAYS].items()})
    metrics = dict(content.metric_records[P.METRICS])
    counts = {k: int(v) for k, v in P.metrics_to_counts(metrics).items()}
    clear = {k: v for k, v in metrics.items() if not k.startswith(P.COUNT_PREFIX)}
    records = {k: v for k, v in content.items() if k not in (P.ARRAYS, P.METRICS)}
    cfg = Config.from_flat(raw, strict=False)
    reason = ss.check_update(layout, local, global_w, counts, max_update_norm=cfg.max_update_norm,
                             clipping_range=cfg.secagg_clipping_range)
    if reason is not None:
        log.warning("secure round: this site withholds its update: %s", reason)
        info = records.get(P.INFO, ConfigRecord({}))
        info[P.SECURE_REASON] = reason
        return _legacy_reply(msg, ss.withheld(layout), {**clear, P.SECURE_WITHHELD: 1}, {**records, P.INFO: info})
    vector = ss.encode(layout, local, global_w, counts)
    if os.environ.get(AUDIT_ENV):  # audits/tests: this site's own upload before masking, on this site's disk
        folder = Path(os.environ[AUDIT_ENV])
        folder.mkdir(parents=True, exist_ok=True)
        site = str(records[P.INFO].get(P.SITE, msg.metadata.dst_node_id)) if P.INFO in records else "site"
        np.save(folder / f"sent-{site}-r{int(raw.get(P.SERVER_ROUND, 0))}.npy", vector)
    return _legacy_reply(msg, vector, clear, records)
