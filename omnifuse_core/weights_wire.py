"""Model weights on the wire: one flat array plus its layout, instead of one array per parameter tensor.

Flower 1.41/1.42 moves a message as separate objects — one per ``Array`` plus its buffer — each pulled or pushed
with its own HTTP request at every hop (SuperLink ↔ SuperNode ↔ ClientApp). The smoke model's 101 tensors made
208 requests per message each way; B7's deployment round spent seconds on them (BENCHMARKS.md, "B7 floor"). Packing
the trainable weights into one float32 vector and a small JSON layout (names, shapes) makes it 2 arrays; the bytes
are the same. Numpy only (no Flower): ``client/`` and ``server/`` wrap these in ``ArrayRecord``\\ s.

``unpack`` checks what it is given (a layout that is valid JSON, names unique, sizes that add up to the vector), so
a malformed reply is refused by the server's validation like any other bad update; a record without the packed
keys is read as one array per name (what older senders and the tests' hand-built records use).
"""
from __future__ import annotations

import json
import math
from typing import Mapping

import numpy as np

PACKED = "packed.values"  # float32 vector: every tensor, raveled in layout order
LAYOUT = "packed.layout"  # uint8 bytes of JSON: [[name, [shape...]], ...]


def pack(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{PACKED: vector, LAYOUT: json bytes}`` for float32 weights; other dtypes are sent one array per name."""
    arrays = {name: np.asarray(a) for name, a in weights.items()}
    if not arrays or any(a.dtype != np.float32 for a in arrays.values()):
        return {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    layout = [[name, list(a.shape)] for name, a in arrays.items()]
    values = np.concatenate([a.reshape(-1) for a in arrays.values()])
    return {PACKED: np.ascontiguousarray(values, dtype=np.float32),
            LAYOUT: np.frombuffer(json.dumps(layout).encode("utf-8"), dtype=np.uint8).copy()}


def unpack(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The named tensors of a record made by :func:`pack` (or the record itself when it is not packed).

    Raises:
        ValueError: a packed record whose layout is unreadable or does not match its vector.
    """
    if PACKED not in arrays and LAYOUT not in arrays:
        return dict(arrays)
    if set(arrays) != {PACKED, LAYOUT}:
        raise ValueError(f"packed weights need exactly '{PACKED}' and '{LAYOUT}', got {sorted(arrays)}")
    try:
        layout = json.loads(np.asarray(arrays[LAYOUT], dtype=np.uint8).tobytes().decode("utf-8"))
        entries = [(str(name), tuple(int(d) for d in shape)) for name, shape in layout]
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"packed weights: unreadable layout ({exc})") from None
    names = [name for name, _ in entries]
    if len(set(names)) != len(names):
        raise ValueError("packed weights: a parameter name appears twice in the layout")
    if any(d < 0 for _, shape in entries for d in shape):
        raise ValueError("packed weights: negative dimension in the layout")
    values = np.asarray(arrays[PACKED]).reshape(-1)
    sizes = [math.prod(shape) for _, shape in entries]
    if sum(sizes) != values.size:
        raise ValueError(f"packed weights: the layout holds {sum(sizes)} values, the vector {values.size}")
    out, start = {}, 0
    for (name, shape), size in zip(entries, sizes):
        out[name] = values[start:start + size].reshape(shape)
        start += size
    return out
