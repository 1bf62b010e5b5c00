"""Supervision of the local processes behind the loopback Flower recipes: start each in its own process group with
its own log, notice an early exit, kill one (a crashed machine) or stop all of them *and everything they spawned*
(Flower starts ServerApp/ClientApp processes in their own sessions).

Used by :mod:`sim.deploy` (SuperLink, SuperNodes, ``flwr`` CLI) and the process-level tests.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(work: Path, ray_tmp: Optional[Path] = None) -> dict[str, str]:
    """Environment for every Flower process: isolated FLWR_HOME, no telemetry, no runtime installs.

    ``ray_tmp`` must be a *short* path: Ray puts AF_UNIX sockets below it (107-byte limit).
    """
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(work / "flwr_home"), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_TMPDIR": str(ray_tmp or work / "ray"),
        "UV_CACHE_DIR": str(work / "uv_cache"), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
    })
    # the SuperExec starts a ClientApp/ServerApp process when it finds a task; Flower polls every 1 s by default
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    # Several SuperNodes share this machine's cores here, so each ClientApp gets one torch thread (as Ray gives each
    # simulation actor): with torch's default (all cores per process) small models ran 3-4x slower (B7 floor).
    env.setdefault("OMP_NUM_THREADS", "1")
    for key in ("FLWR_HOME", "RAY_TMPDIR", "UV_CACHE_DIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


@dataclass
class Processes:
    """Processes started here (each in its own process group) and their log files."""

    work: Path
    env: dict[str, str]
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    stopped_pids: list[int] = field(default_factory=list)  # everything stop_all signalled (for tests)

    def start(self, name: str, argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> subprocess.Popen:
        logf = open(self.work / f"{name}.log", "ab")  # append: a restarted process keeps its earlier log
        proc = subprocess.Popen(list(argv), env=dict(env or self.env), stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(self.work))
        logf.close()
        self.procs.append((name, proc))
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return proc

    def check_alive(self) -> None:
        for name, proc in list(self.procs):
            if proc.poll() is not None and proc.pid not in self.stopped_pids:
                raise RuntimeError(f"{name} exited early with code {proc.returncode}; see {self.work / name}.log:\n"
                                   + tail(self.work / f"{name}.log"))

    def kill(self, name: str) -> list[int]:
        """SIGKILL the started process ``name`` and all its descendants at once, as a crashed machine would stop;
        it is no longer tracked (a later ``start`` of the same name is a restart). Returns the killed pids."""
        proc = next(p for n, p in self.procs if n == name)
        pids = [*descendants(proc.pid), proc.pid]
        self.stopped_pids += pids  # first: check_alive (maybe on another thread) must not report it as a crash
        signal_group(proc, signal.SIGKILL)
        for pid in pids:
            _signal_pid(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]
        log.info("killed %s (pids %s)", name, pids)
        return pids

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop every started process *and its descendants* (Flower starts ServerApp/ClientApp processes in their
        own sessions, so a process-group kill alone can orphan them): SIGTERM, then SIGKILL after ``grace`` s."""
        pids: list[int] = []
        for _, proc in reversed(self.procs):
            pids += [*descendants(proc.pid), proc.pid]
        self.stopped_pids += pids
        for _, proc in reversed(self.procs):
            signal_group(proc, signal.SIGTERM)
        for pid in pids:
            _signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", name, proc.pid)
            signal_group(proc, signal.SIGKILL)
        while time.monotonic() < deadline and any(is_running(pid) for pid in pids):
            time.sleep(0.2)
        for pid in pids:
            _signal_pid(pid, signal.SIGKILL)
        for _, proc in self.procs:
            proc.wait(timeout=10)
        self.procs.clear()
        # Orphans (e.g. Ray workers whose parent already exited) are found by the unique RAY_TMPDIR in their env.
        marker = f"RAY_TMPDIR={self.env['RAY_TMPDIR']}\0".encode()
        deadline = time.monotonic() + grace
        while (left := [p for p in marked_processes(marker) if is_running(p)]) and time.monotonic() < deadline:
            for pid in left:
                _signal_pid(pid, signal.SIGKILL)
            self.stopped_pids += [p for p in left if p not in self.stopped_pids]
            time.sleep(0.2)
        if left:
            log.warning("processes %s of this run did not stop", left)


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux ``/proc``), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def marked_processes(marker: bytes) -> list[int]:
    """PIDs whose environment contains ``marker`` (only this user's processes are readable)."""
    hits = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in env.read_bytes():
                hits.append(int(env.parent.name))
        except (OSError, ValueError):
            continue
    return [p for p in hits if p != os.getpid()]


def is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_port(port: int, timeout: float, procs: Processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@contextmanager
def flower_processes(work: Path) -> Iterator[Processes]:
    """A :class:`Processes` whose every process is stopped on exit, whatever happens."""
    work.mkdir(parents=True, exist_ok=True)
    ray_tmp = Path(tempfile.mkdtemp(prefix="ofl-ray-"))  # short: Ray's socket paths must fit in 107 bytes
    procs = Processes(work=work, env=flower_env(work, ray_tmp))
    try:
        yield procs
    finally:
        procs.stop_all()
        shutil.rmtree(ray_tmp, ignore_errors=True)
