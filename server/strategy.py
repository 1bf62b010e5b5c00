"""The Flower strategy: FedAvg's node sampling and message construction, with OmniFuse's own reply validation,
aggregation rule (``server.aggregation``) and per-site bookkeeping."""
from __future__ import annotations

import logging
from typing import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from omnifuse_core import protocol as P
from omnifuse_core import weights_wire as wire
from omnifuse_core.config import Config

from omnifuse_core.secure_sum import SecureSum

from .aggregation import SiteUpdate, build_aggregator
from .run_dir import weighted_global
from .validation import ReplyRejected, validate_arrays, validate_counts

log = logging.getLogger(__name__)


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Named weights of a record (packed or one array per name; ``omnifuse_core.weights_wire``).

    Raises:
        ValueError: a packed record whose layout does not match its values.
    """
    return wire.unpack({name: arr.numpy() for name, arr in record.items()})


def to_record(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Weights as one packed array plus its layout (two Flower objects instead of one per tensor)."""
    return ArrayRecord({name: Array(a) for name, a in wire.pack(weights).items()})


class OmniFuseStrategy(FedAvg):
    """FedAvg's sampling + validated, modality-aware (or other ``cfg.strategy``) aggregation.

    Args:
        cfg: run configuration (strategy, min-sites, fraction-train, max-update-norm, ...).
        shapes: ``name -> shape`` of the global model's trainable parameters.
        groups: ``name -> parameter group`` (``enc:<m>`` / ``shared``).
        node_sites: ``node id -> site name`` (from the describe query), used to name failed nodes.
    """

    def __init__(self, cfg: Config, *, shapes: Mapping[str, tuple], groups: Mapping[str, str],
                 node_sites: Mapping[int, str]) -> None:
        super().__init__(fraction_train=cfg.fraction_train, fraction_evaluate=1.0, min_train_nodes=cfg.min_sites,
                         min_evaluate_nodes=cfg.min_sites, min_available_nodes=cfg.min_sites)
        self.cfg = cfg
        self.shapes = dict(shapes)
        self.groups = dict(groups)
        self.node_sites = dict(node_sites)
        self.modalities = cfg.modality_list
        self.aggregator = build_aggregator(cfg)
        self._sent: dict[str, np.ndarray] = {}
        self.train_sites: dict[str, dict] = {}
        self.train_info: dict[str, dict] = {}
        self.eval_sites: dict[str, dict] = {}
        self.eval_hists: dict[str, tuple[list[int], list[int]]] = {}  # site -> test patients per score bin (pos, neg)
        self.eval_conc: dict[str, tuple[list[float], list[float]]] = {}  # site -> concordant, comparable test pairs
        self.eval_timing: dict[str, dict] = {}  # site -> seconds its evaluate message spent per stage
        self.fused_sites: dict[str, dict] = {}  # fused evaluation: validation of the sent model, from train replies
        self.fused_hists: dict[str, tuple[list[int], list[int]]] = {}
        self.rejected: dict[str, str] = {}
        self.missing: dict[str, str] = {}  # site -> why it contributed no update this round
        self.secure: dict = {}  # secure round: what the server saw (summed counts, number of contributors)
        self._sampled: list[int] = []
        self._out: list[Message] = []  # messages of the current train or evaluate step
        self._sent_to: dict[str, int] | None = None  # their message id -> destination node
        self._connected: set[int] = set()

    def _node(self, msg: Message) -> int:
        """The node a reply answers for. The SuperLink itself answers for a node it declared dead (error "Node
        Unavailable", source = the SuperLink), so the reply is traced back to the message it replies to."""
        if self._sent_to is None:  # built once per step: the Grid sets message ids only when it sends
            self._sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in self._out if m.metadata.message_id}
        return self._sent_to.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)

    def _site(self, msg: Message) -> str:
        node = self._node(msg)
        if msg.has_content() and P.INFO in msg.content.config_records:
            name = msg.content.config_records[P.INFO].get(P.SITE)
            if name:
                self.node_sites.setdefault(node, str(name))  # a restarted node has a new id
                return str(name)
        return self.node_sites.get(node, f"node-{node}")

    def _reject(self, site: str, reason: str) -> None:
        log.warning("round reply from site '%s' left out: %s", site, reason)
        self.rejected[site] = reason

    # --- train ---------------------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._sent = to_numpy(arrays)
        self.train_sites, self.train_info, self.rejected, self.missing, self.secure = {}, {}, {}, {}, {}
        self.fused_sites, self.fused_hists = {}, {}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._out, self._sent_to = messages, None  # the Grid sets their message ids when it sends them
        self._sampled = [m.metadata.dst_node_id for m in messages]
        self._connected = set(grid.get_node_ids())
        return messages

    def _take(self, msg: Message, replied: set[int]) -> str | None:
        """Per-reply bookkeeping shared by plain and secure rounds: the reply's site, or None for an error reply
        (recorded as rejected). Fused-validation metrics are kept either way."""
        replied.add(self._node(msg))
        site = self._site(msg)
        if msg.has_error():
            self._reject(site, f"site error: {msg.error.reason}")
            return None
        if P.VAL_METRICS in msg.content.metric_records:  # fused evaluation of the model this round sent
            metrics, hist, _ = _eval_record(msg.content.metric_records[P.VAL_METRICS])
            self.fused_sites[site] = metrics
            if hist:
                self.fused_hists[site] = hist
        return site

    def _accept(self, site: str, msg: Message, metrics: dict) -> bool:
        if site in self.train_sites:
            self._reject(site, "duplicate reply for this site in one round (second one ignored)")
            return False
        self.train_sites[site] = metrics
        self.train_info[site] = dict(msg.content.config_records[P.INFO]) if P.INFO in msg.content.config_records \
            else {}
        return True

    def _finish(self, server_round: int, replied: set[int], accepted: int) -> bool:
        """Log the round's accounting; True when enough sites contributed to aggregate."""
        self.train_sites = dict(sorted(self.train_sites.items()))
        self.missing = self._missing_sites(replied)
        log.info("round %d: aggregating %d site update(s) with '%s'; %d left out", server_round, accepted,
                 self.cfg.strategy, len(self.rejected))
        if self.missing:
            log.warning("round %d: no update from site(s) %s", server_round,
                        "; ".join(f"'{s}' ({r})" for s, r in self.missing.items()))
        if accepted < self.cfg.min_train_replies:
            log.error("round %d: %d valid update(s) < min-train-replies=%d; not aggregating (the global model is "
                      "kept)", server_round, accepted, self.cfg.min_train_replies)
            return False
        return True

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates: list[SiteUpdate] = []
        replied: set[int] = set()
        for msg in replies:
            site = self._take(msg, replied)
            if site is None:
                continue
            try:
                if P.ARRAYS not in msg.content.array_records or P.METRICS not in msg.content.metric_records:
                    raise ReplyRejected(site, "reply lacks the 'arrays' or 'metrics' record")
                try:
                    arrays = to_numpy(msg.content.array_records[P.ARRAYS])
                except ValueError as exc:
                    raise ReplyRejected(site, str(exc)) from None
                validate_arrays(site, arrays, self.shapes, self._sent, self.cfg.max_update_norm)
                metrics = dict(msg.content.metric_records[P.METRICS])
                counts = validate_counts(site, P.metrics_to_counts(metrics), self.modalities)
            except ReplyRejected as exc:
                self._reject(site, exc.reason)
                continue
            if self._accept(site, msg, metrics):
                updates.append(SiteUpdate(site, arrays, counts))
        if not self._finish(server_round, replied, len(updates)):
            return None, None
        new = self.aggregator.aggregate(self._sent, updates, self.groups)
        return to_record(new), MetricRecord({"sites-accepted": len(updates), "sites-rejected": len(self.rejected)})

    def aggregate_secure(self, server_round: int, replies: Iterable[Message], sent: list[Message],
                         total: "SecureSum | None") -> ArrayRecord | None:
        """A SecAgg+ round: per-site bookkeeping from the clear-text records of the collect stage's replies, the
        model from the unmasked sum ``total`` (None: the workflow stopped; only the bookkeeping is done)."""
        self._out, self._sent_to = list(sent), None
        replied: set[int] = set()
        for msg in replies:
            site = self._take(msg, replied)
            if site is None:
                continue
            metrics = dict(msg.content.metric_records[P.METRICS]) if P.METRICS in msg.content.metric_records else {}
            if metrics.get(P.SECURE_WITHHELD):
                info = msg.content.config_records.get(P.INFO, {})
                self._reject(site, f"withheld at the site: {info.get(P.SECURE_REASON, 'no reason given')}")
                continue
            self._accept(site, msg, metrics)
        self.secure = {} if total is None else {"contributors": total.contributors, "counts": total.counts}
        if total is None:
            self.train_sites = dict(sorted(self.train_sites.items()))
            self.missing = self._missing_sites(replied)
            return None
        if total.contributors != len(self.train_sites):
            log.warning("round %d: the secure sum counts %d contributing site(s), the clear-text replies %d",
                        server_round, total.contributors, len(self.train_sites))
        if not self._finish(server_round, replied, total.contributors):
            return None
        summed = SiteUpdate("secure-sum", total.weights, dict(total.counts))
        return to_record(self.aggregator.aggregate(self._sent, [summed], self.groups))

    def _missing_sites(self, replied: set[int]) -> dict[str, str]:
        """Every site of the federation without an accepted update this round, with the reason."""
        out: dict[str, str] = {}
        for node in self._sampled:
            site = self.node_sites.get(node, f"node-{node}")
            if node not in replied and site not in self.train_sites:  # a restarted site replies under a new id
                out[site] = f"no reply within round-timeout={self.cfg.round_timeout:g} s"
        for site, reason in self.rejected.items():
            out.setdefault(site, reason)
        connected = {self.node_sites.get(n, f"node-{n}") for n in self._connected | set(self._sampled)}
        for site in self.node_sites.values():
            if site not in self.train_sites and site not in out and site not in connected:
                out[site] = "not connected when the round started"
        return dict(sorted(out.items()))

    # --- evaluate ------------------------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self.eval_sites, self.eval_hists, self.eval_conc, self.eval_timing = {}, {}, {}, {}
        self._out, self._sent_to = list(super().configure_evaluate(server_round, arrays, config, grid)), None
        return self._out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        for msg in replies:
            site = self._site(msg)
            if msg.has_error():
                log.warning("evaluation at site '%s' failed: %s", site, msg.error.reason)
                continue
            if P.METRICS not in msg.content.metric_records:
                log.warning("evaluation reply from site '%s' has no metrics record; ignored", site)
                continue
            record = msg.content.metric_records[P.METRICS]
            self.eval_sites[site], hist, conc = _eval_record(record)
            self.eval_timing[site] = P.unprefixed(P.TIME_PREFIX, dict(record))
            if hist:
                self.eval_hists[site] = hist
            if conc:
                self.eval_conc[site] = conc
        self.eval_sites = dict(sorted(self.eval_sites.items()))
        if not self.eval_sites:
            return None
        return MetricRecord(weighted_global(self.eval_sites))


def _eval_record(record) -> tuple[dict, tuple | None, tuple | None]:
    """``(metrics, score histogram, pair counts)`` of an evaluation metric record (counts: None when absent)."""
    metrics = {k: (int(v) if k == P.COUNT_N else float(v)) for k, v in record.items()
               if isinstance(v, (int, float)) and not k.startswith(P.TIME_PREFIX)}
    hist = (list(record[P.HIST_POS]), list(record[P.HIST_NEG])) if P.HIST_POS in record and P.HIST_NEG in record \
        else None
    conc = (list(record[P.CONC_NUM]), list(record[P.CONC_DEN])) if P.CONC_NUM in record and P.CONC_DEN in record \
        else None
    return metrics, hist, conc
