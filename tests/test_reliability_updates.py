"""Malformed site updates through the real strategy (``OmniFuseStrategy.aggregate_train``): every kind of bad reply is
rejected and logged with the site and the reason, and the aggregate is bit-identical to the one without it; robust
rules bound the damage of one plausible-but-wrong site; too few valid updates leave the global model unchanged."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from grid_fakes import task_identity  # noqa: F401 (autouse fixture)
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from omnifuse_core import protocol as P
from omnifuse_core.config import Config
from server.aggregation import SiteUpdate, build_aggregator
from server.strategy import OmniFuseStrategy, to_numpy, to_record

GROUPS = {"enc.ehr.w": "enc:ehr", "enc.image.w": "enc:image", "head.w": "shared", "head.b": "shared"}
SHAPES = {"enc.ehr.w": (3, 4), "enc.image.w": (5,), "head.w": (2, 3), "head.b": (2,)}
SITES = {1: "site_a", 2: "site_b", 3: "site_c", 4: "site_bad"}




class NodesGrid:
    """Just enough of a Grid for ``configure_train``: the connected node ids."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}


def _honest(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: (w + 0.1 * rng.normal(size=w.shape)).astype(np.float32) for n, w in _global().items()}


def _counts(ehr=8, image=5, any_=8, n=10) -> dict:
    return {"ehr": ehr, "image": image, "any": any_, "n": n}


def _reply(train_msg: Message, arrays, counts, site: str) -> Message:
    content = RecordDict({P.INFO: ConfigRecord({P.SITE: site})})
    if arrays is not None:
        content[P.ARRAYS] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    if counts is not None:
        content[P.METRICS] = MetricRecord({**P.counts_to_metrics({}), **{f"{P.COUNT_PREFIX}{k}": v
                                                                         for k, v in counts.items()},
                                           "train.loss": 0.5, P.STEPS: 3})
    return Message(content, reply_to=train_msg)


def _round(cfg: Config, bad=None, strategy_name: str | None = None):
    """One train round with three honest sites and optionally ``bad(msg) -> reply`` from node 4."""
    if strategy_name:
        cfg = cfg.replace(strategy=strategy_name)
    strat = OmniFuseStrategy(cfg, shapes=SHAPES, groups=GROUPS, node_sites=SITES)
    nodes = [1, 2, 3] + ([4] if bad else [])
    msgs = {m.metadata.dst_node_id: m for m in strat.configure_train(1, to_record(_global()), ConfigRecord({}),
                                                                     NodesGrid(nodes))}
    replies = [_reply(msgs[i], _honest(i), _counts(n=10 * i, any_=8 * i, ehr=8 * i, image=5 * i), SITES[i])
               for i in (1, 2, 3)]
    if bad:
        replies.append(bad(msgs[4]))
    arrays, _ = strat.aggregate_train(1, replies)
    return strat, (to_numpy(arrays) if arrays is not None else None)


def _w(**changes):
    w = _honest(4)
    for k, v in changes.items():
        w[k.replace("__", ".")] = v
    return w


def _without(key):
    w = _honest(4)
    w.pop(key)
    return w


BAD_REPLIES = {
    "nan": (lambda m: _reply(m, _w(head__b=np.array([np.nan, 0], np.float32)), _counts(), "site_bad"), "non-finite"),
    "inf": (lambda m: _reply(m, _w(enc__image__w=np.full(5, np.inf, np.float32)), _counts(), "site_bad"),
            "non-finite"),
    "wrong shape": (lambda m: _reply(m, _w(head__w=np.zeros((3, 2), np.float32)), _counts(), "site_bad"), "shape"),
    "float64": (lambda m: _reply(m, _w(head__b=np.zeros(2, np.float64)), _counts(), "site_bad"), "float32"),
    "int64": (lambda m: _reply(m, _w(head__b=np.zeros(2, np.int64)), _counts(), "site_bad"), "float32"),
    "float16": (lambda m: _reply(m, _w(head__b=np.zeros(2, np.float16)), _counts(), "site_bad"), "float32"),
    "missing key": (lambda m: _reply(m, _without("head.b"), _counts(), "site_bad"), "missing"),
    "extra key": (lambda m: _reply(m, {**_honest(4), "backdoor.w": np.zeros(2, np.float32)}, _counts(), "site_bad"),
                  "unexpected"),
    "enormous norm": (lambda m: _reply(m, _w(enc__ehr__w=np.full((3, 4), 1e5, np.float32)), _counts(), "site_bad"),
                      "update norm"),
    "negative count": (lambda m: _reply(m, _honest(4), _counts(n=-5), "site_bad"), "outside"),
    "absurd count": (lambda m: _reply(m, _honest(4), _counts(n=10 ** 12, any_=10 ** 12), "site_bad"), "outside"),
    "fractional count": (lambda m: _reply(m, _honest(4), _counts(ehr=2.5), "site_bad"), "integer"),
    "nan count": (lambda m: _reply(m, _honest(4), _counts(image=float("nan")), "site_bad"), "integer"),
    "inconsistent counts": (lambda m: _reply(m, _honest(4), _counts(image=50, any_=8), "site_bad"), "inconsistent"),
    "missing count key": (lambda m: _reply(m, _honest(4), {"ehr": 1, "any": 1, "n": 1}, "site_bad"), "count keys"),
    "no arrays record": (lambda m: _reply(m, None, _counts(), "site_bad"), "lacks"),
    "no metrics record": (lambda m: _reply(m, _honest(4), None, "site_bad"), "lacks"),
    "error reply": (lambda m: Message(Error(code=2, reason="RuntimeError: disk full"), reply_to=m), "disk full"),
}


@pytest.mark.parametrize("strategy_name", ["modality_aware", "fedavg", "trimmed_mean", "median", "fedadam"])
@pytest.mark.parametrize("kind", sorted(BAD_REPLIES))
def test_bad_reply_rejected_logged_and_aggregate_unchanged(kind, strategy_name, caplog):
    make, reason = BAD_REPLIES[kind]
    cfg = Config(modalities="ehr,image", max_update_norm=100.0, strategy=strategy_name)
    _, clean = _round(cfg)
    with caplog.at_level(logging.WARNING, logger="server.strategy"):
        strat, poisoned = _round(cfg, bad=make)
    assert set(strat.rejected) == {"site_bad"} and reason in strat.rejected["site_bad"]
    assert set(strat.missing) == {"site_bad"}
    assert set(strat.train_sites) == {"site_a", "site_b", "site_c"}
    logged = [r.getMessage() for r in caplog.records if "site_bad" in r.getMessage()]
    assert any(reason in line for line in logged), logged
    for name in SHAPES:  # bit-identical: the bad reply had no influence at all
        np.testing.assert_array_equal(poisoned[name], clean[name])


def test_duplicate_reply_from_one_site_counts_once():
    cfg = Config(modalities="ehr,image")
    _, clean = _round(cfg)
    strat, dup = _round(cfg, bad=lambda m: _reply(m, _honest(99), _counts(n=1000, any_=1000, ehr=1000, image=1000),
                                                  "site_a"))
    assert "duplicate" in strat.rejected["site_a"]
    for name in SHAPES:
        np.testing.assert_array_equal(dup[name], clean[name])


def test_missing_reply_is_recorded_and_too_few_updates_keep_the_model():
    cfg = Config(modalities="ehr,image", min_train_replies=3)
    strat = OmniFuseStrategy(cfg, shapes=SHAPES, groups=GROUPS, node_sites=SITES)
    msgs = {m.metadata.dst_node_id: m for m in strat.configure_train(1, to_record(_global()), ConfigRecord({}),
                                                                     NodesGrid([1, 2, 3]))}
    replies = [_reply(msgs[i], _honest(i), _counts(), SITES[i]) for i in (1, 2)]  # site_c never answers
    arrays, _ = strat.aggregate_train(1, replies)
    assert arrays is None  # 2 valid updates < min-train-replies=3: nothing aggregated
    assert "no reply" in strat.missing["site_c"]
    assert strat.missing["site_bad"] == "not connected when the round started"
    arrays, _ = OmniFuseStrategy(cfg.replace(min_train_replies=2), shapes=SHAPES, groups=GROUPS,
                                 node_sites=SITES).aggregate_train(1, [])
    assert arrays is None


# --- robust aggregation: one plausible-but-wrong site ----------------------------------------------------------
@pytest.mark.parametrize("attack", ["sign_flip", "scaled", "shifted"])
def test_robust_rules_bound_one_plausible_attacker(attack):
    """Five honest sites + one attacker whose update passes validation (finite, right shapes, norm under the bound).
    Trimmed mean and median stay close to the honest mean; FedAvg (weighted by the claimed count) is dragged off."""
    rng = np.random.default_rng(1)
    glob = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    honest_dir = {n: rng.normal(size=s) for n, s in SHAPES.items()}
    honest = [{n: (0.1 * honest_dir[n] + 0.02 * rng.normal(size=s)).astype(np.float32) for n, s in SHAPES.items()}
              for _ in range(5)]
    bad = {"sign_flip": {n: (-10 * 0.1 * honest_dir[n]).astype(np.float32) for n in SHAPES},
           "scaled": {n: (10 * 0.1 * honest_dir[n]).astype(np.float32) for n in SHAPES},
           "shifted": {n: np.full(s, 1.0, np.float32) for n, s in SHAPES.items()}}[attack]
    counts = _counts()
    ups = [SiteUpdate(f"h{i}", w, counts) for i, w in enumerate(honest)]
    attacker = SiteUpdate("evil", bad, _counts(n=50, any_=50, ehr=50, image=50))  # claims a big (valid) count
    honest_mean = {n: np.mean([w[n] for w in honest], axis=0) for n in SHAPES}
    norm = float(np.sqrt(sum(np.sum(bad[n].astype(np.float64) ** 2) for n in SHAPES)))
    assert norm < Config().max_update_norm  # passes validation

    def dist(out):
        return float(np.sqrt(sum(np.sum((out[n] - honest_mean[n]) ** 2) for n in SHAPES)))

    spread = max(dist(w) for w in honest)  # how far an honest site itself is from the honest mean
    fedavg = dist(build_aggregator(Config(strategy="fedavg")).aggregate(glob, ups + [attacker], GROUPS))
    for name in ("trimmed_mean", "median"):
        robust = dist(build_aggregator(Config(strategy=name, trim_fraction=0.2)).aggregate(glob, ups + [attacker],
                                                                                            GROUPS))
        assert robust <= spread, (name, robust, spread)  # within the honest sites' own spread
        assert robust < 0.2 * fedavg, (name, robust, fedavg)


def test_robust_rules_skip_sites_without_the_modality():
    """A site without images must not pull the image encoder of a robust rule back to the old global value."""
    glob = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    with_img = [SiteUpdate(f"s{i}", {n: np.full(s, 1.0, np.float32) for n, s in SHAPES.items()}, _counts())
                for i in range(2)]
    no_img = [SiteUpdate(f"t{i}", {n: np.full(s, 0.0 if "image" in n else 1.0, np.float32)
                                   for n, s in SHAPES.items()}, _counts(image=0)) for i in range(3)]
    for name in ("trimmed_mean", "median"):
        out = build_aggregator(Config(strategy=name)).aggregate(glob, with_img + no_img, GROUPS)
        np.testing.assert_array_equal(out["enc.image.w"], 1.0)
        only_none = build_aggregator(Config(strategy=name)).aggregate(glob, no_img, GROUPS)
        np.testing.assert_array_equal(only_none["enc.image.w"], glob["enc.image.w"])
