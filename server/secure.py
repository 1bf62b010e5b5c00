"""One training round through Flower's SecAgg+ (``secure-aggregation: true``, issue 24).

``SecAggPlusWorkflow`` is built for Flower's legacy server loop: it needs a ``LegacyContext`` holding a legacy
``Strategy`` and a client manager. This module drives it from the project's own loop (``server.loop``) for one round:

* the project's strategy still samples the round's nodes and builds the train config (``configure_train``);
* a legacy-Strategy shim (:class:`_RoundShim`) hands the workflow those nodes (``GridClientProxy``) and the global
  weights as ``FitIns``, and receives the unmasked sum in ``aggregate_fit``;
* a relay (:class:`_Relay`) passes the workflow's four exchanges through ``server.exchange.send_and_receive`` (the
  short poll) and keeps the collect stage's replies: their clear-text metrics (train losses, DP epsilon, TLA trace,
  fused validation) feed the per-round records as before; their arrays were cleared by the sites' ``secaggplus_mod``;
* ``omnifuse_core.secure_sum.decode`` turns the sum into modality-aware group means; the strategy's aggregation
  rule (modality-aware, FedAvg/FedProx, FedAdam/FedYogi) applies them (``OmniFuseStrategy.aggregate_secure``).
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, bytes_to_ndarray, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from omnifuse_core import protocol as P
from omnifuse_core import weights_wire as wire
from omnifuse_core.config import Config
from omnifuse_core.secure_sum import SecureSumError, SumLayout, decode

from .exchange import send_and_receive

log = logging.getLogger(__name__)
MODULUS = 2 ** 32  # SecAgg+'s modulus_range (its largest allowed value)
AUDIT_ENV = "OMNIFUSE_SECAGG_AUDIT_DIR"  # optional: where to write what the server received (see _audit)


def _shares(value: float) -> int | float:
    """Config fraction (<= 1) stays a float (Flower: share of the round's sites); a count becomes an int."""
    return float(value) if value <= 1 else int(value)


def workflow(cfg: Config) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow with the run's settings (every site has weight 1; see omnifuse_core.secure_sum)."""
    return SecAggPlusWorkflow(num_shares=_shares(cfg.secagg_num_shares),
                              reconstruction_threshold=_shares(cfg.secagg_reconstruction_threshold),
                              max_weight=1.0, clipping_range=cfg.secagg_clipping_range,
                              quantization_range=cfg.secagg_quantization_range, modulus_range=MODULUS,
                              timeout=cfg.round_timeout)


class _RoundShim(Strategy):
    """The legacy Strategy the workflow calls: fixed nodes and FitIns out, the unmasked sum in."""

    def __init__(self, proxies: list[GridClientProxy], fitins: FitIns) -> None:
        self.proxies, self.fitins = proxies, fitins
        self.sum: np.ndarray | None = None
        self.k = 0

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(proxy, self.fitins) for proxy in self.proxies]

    def aggregate_fit(self, server_round, results, failures):
        if results:
            self.sum = parameters_to_ndarrays(results[0][1].parameters)[0]
            self.k = len(results)
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _Relay:
    """The Grid the workflow sees: the project's short-poll exchange; keeps what each stage sent and received."""

    def __init__(self, grid: Grid, poll: float) -> None:
        self._grid, self._poll = grid, poll
        self.stages: list[tuple[list[Message], list[Message]]] = []

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        # the workflow gives every node of a stage the same RecordDict and the sites' mod edits it in place: on an
        # in-process transport one site's edit would reach the next, so each message gets its own copy
        messages = [Message(copy.deepcopy(m.content), dst_node_id=m.metadata.dst_node_id,
                            message_type=m.metadata.message_type, group_id=m.metadata.group_id) for m in messages]
        replies = send_and_receive(self._grid, messages, timeout=timeout if timeout is not None else 3600.0,
                                   poll=self._poll)
        self.stages.append((messages, replies))
        return replies

    def __getattr__(self, name):
        return getattr(self._grid, name)


def train_round(grid: Grid, strategy, rnd: int, arrays: ArrayRecord, config: ConfigRecord, layout: SumLayout,
                run_id: int = 0) -> ArrayRecord | None:
    """One secure round: sample, run SecAgg+, decode, aggregate. Returns the new global weights (None = kept).

    Raises:
        SecureSumError: the workflow stopped before unmasking (too few sites left for the reconstruction
            threshold, or fewer than 2 sites sampled); the run can be resumed from its last checkpoint.
    """
    cfg: Config = strategy.cfg
    config = ConfigRecord({**dict(config), P.SECURE_LAYOUT_JSON: layout.to_json()})
    messages = list(strategy.configure_train(rnd, arrays, config, grid))
    nodes = [m.metadata.dst_node_id for m in messages]
    if len(nodes) < 2:
        raise SecureSumError(f"round {rnd}: secure aggregation needs at least 2 sites in a round, {len(nodes)} "
                             f"sampled; start more SuperNodes (min-sites) or set secure-aggregation: false")
    if len(nodes) * cfg.secagg_quantization_range >= MODULUS:
        raise SecureSumError(f"round {rnd}: {len(nodes)} sites x secagg-quantization-range "
                             f"{cfg.secagg_quantization_range} reach SecAgg+'s modulus 2**32 (the sum would wrap); "
                             f"lower secagg-quantization-range")
    train_cfg = dict(messages[0].content.config_records[P.CONFIG])  # FedAvg added server-round
    packed = wire.pack({n: a for n, a in _numpy(arrays).items()})
    fitins = FitIns(ndarrays_to_parameters([packed[wire.PACKED], packed[wire.LAYOUT]]), train_cfg)
    relay = _Relay(grid, cfg.poll_interval)
    shim = _RoundShim([GridClientProxy(n, relay, run_id) for n in nodes], fitins)
    manager = SimpleClientManager()
    for proxy in shim.proxies:
        manager.register(proxy)
    state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: rnd}),
                        MAIN_PARAMS_RECORD: ArrayRecord()})
    context = LegacyContext(Context(run_id=run_id, node_id=0, node_config={}, state=state, run_config={}),
                            strategy=shim, client_manager=manager)
    workflow(cfg)(relay, context)
    sent, replies = relay.stages[2] if len(relay.stages) > 2 else ([], [])
    if shim.sum is None:
        strategy.aggregate_secure(rnd, replies, sent, None)
        raise SecureSumError(
            f"round {rnd}: secure aggregation stopped after stage {len(relay.stages)} of 4: too few sites answered "
            f"to reach secagg-reconstruction-threshold={cfg.secagg_reconstruction_threshold:g} (missing: "
            f"{sorted(strategy.missing) or 'see the log'}); the run's last checkpoint is round {rnd - 1}: restart "
            f"the sites and resume with resume=true, or lower secagg-reconstruction-threshold")
    total = decode(layout, shim.sum, shim.k, strategy._sent)
    new = strategy.aggregate_secure(rnd, replies, sent, total)
    if os.environ.get(AUDIT_ENV):
        _audit(Path(os.environ[AUDIT_ENV]), rnd, replies, strategy, shim.sum)
    return new


def _audit(folder: Path, rnd: int, replies: list[Message], strategy, mean: np.ndarray) -> None:
    """``OMNIFUSE_SECAGG_AUDIT_DIR``: write what this ServerApp received from each site in the collect stage (the
    masked integer vector) and the unmasked mean, for audits and the real-process test (docs/privacy.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    for msg in replies:
        if msg.has_error() or RECORD_KEY_CONFIGS not in msg.content.config_records:
            continue
        masked = msg.content.config_records[RECORD_KEY_CONFIGS].get(SecAggKey.MASKED_PARAMETERS) or []
        if len(masked) == 2:  # [weight factor, vector]
            np.save(folder / f"received-{strategy._site(msg)}-r{rnd}.npy", bytes_to_ndarray(masked[1]))
    np.save(folder / f"mean-r{rnd}.npy", np.asarray(mean))


def _numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return wire.unpack({name: arr.numpy() for name, arr in arrays.items()})
