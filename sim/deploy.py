"""Run Flower's real processes on 127.0.0.1: a SuperLink (deployment or simulation runtime), one SuperNode per
site, and ``flwr run``; everything started here is stopped here (by process group).

Used by ``sim.federated`` (simulation SuperLink), by the deployment integration test, and as a recipe for
``docs/deployment.md``. Every process gets the same isolated environment: its own ``FLWR_HOME``, telemetry and
update checks off, runtime dependency installation off, ``RAY_TMPDIR``/``UV_CACHE_DIR`` inside the work folder.
"""
from __future__ import annotations

import json
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

APP_DIR = Path(__file__).resolve().parent.parent  # the Flower app: holds pyproject.toml
BIN = Path(sys.executable).parent
CONNECTION = "omnifuse"


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
        logf = open(self.work / f"{name}.log", "wb")
        proc = subprocess.Popen(list(argv), env=dict(env or self.env), stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(self.work))
        logf.close()
        self.procs.append((name, proc))
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited early with code {proc.returncode}; see {self.work / name}.log:\n"
                                   + tail(self.work / f"{name}.log"))

    def stop_all(self, grace: float = 10.0) -> None:
        """Stop every started process *and its descendants* (Flower starts ServerApp/ClientApp processes in their
        own sessions, so a process-group kill alone can orphan them): SIGTERM, then SIGKILL after ``grace`` s."""
        pids: list[int] = []
        for _, proc in reversed(self.procs):
            pids += [*descendants(proc.pid), proc.pid]
        self.stopped_pids = pids
        for _, proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        for pid in pids:
            _signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", name, proc.pid)
            _signal_group(proc, signal.SIGKILL)
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


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
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


def write_connection(env: Mapping[str, str], port: int, *, root_cert: Optional[Path] = None) -> None:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection named ``omnifuse`` (the default)."""
    lines = [f"[superlink.{CONNECTION}]", f'address = "127.0.0.1:{port}"']
    lines += [f'root-certificates = "{root_cert}"'] if root_cert else ["insecure = true"]
    cfg = Path(env["FLWR_HOME"]) / "config.toml"
    cfg.write_text("[superlink]\n" + f'default = "{CONNECTION}"\n\n' + "\n".join(lines) + "\n")


def start_superlink(procs: Processes, *, simulation: bool, tls: Optional[Mapping[str, Path]] = None,
                    extra_args: Sequence[str] = ()) -> int:
    """Start ``flower-superlink`` on a free loopback port and return it.

    Flower 1.41 serves the Fleet, Control and Runtime APIs over HTTP on one ``--host``/``--port`` (the older
    ``--control-api-address``/``--fleet-api-address`` flags are deprecated).
    """
    port = free_port()
    argv = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port), "--isolation", "subprocess",
            "--disable-runtime-dependency-installation"]  # in-memory state: an on-disk SQLite file locked up under load
    if tls:
        argv += ["--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile", str(tls["cert"]),
                 "--ssl-keyfile", str(tls["key"])]
    else:
        argv += ["--insecure"]
    if simulation:
        argv.append("--simulation")
    argv += list(extra_args)  # e.g. ["--enable-supernode-auth"]
    procs.start("superlink", argv)
    wait_port(port, 60, procs)
    return port


def start_supernode(procs: Processes, name: str, superlink_port: int, node_config: Mapping[str, object], *,
                    root_cert: Optional[Path] = None, extra_args: Sequence[str] = ()) -> subprocess.Popen:
    """One ``flower-supernode`` with its own FLWR_HOME and node config (strings get inner double quotes)."""
    env = dict(procs.env)
    env["FLWR_HOME"] = str(procs.work / f"flwr_home_{name}")
    Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = " ".join(f'{k}="{v}"' if isinstance(v, (str, Path)) else f"{k}={v}" for k, v in node_config.items())
    argv = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{superlink_port}", "--host", "127.0.0.1",
            "--port", str(port), "--isolation", "subprocess", "--node-config", conf]
    argv += ["--root-certificates", str(root_cert)] if root_cert else ["--insecure"]
    argv += list(extra_args)  # e.g. ["--auth-supernode-private-key", key]
    return procs.start(f"supernode_{name}", argv, env)


def _cli(procs: Processes, args: Sequence[str], timeout: float = 120) -> str:
    """Run one ``flwr`` CLI command (in its own process group) and return its stdout."""
    proc = subprocess.Popen([str(BIN / "flwr"), *args], env=procs.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
                            cwd=str(procs.work))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.communicate()
        raise TimeoutError(f"flwr {' '.join(args[:1])} did not answer within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"flwr {' '.join(args)} failed with code {proc.returncode}:\n{out.decode()[-2000:]}"
                           f"\n{err.decode()[-2000:]}")
    return out.decode(errors="replace")


def _json_tail(text: str) -> dict:
    start = text.find("{")
    if start < 0:
        raise RuntimeError(f"expected JSON from flwr, got: {text[-2000:]}")
    return json.loads(text[start:])


def flwr_run(procs: Processes, run_config: Mapping[str, object], *, federation_config: str = "",
             timeout: float = 3600, app_dir: Path = APP_DIR, poll: float = 2.0) -> str:
    """``flwr run <app> omnifuse``, then poll ``flwr ls`` until the run ends; the run's log is saved to
    ``<work>/flwr_run.log``. (Polling is used instead of ``--stream``, whose log stream can end early when the
    SuperLink is busy.)

    Returns:
        The final run status (``finished:completed``).

    Raises:
        RuntimeError: the run could not start or did not complete (the log tail is included).
        TimeoutError: the run did not finish within ``timeout`` seconds.
    """
    rc = " ".join(f"{k}={json.dumps(v) if isinstance(v, (str, Path)) else str(v).lower() if isinstance(v, bool) else v}"
                  for k, v in run_config.items())
    args = ["run", str(app_dir), CONNECTION, "--run-config", rc, "--format", "json"]
    if federation_config:
        args += ["--federation-config", federation_config]
    log.info("flwr %s", " ".join(args))
    started = _json_tail(_cli(procs, args))
    if not started.get("success") or not started.get("run-id"):
        raise RuntimeError(f"flwr run did not start a run: {started}")
    run_id = str(started["run-id"])
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        procs.check_alive()
        runs = _json_tail(_cli(procs, ["ls", CONNECTION, "--run-id", run_id, "--format", "json"])).get("runs", [])
        status = str(runs[0].get("status", "")) if runs else ""
        if status.startswith("finished"):
            break
        time.sleep(poll)
    logf = procs.work / "flwr_run.log"
    try:
        logf.write_text(_cli(procs, ["log", run_id, CONNECTION, "--show"]))
    except (RuntimeError, TimeoutError) as exc:
        log.warning("could not fetch the run log: %s", exc)
    if not status.startswith("finished"):
        raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s (last status {status!r}); "
                           f"see {logf}")
    if status != "finished:completed":
        raise RuntimeError(f"run {run_id} ended with status {status!r}; log tail:\n{tail(logf)}")
    log.info("run %s %s", run_id, status)
    return status


def register_supernode(procs: Processes, public_key: Path, name: str) -> dict:
    """``flwr supernode register`` a hospital's public key (SuperLink started with ``--enable-supernode-auth``);
    returns flwr's JSON answer (holds the ``node-id``)."""
    return _json_tail(_cli(procs, ["supernode", "register", str(public_key), CONNECTION, "--name", name,
                                   "--format", "json"]))


def list_supernodes(procs: Processes) -> list[dict]:
    """``flwr supernode list`` as dicts (node id, name, status, ...)."""
    out = _json_tail(_cli(procs, ["supernode", "list", CONNECTION, "--format", "json"]))
    nodes = out.get("nodes", out.get("supernodes", []))
    return [dict(n) for n in nodes] if isinstance(nodes, list) else []


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


def run_deployment(sites: Sequence[Path], run_config: Mapping[str, object], work: Path, *,
                   state_root: Optional[Path] = None, timeout: float = 3600) -> str:
    """Loopback deployment: SuperLink + one SuperNode per site + ``flwr run``; stops everything afterwards.

    Args:
        sites: site folders (one SuperNode each, node config ``data-path``/``state-dir``).
        run_config: run config overrides (``run-dir`` must be absolute; ``min-sites`` should be ``len(sites)``).
        work: folder for FLWR_HOMEs, logs and the SuperLink database.
        state_root: parent of each site's ``state-dir`` (default ``work/state``).
        timeout: seconds allowed for the run.

    Returns:
        The final run status.
    """
    state_root = state_root or work / "state"
    with flower_processes(work) as procs:
        port = start_superlink(procs, simulation=False)
        for site in sites:
            start_supernode(procs, site.name, port,
                            {"data-path": str(Path(site).resolve()), "state-dir": str(state_root / site.name)})
        write_connection(procs.env, port)
        return flwr_run(procs, run_config, timeout=timeout)
