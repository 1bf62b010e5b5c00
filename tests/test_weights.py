"""Trainable-weight exchange: only requires_grad parameters, exact round trip, clear mismatch errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from omnifuse_core.weights import WeightsError, get_trainable, param_groups, set_trainable, trainable_shapes


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({"ehr": nn.Linear(3, 2), "text": nn.Linear(4, 2)})
        self.frozen = nn.Linear(5, 5)
        self.frozen.requires_grad_(False)
        self.bn = nn.BatchNorm1d(2)  # buffers never leave a site
        self.head = nn.Linear(2, 1)

    def param_group(self, name: str) -> str:
        parts = name.split(".")
        return f"enc:{parts[1]}" if parts[0] == "encoders" else "shared"


def test_only_trainable_parameters_leave():
    torch.manual_seed(0)
    m = Tiny()
    w = get_trainable(m)
    assert list(w) == [n for n, p in m.named_parameters() if p.requires_grad]
    assert not any(n.startswith("frozen") for n in w)
    assert not any("running" in n for n in w)
    assert all(a.dtype == np.float32 for a in w.values())
    assert trainable_shapes(m)["head.weight"] == (1, 2)


def test_roundtrip_and_copy_semantics():
    torch.manual_seed(0)
    a, b = Tiny(), Tiny()
    w = get_trainable(a)
    set_trainable(b, w)
    for n, arr in get_trainable(b).items():
        np.testing.assert_array_equal(arr, w[n])
    w["head.bias"][:] = 123.0  # the export is a copy
    assert float(a.head.bias.detach()) != 123.0


def test_mismatch_lists_every_problem():
    m = Tiny()
    w = get_trainable(m)
    w.pop("head.bias")
    w["head.weight"] = np.zeros((3, 3), dtype=np.float32)
    w["bogus"] = np.zeros(1, dtype=np.float32)
    with pytest.raises(WeightsError) as exc:
        set_trainable(m, w)
    msg = str(exc.value)
    assert "missing 'head.bias'" in msg and "unexpected 'bogus'" in msg and "head.weight" in msg


def test_param_groups_and_wrapper_prefix():
    m = Tiny()
    groups = param_groups(m)
    assert groups["encoders.ehr.weight"] == "enc:ehr" and groups["head.bias"] == "shared"

    class Wrapper(nn.Module):  # what Opacus' GradSampleModule looks like
        def __init__(self, inner):
            super().__init__()
            self._module = inner

    assert list(get_trainable(Wrapper(m))) == list(get_trainable(m))
    assert param_groups(Wrapper(m)) == groups
