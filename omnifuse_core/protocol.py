"""Names shared by the Flower ClientApp and ServerApp (they never import each other).

Everything a site sends travels under these keys; nothing else leaves a site. The module holds only constants and
small pure helpers (no flwr import), so both sides and the tests agree on one vocabulary.

Messages (``RecordDict`` keys):

* server -> client: ``ARRAYS`` (global *trainable* weights, train/evaluate only) and ``CONFIG`` (the resolved flat
  run configuration, hyphenated keys, plus the protocol keys below).
* client -> server: ``ARRAYS`` (train only: the site's trainable weights after local training), ``METRICS``
  (numbers only: counts, local metrics, privacy numbers) and ``INFO`` (strings: site name, JSON blobs of
  aggregate statistics / specs / traces).
"""
from __future__ import annotations

import math
from typing import Mapping

# --- record keys -----------------------------------------------------------------------------------------------
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
INFO = "info"

# --- message actions (Flower message type "<category>.<action>") ----------------------------------------------
QUERY_STATS = "query.stats"  # first exchange: each site sends aggregate preprocessing statistics
QUERY_DESCRIBE = "query.describe"  # each site sends modality specs + task spec (shapes only)
TRAIN = "train"
EVALUATE = "evaluate"

# --- config keys added by the server (never Config field names) ------------------------------------------------
SERVER_ROUND = "server-round"
STATS_JSON = "stats-json"  # combined (federated) preprocessing statistics, JSON
SPLIT = "split"  # evaluate: "val" or "test"
EVAL_SPLIT = "eval-split"  # train (fused evaluation): evaluate the received model on this split before training
THRESHOLD = "decision-threshold"  # evaluate (test): the binary decision threshold the server chose on validation
PREDICTION_MODE = "prediction-mode"  # evaluate: joint | heads | both, chosen by the server on validation
SECURE_LAYOUT_JSON = "secure-layout-json"  # train (secure-aggregation): omnifuse_core.secure_sum.SumLayout as JSON

# --- info keys (client -> server, strings) ---------------------------------------------------------------------
SITE = "site"
SITE_STATS_JSON = "site-stats-json"
SPECS_JSON = "specs-json"
TASK_JSON = "task-json"
TRACE_JSON = "trace-json"  # e.g. {"lazy": [["ehr", "image"], ...]} per local epoch
FINGERPRINT = "fingerprint"
HIST_POS = "hist.pos"  # evaluate reply (test, binary): positives per score bin (counts only, never scores)
HIST_NEG = "hist.neg"  # ... and negatives per score bin
CONC_NUM = "conc.num"  # evaluate reply (test, survival): concordant pairs [estimate, bootstrap replicates...]
CONC_DEN = "conc.den"  # ... and comparable pairs
POOLED_KEYS = (HIST_POS, HIST_NEG, CONC_NUM, CONC_DEN)  # list-valued counts, never per-site metrics
SECURE_REASON = "secure-reason"  # secure train reply: why the site withheld its update (it uploaded zeros)
DECLARED_JSON = "declared-json"  # stats reply: the modality names the site's site.yaml declares (names only)

# --- metric key prefixes (client -> server, numbers) -----------------------------------------------------------
VAL_METRICS = "val-metrics"  # train reply record (fused evaluation): metrics of the received model on validation
TIME_PREFIX = "time."  # seconds a site's message spent loading, evaluating, training, serialising (timing only)
COUNT_PREFIX = "count."  # count.<modality>, count.any, count.n : training samples that had it
TRAIN_PREFIX = "train."  # local training metrics (loss parts)
PRIVACY_PREFIX = "privacy."  # privacy.epsilon, privacy.delta, ... (added by the privacy layer)
STEPS = "steps"
SECURE_WITHHELD = "secure.withheld"  # secure train reply: 1 when the site uploaded zeros (reason in SECURE_REASON)
COUNT_ANY = "any"
COUNT_N = "n"

TRAIN_METRIC_PREFIXES = (COUNT_PREFIX, TRAIN_PREFIX, PRIVACY_PREFIX, TIME_PREFIX)


def counts_to_metrics(counts: Mapping[str, int]) -> dict[str, int]:
    """``{"image": 3, "any": 9, "n": 9}`` -> ``{"count.image": 3, ...}`` (ints only)."""
    return {f"{COUNT_PREFIX}{k}": int(v) for k, v in counts.items()}


def metrics_to_counts(metrics: Mapping[str, float | int]) -> dict[str, float | int]:
    """Inverse of :func:`counts_to_metrics`; other keys are ignored. Values are returned as sent (validate them)."""
    return {k[len(COUNT_PREFIX):]: v for k, v in metrics.items() if k.startswith(COUNT_PREFIX)}


def prefixed(prefix: str, values: Mapping[str, float]) -> dict[str, float]:
    """Prefix every key and keep only finite-or-NaN floats/ints (NaN marks an undefined metric)."""
    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[f"{prefix}{k}"] = float(v) if not isinstance(v, int) else v
    return out


def unprefixed(prefix: str, metrics: Mapping[str, float | int]) -> dict[str, float | int]:
    """Keys that start with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def group_count_key(group: str) -> str:
    """The count a parameter group is weighted by: ``enc:<m>`` -> ``<m>``; anything shared -> ``any``."""
    return group.split(":", 1)[1] if group.startswith("enc:") else COUNT_ANY


def json_safe(value: float) -> float | None:
    """NaN/inf -> None so metrics.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
