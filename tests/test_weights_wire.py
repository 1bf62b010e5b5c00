"""Weights on the wire (omnifuse_core.weights_wire): one packed vector + layout, exact round trip, malformed input
refused with a reason."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnifuse_core import weights_wire as wire

shapes = st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=3), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_pack_then_unpack_is_the_identity(dims):
    rng = np.random.default_rng(0)
    weights = {f"layer{i}.w": rng.normal(size=d).astype(np.float32) for i, d in enumerate(dims)}
    packed = wire.pack(weights)
    assert set(packed) == {wire.PACKED, wire.LAYOUT}
    assert packed[wire.PACKED].nbytes == sum(w.nbytes for w in weights.values())  # the same bytes, one array
    back = wire.unpack(packed)
    assert list(back) == list(weights)
    for name, w in weights.items():
        assert back[name].dtype == np.float32 and back[name].shape == w.shape
        np.testing.assert_array_equal(back[name], w)


def test_other_dtypes_and_plain_records_pass_through():
    mixed = {"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float64)}
    assert set(wire.pack(mixed)) == {"a", "b"}
    assert wire.unpack(mixed).keys() == mixed.keys()


def _layout(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


@pytest.mark.parametrize("record, reason", [
    ({wire.PACKED: np.zeros(5, np.float32), wire.LAYOUT: _layout([["a", [2, 2]]])}, "holds 4 values, the vector 5"),
    ({wire.PACKED: np.zeros(4, np.float32), wire.LAYOUT: np.frombuffer(b"{not json", np.uint8)}, "unreadable layout"),
    ({wire.PACKED: np.zeros(4, np.float32), wire.LAYOUT: _layout([["a", [2]], ["a", [2]]])}, "appears twice"),
    ({wire.PACKED: np.zeros(4, np.float32), wire.LAYOUT: _layout([["a", [-2, -2]]])}, "negative dimension"),
    ({wire.PACKED: np.zeros(4, np.float32)}, "need exactly"),
    ({wire.PACKED: np.zeros(4, np.float32), wire.LAYOUT: _layout([["a", [4]]]), "extra": np.zeros(1)}, "need exactly"),
])
def test_malformed_packed_records_are_refused_with_the_reason(record, reason):
    with pytest.raises(ValueError, match=reason):
        wire.unpack(record)


def test_server_rejects_a_reply_with_a_broken_layout():
    from flwr.app import Array, ArrayRecord

    from server.strategy import to_numpy, to_record

    record = to_record({"w": np.ones((2, 3), np.float32)})
    assert {k: v.shape for k, v in to_numpy(record).items()} == {"w": (2, 3)}
    record[wire.LAYOUT] = Array(_layout([["w", [7]]]))
    with pytest.raises(ValueError, match="holds 7 values, the vector 6"):
        to_numpy(ArrayRecord(dict(record.items())))
