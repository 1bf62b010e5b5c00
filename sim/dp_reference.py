"""DP-SGD for the reference modes (``centralized`` and ``local``) and the in-memory benchmark trainers, through the
same site privacy layer a federated site uses (``client.site_privacy.dp_round``): σ calibrated once for the planned
schedule, the pre-flight noise check, the budget guard, a durable ledger, and a privacy report.

* ``centralized``: one accountant for the pooled training set (``name = "pooled"``): the guarantee covers each
  pooled patient, as if one hospital held them all — the like-for-like reference for federated DP utility.
* ``local``: one accountant per site, exactly what that site would spend in a federation of the same schedule.

State (calibration, ledger) lives under ``<run>/site-state/<name>``; reports go to ``<run>/privacy/`` as in a
federated run. The cap of a reference run is its own target epsilon (one planned run's worth). Nothing here
imports flwr.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

from omnifuse_core.config import Config
from omnifuse_core.weights import trainable_count


def pooled_fingerprint(fingerprints: list[str]) -> str:
    """The pooled training set's ledger key: a hash of the sites' fingerprints in order."""
    return hashlib.sha256(json.dumps(list(fingerprints)).encode()).hexdigest()


class ReferenceDP:
    """Runs ``train_local`` with or without DP-SGD for one population per name, and collects the reports.

    Args:
        cfg: run configuration (``dp`` decides whether anything here applies).
        run_dir: the run directory (state under ``site-state/``, reports under ``privacy/``).
        recorder: optional ``server.run_dir.RunRecorder`` (its ``privacy`` entry gets each population's numbers).
    """

    def __init__(self, cfg: Config, run_dir: Path, recorder=None) -> None:
        self.cfg, self.run_dir, self.recorder = cfg, Path(run_dir), recorder
        self.reports: dict[str, dict] = {}
        self.metrics: dict[str, dict] = {}

    def train(self, name: str, fingerprint: str, train_ds, model, rnd: int,
              train: Callable[[Config, object], object]):
        """One round's training of ``model`` on ``train_ds``; ``train(cfg, dp_settings)`` runs ``train_local``.

        Raises:
            client.site_privacy.PrivacyRefused: the pre-flight check, the budget or the ledger refuses.
        """
        if not self.cfg.dp:
            return train(self.cfg, None)
        from client.site_privacy import dp_round, run_id_of

        population = SimpleNamespace(name=name, fingerprint=fingerprint, train=train_ds)
        result, metrics, report = dp_round(
            population, self.cfg, state_dir=self.run_dir / "site-state" / name,
            max_epsilon=float(self.cfg.target_epsilon), server_round=rnd,
            run_id=run_id_of(self.cfg, "run-reference"), uses_tla=bool(getattr(model, "use_tla", False)),
            train=train, n_params=trainable_count(model))
        self.reports[name], self.metrics[name] = {**report, "site": name}, metrics
        if self.recorder is not None:
            self.recorder.record_privacy(name, metrics)
        return result

    def write(self) -> Optional[dict]:
        """``<run>/privacy/`` from the latest report of every population (None when DP is off)."""
        if not self.cfg.dp or not self.reports:
            return None
        from omnifuse_core.privacy.report import federation_summary, write_reports

        reports = [self.reports[k] for k in sorted(self.reports)]
        summary = federation_summary(reports)
        write_reports(self.run_dir, reports, summary)
        return summary
