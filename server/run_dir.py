"""The run directory (DESIGN §8): ``config.yaml``, ``metrics.json``, ``checkpoints/``, ``logs/``.

``metrics.json``::

    {"mode": "federated", "task": ..., "fusion": ..., "strategy": ..., "headline": "auroc",
     "rounds": [{"round": 1, "global": {...}, "sites": {"<site>": {...}}, "train": {"<site>": {...}},
                 "rejected": {"<site>": "<reason>"}, "prediction_mode": ..., "seconds": ...}],
     "final": {"global": {...}, "sites": {...}, "split": "test"},
     "privacy": {"<site>": {"epsilon": ..., "delta": ...}}}

Global metrics are the sample-weighted (``n``) mean of the per-site metrics; a site whose metric is undefined
(NaN, e.g. AUROC on a single-class split) is left out of that metric's mean. NaN is written as ``null``.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from omnifuse_core.config import Config
from omnifuse_core.metrics import headline_metric
from omnifuse_core.protocol import json_safe
from omnifuse_core.tracking import Tracker, make_tracker

log = logging.getLogger(__name__)
_QUIET = ("httpx", "httpcore")  # per-request HTTP lines of Flower's transport


def weighted_global(sites: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Sample-weighted mean of every metric over the sites that define it; ``n`` is summed."""
    keys = sorted({k for m in sites.values() for k in m})
    out: dict[str, float] = {"n": int(sum(int(m.get("n", 0) or 0) for m in sites.values()))}
    for k in keys:
        if k == "n":
            continue
        pairs = [(float(m[k]), float(m.get("n", 0) or 0)) for m in sites.values()
                 if k in m and m[k] is not None and math.isfinite(float(m[k]))]
        total = sum(w for _, w in pairs)
        out[k] = sum(v * w for v, w in pairs) / total if pairs and total > 0 else float("nan")
    return out


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return json_safe(obj) if isinstance(obj, float) else obj


class RunRecorder:
    """Writes the run directory; ``metrics.json`` is rewritten atomically after every round.

    Args:
        cfg: the resolved config (``cfg.run_dir`` is the folder).
        resume: keep an existing ``metrics.json`` (rounds up to ``keep_rounds``) instead of starting fresh.
    """

    def __init__(self, cfg: Config, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.root = Path(cfg.run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.checkpoints = self.root / "checkpoints"
        cfg.save(self.root / "config.yaml")
        self.path = self.root / "metrics.json"
        self.data: dict[str, Any] = {"mode": "federated", "task": cfg.task, "fusion": cfg.fusion,
                                     "strategy": cfg.strategy, "headline": headline_metric(cfg.task),
                                     "config_digest": cfg.digest(), "rounds": [], "final": {}, "privacy": {}}
        if resume and self.path.exists():
            old = json.loads(self.path.read_text())
            self.data["rounds"] = old.get("rounds", [])
            self.data["privacy"] = old.get("privacy", {})
        self._handler: Optional[logging.Handler] = None
        self.tracker: Optional[Tracker] = make_tracker(cfg.tracking, self.root, cfg.to_flat())

    def attach_log(self, name: str = "server.log") -> None:
        """Copy every log record of this process into ``logs/<name>`` for the duration of the run."""
        self._handler = logging.FileHandler(self.root / "logs" / name)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._handler.setLevel(logging.INFO)
        self._handler.addFilter(lambda record: not record.name.startswith(_QUIET))
        root = logging.getLogger()
        root.addHandler(self._handler)
        self._root_level, self._quieted = root.level, []
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
            for h in root.handlers:  # the console keeps its level (-q stays quiet); only the file gets INFO
                if h is not self._handler and h.level == logging.NOTSET:
                    h.setLevel(self._root_level or logging.WARNING)
                    self._quieted.append(h)

    def detach_log(self) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            logging.getLogger().setLevel(self._root_level)
            for h in self._quieted:
                h.setLevel(logging.NOTSET)
            self._handler.close()
            self._handler = None

    def keep_rounds(self, upto: int) -> None:
        """On resume: drop recorded rounds after the checkpointed one."""
        self.data["rounds"] = [r for r in self.data["rounds"] if r.get("round", 0) <= upto]

    def record_round(self, entry: dict) -> None:
        self.data["rounds"] = [r for r in self.data["rounds"] if r.get("round") != entry["round"]] + [entry]
        self.write()

    def update_round(self, rnd: int, fields: dict) -> None:
        """Add ``fields`` to round ``rnd``'s entry (with fused evaluation a round's validation arrives with the next
        round's training replies); creates the entry when a resumed run lost it."""
        for entry in self.data["rounds"]:
            if entry.get("round") == rnd:
                entry.update(fields)
                break
        else:
            self.data["rounds"] = sorted(self.data["rounds"] + [{"round": rnd, **fields}],
                                         key=lambda e: e.get("round", 0))
        self.write()

    def record_privacy(self, site: str, values: Mapping[str, float]) -> None:
        if values:
            self.data["privacy"][site] = dict(values)

    def record_final(self, final: dict) -> None:
        self.data["final"] = final
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_clean(self.data), indent=1, allow_nan=False))
        os.replace(tmp, self.path)
        self._track()

    def _track(self) -> None:
        """Hand the record to the tracker; a failing tracker is switched off (metrics.json stays the record)."""
        if self.tracker is None:
            return
        try:
            self.tracker.update(self.data)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("tracking '%s' failed and is off for the rest of this run (metrics.json is complete): %s",
                        self.cfg.tracking, exc)
            self.tracker = None

    def close(self) -> None:
        """End of the run: stop copying the log and flush and close the tracker."""
        self.detach_log()
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
