"""Aggregation rules and reply validation (pure numpy, no Flower)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnifuse_core.config import Config
from server.aggregation import (AGGREGATORS, FedAvg, FedOpt, Median, SiteUpdate, TrimmedMean, build_aggregator,
                                modality_aware_mean)
from server.validation import ReplyRejected, validate_arrays, validate_counts

MODS = ["ehr", "image"]
GROUPS = {"encoders.ehr.w": "enc:ehr", "encoders.image.w": "enc:image", "head.w": "shared"}
SHAPES = {"encoders.ehr.w": (2, 3), "encoders.image.w": (4,), "head.w": (3,)}


def _weights(value: float) -> dict[str, np.ndarray]:
    return {n: np.full(s, value, dtype=np.float32) for n, s in SHAPES.items()}


def _counts(ehr: int, image: int, n: int) -> dict[str, int]:
    return {"ehr": ehr, "image": image, "any": n, "n": n}


def test_site_without_images_does_not_touch_image_encoder():
    glob = _weights(0.0)
    a = SiteUpdate("a", _weights(1.0), _counts(10, 6, 10))
    b = SiteUpdate("b", _weights(5.0), _counts(20, 0, 20))  # no images at b
    c = SiteUpdate("c", _weights(3.0), _counts(30, 2, 30))
    out = modality_aware_mean(glob, [a, b, c], GROUPS)
    # image encoder: count-weighted over the sites with images only (a: 6, c: 2)
    np.testing.assert_allclose(out["encoders.image.w"], (6 * 1.0 + 2 * 3.0) / 8, rtol=1e-6)
    # ehr encoder: all three, weighted by ehr counts
    np.testing.assert_allclose(out["encoders.ehr.w"], (10 * 1 + 20 * 5 + 30 * 3) / 60, rtol=1e-6)
    # shared: weighted by "any"
    np.testing.assert_allclose(out["head.w"], (10 * 1 + 20 * 5 + 30 * 3) / 60, rtol=1e-6)
    assert all(v.dtype == np.float32 for v in out.values())


def test_group_no_site_trained_keeps_previous_global():
    glob = _weights(7.0)
    a = SiteUpdate("a", _weights(1.0), _counts(10, 0, 10))
    out = modality_aware_mean(glob, [a], GROUPS)
    np.testing.assert_array_equal(out["encoders.image.w"], glob["encoders.image.w"])
    np.testing.assert_allclose(out["head.w"], 1.0)


def test_fedavg_weights_by_n_including_image_encoder():
    glob = _weights(0.0)
    out = FedAvg().aggregate(glob, [SiteUpdate("a", _weights(1.0), _counts(1, 0, 1)),
                                    SiteUpdate("b", _weights(4.0), _counts(3, 3, 3))], GROUPS)
    np.testing.assert_allclose(out["encoders.image.w"], (1 + 12) / 4, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(value=st.floats(-100, 100, allow_nan=False, width=32), k=st.integers(1, 5),
       strategy=st.sampled_from(["modality_aware", "fedavg", "fedprox", "trimmed_mean", "median"]))
def test_identical_replies_aggregate_to_themselves(value, k, strategy):
    glob = _weights(0.5)
    agg = build_aggregator(Config(strategy=strategy))
    ups = [SiteUpdate(f"s{i}", _weights(value), _counts(3, 2, 4)) for i in range(k)]
    out = agg.aggregate(glob, ups, GROUPS)
    for n in SHAPES:
        np.testing.assert_allclose(out[n], np.float32(value), rtol=1e-6, atol=1e-6)


def test_trimmed_mean_and_median_resist_one_outlier():
    glob = _weights(0.0)
    ups = [SiteUpdate(f"s{i}", _weights(v), _counts(1, 1, 1)) for i, v in enumerate([1.0, 1.1, 0.9, 1.0, 1000.0])]
    tm = TrimmedMean(0.2).aggregate(glob, ups, GROUPS)  # drops 1 low + 1 high of 5
    np.testing.assert_allclose(tm["head.w"], (1.0 + 1.0 + 1.1) / 3, rtol=1e-6)
    md = Median().aggregate(glob, ups, GROUPS)
    np.testing.assert_allclose(md["head.w"], 1.0)


@pytest.mark.parametrize("variant", ["adam", "yogi"])
def test_fedopt_moves_towards_average_and_state_roundtrips(variant):
    glob = _weights(0.0)
    opt = FedOpt(variant, lr=0.1)
    ups = [SiteUpdate("a", _weights(1.0), _counts(2, 2, 2))]
    out = opt.aggregate(glob, ups, GROUPS)
    assert np.all(out["head.w"] > 0) and np.all(out["head.w"] <= 1.0)
    clone = FedOpt(variant, lr=0.1)
    clone.load_state(opt.state_arrays(), opt.state_meta())
    np.testing.assert_allclose(clone.aggregate(out, ups, GROUPS)["head.w"], opt.aggregate(out, ups, GROUPS)["head.w"],
                               rtol=1e-5)


def test_registry_covers_every_strategy_and_rejects_unknown():
    assert set(AGGREGATORS) == {"modality_aware", "fedavg", "fedprox", "fedadam", "fedyogi", "trimmed_mean", "median"}
    with pytest.raises(ValueError, match="strategy"):
        build_aggregator(Config(strategy="nope"))


# --- validation -----------------------------------------------------------------------------------------------
def test_valid_reply_passes():
    validate_arrays("a", _weights(1.0), SHAPES, _weights(0.0), max_update_norm=100.0)


@pytest.mark.parametrize("mutate, reason", [
    (lambda w: w.__setitem__("head.w", np.array([1.0, np.nan, 1.0], dtype=np.float32)), "non-finite"),
    (lambda w: w.__setitem__("head.w", np.ones(3, dtype=np.float64)), "float32"),
    (lambda w: w.__setitem__("head.w", np.ones(4, dtype=np.float32)), "shape"),
    (lambda w: w.pop("head.w"), "missing"),
    (lambda w: w.__setitem__("extra", np.ones(1, dtype=np.float32)), "unexpected"),
    (lambda w: w.__setitem__("head.w", np.full(3, 1e6, dtype=np.float32)), "update norm"),
])
def test_bad_reply_rejected_with_reason(mutate, reason):
    w = _weights(1.0)
    mutate(w)
    with pytest.raises(ReplyRejected, match=reason) as exc:
        validate_arrays("site-x", w, SHAPES, _weights(0.0), max_update_norm=100.0)
    assert exc.value.site == "site-x"


@pytest.mark.parametrize("counts, reason", [
    ({"ehr": -1, "image": 0, "any": 2, "n": 2}, "outside"),
    ({"ehr": 1.5, "image": 0, "any": 2, "n": 2}, "integer"),
    ({"ehr": 1, "any": 2, "n": 2}, "keys"),
    ({"ehr": 3, "image": 0, "any": 2, "n": 2}, "inconsistent"),
    ({"ehr": 1, "image": 0, "any": 2, "n": 10**12}, "outside"),
])
def test_bad_counts_rejected(counts, reason):
    with pytest.raises(ReplyRejected, match=reason):
        validate_counts("a", counts, MODS)


def test_good_counts_become_ints():
    assert validate_counts("a", {"ehr": 2.0, "image": 0, "any": 2, "n": 3}, MODS) == {"ehr": 2, "image": 0,
                                                                                          "any": 2, "n": 3}
