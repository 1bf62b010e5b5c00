"""Secure aggregation's per-group encoding (omnifuse_core.secure_sum) through SecAgg+'s own quantization
arithmetic, and the refusals (issue 24). Pure numpy + flwr's quantization helpers: fast."""
from __future__ import annotations

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from hypothesis import given, settings, strategies as st

from omnifuse_core.config import Config, ConfigError
from omnifuse_core.secure_sum import SumLayout, check_update, decode, encode, withheld
from server.aggregation import SiteUpdate, modality_aware_mean

CLIP, RANGE, MOD = 8.0, 2 ** 24, 2 ** 32


def secagg_mean(vectors: list[np.ndarray]) -> np.ndarray:
    """What SecAggPlusWorkflow returns for these uploads with every weight 1 (masks cancel; quantization stays):
    quantize each, sum mod 2**32, dequantize, remove the k-1 extra offsets, divide by k."""
    total = sum(quantize([v], CLIP, RANGE)[0].astype(np.int64) for v in vectors) % MOD
    k = len(vectors)
    return (dequantize([total], CLIP, RANGE)[0] - (k - 1) * CLIP) / k


@st.composite
def federations(draw):
    mods = [f"m{i}" for i in range(draw(st.integers(1, 4)))]
    groups = {f"enc{m}.w": f"enc:{m}" for m in mods} | {"head.w": "shared", "cra.b": "shared"}
    shapes = {n: (draw(st.integers(1, 3)), draw(st.integers(1, 4))) for n in groups}
    k = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    sites = []
    for _ in range(k):
        n = int(rng.integers(1, 500))
        counts = {m: int(rng.integers(1, n + 1)) if rng.random() < 0.6 else 0 for m in mods}  # ~40 % lack it
        counts |= {"any": n, "n": n}
        sites.append(counts)
    global_w = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
    local = [{n: (global_w[n] + rng.normal(scale=0.05, size=s)).astype(np.float32) for n, s in shapes.items()}
             for _ in sites]
    return mods, groups, shapes, global_w, local, sites


@settings(max_examples=60, deadline=None)
@given(federations())
def test_decoded_group_means_equal_modality_aware_fedavg(fed):
    mods, groups, shapes, global_w, local, sites = fed
    scale = max(c["n"] for c in sites)
    layout = SumLayout.build(shapes, groups, mods, "modality_aware", scale)
    got = decode(layout, secagg_mean([encode(layout, w, global_w, c) for w, c in zip(local, sites)]), len(sites),
                 global_w)
    want = modality_aware_mean(global_w, [SiteUpdate(f"s{i}", w, c) for i, (w, c) in enumerate(zip(local, sites))],
                               groups)
    step = 2 * CLIP / RANGE
    for name, key in zip(layout.names, layout.keys):
        weight = sum(c[key] for c in sites) / scale  # the summed a_k the group's sum is divided by
        bound = len(sites) * step / weight if weight else 0.0  # each site's rounding moves its entry < 1 step
        assert np.abs(got.weights[name] - want[name]).max() <= bound + 1e-6, name
    assert got.counts == {k: sum(c[k] for c in sites) for k in layout.count_keys}
    assert got.contributors == len(sites)


def test_a_group_no_site_trained_keeps_its_global_value_and_withheld_sites_do_not_count():
    shapes, groups = {"enc_img.w": (2, 2), "head.w": (3,)}, {"enc_img.w": "enc:image", "head.w": "shared"}
    layout = SumLayout.build(shapes, groups, ["ehr", "image"], "modality_aware", 100)
    g = {n: np.ones(s, np.float32) for n, s in shapes.items()}
    w = {n: np.full(s, 2.0, np.float32) for n, s in shapes.items()}
    no_image = {"ehr": 10, "image": 0, "any": 10, "n": 10}
    got = decode(layout, secagg_mean([encode(layout, w, g, no_image), withheld(layout)]), 2, g)
    assert np.allclose(got.weights["enc_img.w"], 1.0) and np.allclose(got.weights["head.w"], 2.0, atol=1e-5)
    assert got.contributors == 1 and got.counts["any"] == 10


def test_fedavg_weights_every_tensor_by_n():
    layout = SumLayout.build({"enc.w": (1,)}, {"enc.w": "enc:image"}, ["image"], "fedavg", 10)
    assert layout.keys == ("n",)


@pytest.mark.parametrize("change", [dict(strategy="trimmed_mean"), dict(strategy="median"), dict(central_dp=True),
                                    dict(secagg_clipping_range=0.5), dict(secagg_quantization_range=2 ** 30),
                                    dict(secagg_num_shares=3, secagg_reconstruction_threshold=3)])
def test_secure_aggregation_refuses_what_cannot_work_on_a_sum(change):
    with pytest.raises(ConfigError, match="secure-aggregation: .*(strategy|central-dp|secagg-)"):
        Config.load("smoke").replace(secure_aggregation=True, **change)
    if "strategy" in change or "central_dp" in change:
        Config.load("smoke").replace(**change)  # fine without secure aggregation


def test_site_checks_run_before_masking():
    shapes, groups = {"a": (3,)}, {"a": "shared"}
    layout = SumLayout.build(shapes, groups, ["ehr"], "modality_aware", 10)
    g, counts = {"a": np.zeros(3, np.float32)}, {"ehr": 5, "any": 5, "n": 5}

    def why(values, max_norm=1e4, clip=CLIP, c=counts):
        return check_update(layout, {"a": np.asarray(values, np.float32)}, g, c, max_update_norm=max_norm,
                            clipping_range=clip)

    assert why([0.1, 0.2, 0.3]) is None
    assert "non-finite" in why([np.nan, 0, 0])
    assert "max-update-norm" in why([3.0, 4.0, 0.0], max_norm=4.9)
    assert "secagg-clipping-range" in why([40.0, 0, 0])  # 40 * 5/10 = 20 > 8
    assert "count scale" in why([0, 0, 0], c={"ehr": 5, "any": 11, "n": 11})
    assert "inconsistent counts" in why([0, 0, 0], c={"ehr": 6, "any": 5, "n": 5})
