"""A round progress bar for `omnifuse train`/`demo`/`cv`: it follows the run's metrics.json (every mode writes it
after each round), so it needs no hook in the trainers; tqdm shows the ETA. Off with ``-q``."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Optional


class RoundProgress:
    """``with RoundProgress(run_dir, rounds, metric, enabled):`` — a bar of validated rounds with the last value."""

    def __init__(self, run_dir: Path, rounds: int, metric: str, enabled: bool = True, interval: float = 0.5) -> None:
        self.path, self.rounds, self.metric = Path(run_dir) / "metrics.json", rounds, metric
        self.enabled, self.interval = enabled, interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._bar = None

    def __enter__(self) -> "RoundProgress":
        if self.enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=self.rounds, desc="rounds", unit="round", leave=True)
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._update()
            self._bar.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def _update(self) -> None:
        try:
            rounds = json.loads(self.path.read_text()).get("rounds") or []
        except (OSError, ValueError):  # not written yet, or being replaced
            return
        done = [r for r in rounds if r.get("global")]
        if len(done) > self._bar.n:
            self._bar.update(min(len(done), self.rounds) - self._bar.n)
            value = done[-1]["global"].get(self.metric)
            if isinstance(value, (int, float)):
                self._bar.set_postfix({f"val {self.metric}": f"{value:.4f}"})
