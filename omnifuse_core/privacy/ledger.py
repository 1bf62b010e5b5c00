"""The site's durable, append-only privacy ledger (DESIGN §6).

One JSON-lines file per dataset fingerprint: ``<state_dir>/privacy-ledger/<fingerprint>.jsonl``. Each line is
``{"seq", "event", "prev", "hash"}`` where ``hash = sha256(canonical JSON of {"seq", "event", "prev"})`` and
``prev`` is the previous line's hash (the first line chains from a hash of the fingerprint, so a ledger copied
to another dataset is detected). A small ``<fingerprint>.head`` file holds the line count and last hash so that
losing whole lines at the end (truncation) is detected too. Any mismatch raises :class:`LedgerCorrupt`, and the
site must refuse to train (fail closed).

The checksums detect corruption, truncation and naive edits; they are not a signature against someone who
controls the site's disk (that person controls the data anyway).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)

try:  # POSIX advisory lock so two processes of one site never interleave appends
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

DPSGD = "dpsgd"
ADAPTIVE = "adaptive"  # a DP-SGD event's "clipping" field (omnifuse_core.privacy.adaptive_clip)
PURE_TYPES = ("laplace", "gumbel")
_FINGERPRINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_WHAT_TO_DO = ("Training is refused because this site's privacy spending cannot be established. Restore the "
               "ledger and its .head file from a backup, or investigate; never delete them to continue.")


class LedgerCorrupt(RuntimeError):
    """The ledger file is unreadable, truncated or does not match its checksums."""


def canonical(obj: object) -> str:
    """Canonical JSON (sorted keys, no spaces, no NaN) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _num(ev: dict, key: str, *, low: float, high: float = math.inf, low_open: bool = True) -> None:
    v = ev.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (v <= low if low_open else v < low) or v > high:
        raise ValueError(f"field '{key}' = {v!r} is missing or out of range")


def _whole(ev: dict, key: str, low: int) -> None:
    v = ev.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"field '{key}' = {v!r} must be a whole number >= {low}")


def validate_event(ev: dict) -> None:
    """Check one ledger event; raises ``ValueError`` naming the field."""
    if not isinstance(ev, dict):
        raise ValueError(f"event must be a JSON object, got {type(ev).__name__}")
    kind = ev.get("type")
    if kind == DPSGD:
        _num(ev, "noise_multiplier", low=0)
        _num(ev, "sample_rate", low=0, high=1)
        _whole(ev, "steps", 0)
        _num(ev, "max_grad_norm", low=0)
        if "clipping" in ev:
            _adaptive_fields(ev)
    elif kind in PURE_TYPES:
        _num(ev, "scale", low=0)
        _num(ev, "sensitivity", low=0)
        _whole(ev, "count", 1)
        if not isinstance(ev.get("monotone"), bool):
            raise ValueError(f"field 'monotone' = {ev.get('monotone')!r} must be true or false")
    else:
        raise ValueError(f"field 'type' = {kind!r}; expected one of {(DPSGD, *PURE_TYPES)}")
    if ev.get("round") is not None and (isinstance(ev["round"], bool) or not isinstance(ev["round"], int)):
        raise ValueError(f"field 'round' = {ev['round']!r} must be a whole number or null")


def _adaptive_fields(ev: dict) -> None:
    """An adaptive-clipping DP-SGD event (``max_grad_norm`` = the clip norm at the end of its steps): the fields
    are present and its noise split is the one that makes the event cost exactly its ``noise_multiplier`` σ."""
    if ev["clipping"] != ADAPTIVE:
        raise ValueError(f"field 'clipping' = {ev['clipping']!r}; expected {ADAPTIVE!r} (fixed clipping has no field)")
    _num(ev, "clip_quantile", low=0, high=1)
    _num(ev, "clip_learning_rate", low=0)
    _num(ev, "clip_initial", low=0)
    _num(ev, "clip_count_noise", low=ev["noise_multiplier"] / 2)
    _num(ev, "clip_noise_multiplier", low=0)
    inv = ev["clip_noise_multiplier"] ** -2 + (2 * ev["clip_count_noise"]) ** -2
    if not math.isclose(inv, ev["noise_multiplier"] ** -2, rel_tol=1e-9):
        raise ValueError(f"fields 'clip_noise_multiplier' = {ev['clip_noise_multiplier']!r} and 'clip_count_noise' = "
                         f"{ev['clip_count_noise']!r} do not compose to noise_multiplier = {ev['noise_multiplier']!r}")


class PrivacyLedger:
    """Append-only privacy ledger of one site dataset.

    Args:
        state_dir: the site's state directory (node-config ``state-dir``); created if missing.
        fingerprint: fingerprint of the site dataset (letters, digits, ``._-``).
    """

    def __init__(self, state_dir: str | os.PathLike, fingerprint: str) -> None:
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
            raise ValueError(f"dataset fingerprint {fingerprint!r} must be 1-128 letters, digits, '.', '_' or '-'")
        self.fingerprint = fingerprint
        self.dir = Path(state_dir) / "privacy-ledger"
        self.path = self.dir / f"{fingerprint}.jsonl"
        self.head_path = self.dir / f"{fingerprint}.head"
        self.genesis = _sha(f"omnifuse-privacy-ledger-v1:{fingerprint}")
        self._records = self._load()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "PrivacyLedger":
        """Open an existing ledger file ``.../privacy-ledger/<fingerprint>.jsonl`` (read or append)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"privacy ledger {p} does not exist")
        if p.parent.name != "privacy-ledger" or p.suffix != ".jsonl":
            raise ValueError(f"{p} is not a ledger file; expected <state-dir>/privacy-ledger/<fingerprint>.jsonl")
        return cls(p.parent.parent, p.stem)

    # ----------------------------------------------------------------------------------------------------
    def _corrupt(self, line: int | None, reason: str) -> LedgerCorrupt:
        where = f"{self.path} line {line}" if line else str(self.path)
        return LedgerCorrupt(f"privacy ledger {where}: {reason}. {_WHAT_TO_DO}")

    def _load(self) -> list[dict]:
        if not self.path.exists():
            if self.head_path.exists():
                raise self._corrupt(None, f"the ledger file is missing but its head {self.head_path} exists")
            return []
        try:
            raw = self.path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise self._corrupt(None, f"cannot be read ({exc})") from exc
        if raw and not raw.endswith("\n"):
            raise self._corrupt(raw.count("\n") + 1, "the last line is incomplete (interrupted or truncated write)")
        records, prev = [], self.genesis
        for i, line in enumerate(raw.splitlines(), start=1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise self._corrupt(i, f"is not valid JSON ({exc.msg})") from exc
            if not isinstance(rec, dict) or set(rec) != {"seq", "event", "prev", "hash"}:
                raise self._corrupt(i, "is not a ledger record {seq, event, prev, hash}")
            if rec["seq"] != i - 1:
                raise self._corrupt(i, f"has sequence number {rec['seq']!r}, expected {i - 1} (lines lost or moved)")
            if rec["prev"] != prev:
                raise self._corrupt(i, "does not chain to the previous line (lines edited, removed or reordered)")
            try:
                body = canonical({"seq": rec["seq"], "event": rec["event"], "prev": rec["prev"]})
                validate_event(rec["event"])
            except ValueError as exc:
                raise self._corrupt(i, f"holds an invalid event ({exc})") from exc
            if _sha(body) != rec["hash"]:
                raise self._corrupt(i, "checksum mismatch (the line was modified)")
            records.append(rec)
            prev = rec["hash"]
        self._check_head(records)
        return records

    def _check_head(self, records: list[dict]) -> None:
        n = len(records)
        if not self.head_path.exists():
            if n > 1:
                raise self._corrupt(None, f"its head file {self.head_path} is missing")
            return
        try:
            head = json.loads(self.head_path.read_text(encoding="utf-8"))
            lines, last = int(head["lines"]), str(head["hash"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._corrupt(None, f"its head file {self.head_path} is unreadable ({exc})") from exc
        if lines == n and (n == 0 or records[-1]["hash"] == last):
            return
        if lines == n - 1 and (lines == 0 or records[-2]["hash"] == last):
            return  # crash after the line was made durable but before the head was updated: the line counts
        raise self._corrupt(None, f"its head file records {lines} lines but the ledger has {n} valid lines "
                                  "(the ledger was truncated or replaced)")

    def _write_head(self) -> None:
        tmp = self.head_path.with_suffix(".head.tmp")
        last = self._records[-1]["hash"] if self._records else self.genesis
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(canonical({"lines": len(self._records), "hash": last, "fingerprint": self.fingerprint}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.head_path)
        with contextlib.suppress(OSError):  # make the rename durable where the OS allows opening directories
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # ----------------------------------------------------------------------------------------------------
    def append(self, event: dict) -> dict:
        """Validate and durably append one event (written, flushed and fsynced before returning).

        Args:
            event: a ``dpsgd`` or ``laplace``/``gumbel`` event; ``time`` is filled in when absent.

        Returns:
            The stored event.
        """
        event = dict(event)
        event.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        try:
            validate_event(event)
            canonical(event)
        except ValueError as exc:
            raise ValueError(f"refusing to append to privacy ledger {self.path}: {exc}") from exc
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                self._records = self._load()  # another process of this site may have appended meanwhile
                prev = self._records[-1]["hash"] if self._records else self.genesis
                rec = {"seq": len(self._records), "event": event, "prev": prev}
                rec["hash"] = _sha(canonical(rec))
                fh.write(canonical(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                self._records.append(rec)
                self._write_head()
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        log.info("privacy ledger %s: appended %s event (line %d)", self.path.name, event["type"], len(self._records))
        return event

    def events(self) -> list[dict]:
        """All events in order (copies)."""
        return [dict(r["event"]) for r in self._records]

    def history(self) -> list[tuple[float, float, int]]:
        """DP-SGD history ``[(noise_multiplier, sample_rate, steps), ...]`` in order."""
        return [(float(e["noise_multiplier"]), float(e["sample_rate"]), int(e["steps"]))
                for e in self.events() if e["type"] == DPSGD]

    def other_events(self) -> list[dict]:
        """All non-DP-SGD events (noisy-max selections), in order."""
        return [e for e in self.events() if e["type"] != DPSGD]

    def __len__(self) -> int:
        return len(self._records)
