"""Checkpoints after every round: global weights as safetensors plus a JSON state file (no pickle).

Layout under ``<run-dir>/checkpoints/``::

    round-0003.safetensors   global trainable weights (keys = parameter names) + "strategy/<k>" arrays
    round-0003.json          round, strategy name and scalar state, specs, task, groups, prediction mode
    federation.json          combined preprocessing statistics (written once)
    latest.json              {"round": 3, "weights": "round-0003.safetensors", "state": "round-0003.json"}
    final.json               the same pointer to the model the run's final test used (``final-model``), written
                             when the run ends; ``omnifuse predict`` prefers it to latest.json
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

log = logging.getLogger(__name__)

STRATEGY_PREFIX = "strategy/"


@dataclass
class Checkpoint:
    """Everything needed to continue a run after ``round``."""

    round: int
    weights: dict[str, np.ndarray]
    strategy_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # strategy meta, specs, task, groups, prediction mode
    stats: Optional[dict] = None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(ckpt_dir: Path, ckpt: Checkpoint) -> Path:
    """Write one round's checkpoint and point ``latest.json`` at it (written last, atomically)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stem = f"round-{ckpt.round:04d}"
    tensors = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in ckpt.weights.items()}
    tensors.update({STRATEGY_PREFIX + k: np.ascontiguousarray(a, dtype=np.float32)
                    for k, a in ckpt.strategy_arrays.items()})
    save_file(tensors, str(ckpt_dir / f"{stem}.safetensors"), metadata={"round": str(ckpt.round)})
    _atomic_write(ckpt_dir / f"{stem}.json", json.dumps({"round": ckpt.round, **ckpt.state}, indent=1))
    if ckpt.stats is not None and not (ckpt_dir / "federation.json").exists():
        _atomic_write(ckpt_dir / "federation.json", json.dumps({"stats": ckpt.stats}))
    _atomic_write(ckpt_dir / "latest.json", json.dumps({"round": ckpt.round, "weights": f"{stem}.safetensors",
                                                        "state": f"{stem}.json"}))
    log.info("checkpoint round %d -> %s", ckpt.round, ckpt_dir / f"{stem}.safetensors")
    return ckpt_dir / f"{stem}.safetensors"


def update_state(ckpt_dir: Path, rnd: int, fields: dict) -> None:
    """Rewrite round ``rnd``'s state JSON with ``fields`` added (atomically; the weights stay as they are): with
    fused evaluation a round is checkpointed when trained and its validation outcome is added when it arrives."""
    path = ckpt_dir / f"round-{rnd:04d}.json"
    state = json.loads(path.read_text())
    state.update(fields)
    _atomic_write(path, json.dumps(state, indent=1))


def _pointer(rnd: int) -> dict:
    stem = f"round-{rnd:04d}"
    return {"round": rnd, "weights": f"{stem}.safetensors", "state": f"{stem}.json"}


def point_final(ckpt_dir: Path, rnd: int) -> None:
    """Write ``final.json``: the round whose model the final test used (and that ``predict`` should load)."""
    if not (ckpt_dir / f"round-{rnd:04d}.safetensors").is_file():
        raise ValueError(f"{ckpt_dir}: no checkpoint of round {rnd} to point final.json at")
    _atomic_write(ckpt_dir / "final.json", json.dumps(_pointer(rnd)))


def load_latest(ckpt_dir: Path) -> Optional[Checkpoint]:
    """The newest checkpoint in ``ckpt_dir`` or None when there is none.

    Raises:
        ValueError: when ``latest.json`` exists but a file it names is missing or unreadable.
    """
    latest = ckpt_dir / "latest.json"
    if not latest.exists():
        return None
    try:
        pointer = json.loads(latest.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{latest}: cannot resume from this checkpoint ({exc}); remove the run folder's "
                         "checkpoints/ or start a new run-dir") from exc
    return _load(ckpt_dir, pointer, latest)


def load_round(ckpt_dir: Path, rnd: int) -> Checkpoint:
    """The checkpoint of round ``rnd`` (every round's files are kept).

    Raises:
        ValueError: its files are missing or unreadable.
    """
    return _load(ckpt_dir, _pointer(rnd), ckpt_dir / f"round-{rnd:04d}.json")


def _load(ckpt_dir: Path, pointer: dict, source: Path) -> Checkpoint:
    try:
        tensors = load_file(str(ckpt_dir / pointer["weights"]))
        state = json.loads((ckpt_dir / pointer["state"]).read_text())
        fed = ckpt_dir / "federation.json"
        stats = json.loads(fed.read_text())["stats"] if fed.exists() else None
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise ValueError(f"{source}: cannot resume from this checkpoint ({exc}); remove the run folder's "
                         "checkpoints/ or start a new run-dir") from exc
    weights = {k: v for k, v in tensors.items() if not k.startswith(STRATEGY_PREFIX)}
    strat = {k[len(STRATEGY_PREFIX):]: v for k, v in tensors.items() if k.startswith(STRATEGY_PREFIX)}
    rnd = int(state.pop("round"))
    return Checkpoint(round=rnd, weights=weights, strategy_arrays=strat, state=state, stats=stats)
