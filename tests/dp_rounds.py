"""Shared test helper: real DP rounds of the site privacy layer (``client.site_privacy.dp_round``) on a toy site."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Optional

from client import site_privacy as sp
from omnifuse_core.config import Config


def run_dp_rounds(tmp_path, cfg: Config, rounds=(1, 2), *, n: int, record: Callable[[Config, Any], None],
                  cap: Optional[float] = None, count_params: bool = False) -> list:
    """``dp_round`` for each of ``rounds`` on an ``n``-patient toy site (one model trained across them).

    ``record(run_cfg, dp)`` sees what each round trained with; ``count_params`` passes the model's trainable
    parameter count (the pre-flight noise check and ``dp-schedule: auto`` need it).
    """
    from omnifuse_core.models import build_model
    from omnifuse_core.toy import TOY_SPECS, make_toy_dataset, toy_task
    from omnifuse_core.trainer import train_local
    from omnifuse_core.weights import trainable_count

    ds = make_toy_dataset(n, missing=[0, 0.3, 0.3, 0.5], seed=1)
    model = build_model(TOY_SPECS, toy_task(), cfg)
    site = SimpleNamespace(name="hospital_a", fingerprint="fp-a", train=ds)
    extra = {"n_params": trainable_count(model)} if count_params else {}
    out = []
    for rnd in rounds:
        def train(run_cfg, dp, rnd=rnd):
            record(run_cfg, dp)
            return train_local(model, ds, run_cfg, dp=dp, seed_offset=rnd, trained=rnd > 1)

        out.append(sp.dp_round(site, cfg, state_dir=tmp_path, max_epsilon=cap, server_round=rnd, run_id="run-1",
                               uses_tla=bool(getattr(model, "use_tla", False)), train=train, **extra))
    return out
