"""Experiment tracking: a run's ``metrics.json`` also written as TensorBoard event files (``tracking: tensorboard``).

``metrics.json`` stays the record; a tracker is a derived view of it that a tracking UI reads while the run goes.
Every mode (federated through Flower, centralized, local) records through ``server.run_dir.RunRecorder``, which hands
the whole record to its tracker after each write; the tracker writes the scalars it has not written yet, with the
round as the step:

==========================  =================================================================================
tag                         value
==========================  =================================================================================
``val/<metric>``            validation metric of the global model (sample-weighted over the sites)
``val_site/<metric>/<s>``   the same metric at site ``s``
``train/<key>/<s>``         site ``s``'s training losses and step count for the round
``train/rejected_sites``    sites whose update the server rejected that round
``time/round_seconds``      wall time of the round; ``time/<message>_<phase>/<s>`` per site message
``privacy/<key>/<s>``       site ``s``'s spent privacy budget (epsilon, ...) after the round
``test/<metric>``           final test metrics (step = the last round), ``test_site/<metric>/<s>`` per site,
                            ``test/pooled_binned_auroc`` etc. for the pooled metrics (``test/pooled_<m>``
                            in centralized runs)
==========================  =================================================================================

plus the resolved config as text (tag ``config``). Event files go to ``RUN/tensorboard/``; compare runs with
``tensorboard --logdir runs/``. Nothing here reads patient data: it carries what ``metrics.json`` carries.

The writer is ``tensorboardX`` (event files without TensorFlow or the TensorBoard server), an optional extra:
``pip install 'omnifuse-fl[tracking]'``. A resumed or restarted run rebuilds the event files from ``metrics.json``,
so they never disagree with it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import yaml

from .config import ConfigError
from .registry import Registry

log = logging.getLogger(__name__)
TRACKERS: Registry["Tracker"] = Registry("tracker")
EVENT_GLOB = "events.out.tfevents.*"


class TrackingError(ConfigError):
    """A tracker that cannot start (its package is missing); the message says what to install."""


class Tracker:
    """Writes the scalars of a run record it has not written yet; ``close`` flushes."""

    def update(self, record: Mapping[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


@TRACKERS.register("none")
class NullTracker(Tracker):
    def __init__(self, root: Path, config: Optional[Mapping[str, Any]] = None) -> None:
        pass

    def update(self, record: Mapping[str, Any]) -> None:
        pass


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """TensorBoard event files under ``root`` (the run directory's ``tensorboard/``)."""

    def __init__(self, root: Path, config: Optional[Mapping[str, Any]] = None) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as exc:
            raise TrackingError("tracking: tensorboard needs the tensorboardX package; install it with "
                                "pip install 'omnifuse-fl[tracking]' (or set tracking: none)") from exc
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        stale = sorted(self.root.glob(EVENT_GLOB))
        for path in stale:  # a derived view: rebuilt from metrics.json rather than appended to
            path.unlink()
        if stale:
            log.info("tracking: rebuilding %d TensorBoard event file(s) in %s from metrics.json", len(stale), self.root)
        self._writer = SummaryWriter(logdir=str(self.root), flush_secs=5)
        self._written: set[tuple[str, int]] = set()
        if config:
            text = yaml.safe_dump(dict(config), sort_keys=False)
            self._writer.add_text("config", "```\n" + text + "\n```", 0)

    def update(self, record: Mapping[str, Any]) -> None:
        new = 0
        for tag, step, value in record_scalars(record):
            if (tag, step) not in self._written:
                self._writer.add_scalar(tag, value, step)
                self._written.add((tag, step))
                new += 1
        if new:
            self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def make_tracker(name: str, run_dir: Path, config: Optional[Mapping[str, Any]] = None) -> Tracker:
    """The tracker ``name`` for the run in ``run_dir`` (``none`` writes nothing)."""
    return TRACKERS.get(name)(Path(run_dir) / "tensorboard", config)


def record_scalars(record: Mapping[str, Any]) -> Iterator[tuple[str, int, float]]:
    """``(tag, step, value)`` for every finite number a run record holds (tags as in the module docstring)."""
    last = 0
    for entry in record.get("rounds") or []:
        step = int(entry.get("round", 0))
        last = max(last, step)
        yield from _metrics("val", "val_site", entry, step)
        for site, values in sorted((entry.get("train") or {}).items()):
            for key, value in _numbers(values):
                yield f"train/{key}/{site}", step, value
        if entry.get("train") or entry.get("rejected"):
            yield "train/rejected_sites", step, float(len(entry.get("rejected") or {}))
        if _finite(entry.get("seconds")) and entry["seconds"]:
            yield "time/round_seconds", step, float(entry["seconds"])
        yield from _timing(entry.get("timing") or {}, step)
    for site, values in sorted((record.get("privacy") or {}).items()):
        for key, value in _numbers(values):
            yield f"privacy/{key}/{site}", last, value
    final = record.get("final") or {}
    if final.get("global"):
        step = int(final.get("model_round") or final.get("rounds") or last)
        yield from _metrics("test", "test_site", final, step)
        for name in ("pooled", "pooled_binned", "pooled_stratified"):
            for key, value in _numbers(final.get(name) or {}):
                yield f"test/{name}_{key}", step, value


def _metrics(prefix: str, site_prefix: str, entry: Mapping[str, Any], step: int) -> Iterator[tuple[str, int, float]]:
    for key, value in _numbers(entry.get("global") or {}):
        if key != "n":
            yield f"{prefix}/{key}", step, value
    for site, values in sorted((entry.get("sites") or {}).items()):
        for key, value in _numbers(values):
            if key != "n":
                yield f"{site_prefix}/{key}/{site}", step, value


def _timing(timing: Mapping[str, Any], step: int) -> Iterator[tuple[str, int, float]]:
    for site, messages in sorted(timing.items()):
        for message, phases in sorted((messages or {}).items()):
            for phase, value in _numbers(phases or {}):
                yield f"time/{message}_{phase}/{site}", step, value


def _numbers(values: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """The finite numeric top-level entries (booleans, strings, lists and nested records are not scalars)."""
    for key, value in values.items():
        if _finite(value):
            yield str(key), float(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
