"""Run Flower's real processes on 127.0.0.1: a SuperLink (deployment or simulation runtime), one SuperNode per
site, and ``flwr run``; everything started here is stopped here (by process group, see :mod:`sim.processes`).

Used by ``sim.federated`` (simulation SuperLink), by the deployment integration test, and as a recipe for
``docs/deployment.md``. Every process gets the same isolated environment: its own ``FLWR_HOME``, telemetry and
update checks off, runtime dependency installation off, ``RAY_TMPDIR``/``UV_CACHE_DIR`` inside the work folder.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from .processes import (BIN, Processes, descendants, flower_processes, free_port, is_running, marked_processes,
                        signal_group, tail, wait_port)

__all__ = ["flower_processes", "is_running", "marked_processes", "Processes", "start_superlink", "start_supernode",
           "write_connection", "flwr_submit", "flwr_wait", "flwr_run", "flwr_stop", "serverapp_pids",
           "register_supernode", "list_supernodes", "run_info", "online_supernodes", "wait_supernodes_online",
           "run_deployment"]

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parent.parent  # the Flower app: holds pyproject.toml
CONNECTION = "omnifuse"


def write_connection(env: Mapping[str, str], port: int, *, root_cert: Optional[Path] = None) -> None:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection named ``omnifuse`` (the default)."""
    lines = [f"[superlink.{CONNECTION}]", f'address = "127.0.0.1:{port}"']
    lines += [f'root-certificates = "{root_cert}"'] if root_cert else ["insecure = true"]
    cfg = Path(env["FLWR_HOME"]) / "config.toml"
    cfg.write_text("[superlink]\n" + f'default = "{CONNECTION}"\n\n' + "\n".join(lines) + "\n")


def start_superlink(procs: Processes, *, simulation: bool, tls: Optional[Mapping[str, Path]] = None,
                    extra_args: Sequence[str] = (), database: Optional[Path] = None, port: Optional[int] = None) -> int:
    """Start ``flower-superlink`` on a loopback port (a free one unless ``port``) and return it.

    Flower 1.41 serves the Fleet, Control and Runtime APIs over HTTP on one ``--host``/``--port`` (the older
    ``--control-api-address``/``--fleet-api-address`` flags are deprecated). Without ``database`` the SuperLink keeps
    its state in memory; with it (``--database FILE``) a SuperLink restarted on the same port and file keeps its
    registered nodes, and the SuperNodes reconnect by themselves.
    """
    port = port or free_port()
    argv = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port), "--isolation", "subprocess",
            "--disable-runtime-dependency-installation"]
    if database is not None:
        argv += ["--database", str(database)]
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
        signal_group(proc, signal.SIGKILL)
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


def flwr_submit(procs: Processes, run_config: Mapping[str, object], *, federation_config: str = "",
                app_dir: Path = APP_DIR) -> str:
    """``flwr run <app> omnifuse`` without waiting; returns the run id (see :func:`flwr_wait`)."""
    rc = " ".join(f"{k}={json.dumps(v) if isinstance(v, (str, Path)) else str(v).lower() if isinstance(v, bool) else v}"
                  for k, v in run_config.items())
    args = ["run", str(app_dir), CONNECTION, "--run-config", rc, "--format", "json"]
    if federation_config:
        args += ["--federation-config", federation_config]
    log.info("flwr %s", " ".join(args))
    started = _json_tail(_cli(procs, args))
    if not started.get("success") or not started.get("run-id"):
        raise RuntimeError(f"flwr run did not start a run: {started}")
    return str(started["run-id"])


def run_info(procs: Processes, run_id: str) -> dict:
    """Run ``run_id`` as ``flwr ls`` reports it (status, timestamps, network-traffic bytes, ...); {} if unknown."""
    runs = _json_tail(_cli(procs, ["ls", CONNECTION, "--run-id", run_id, "--format", "json"])).get("runs") or []
    return dict(runs[0]) if runs else {}


def flwr_wait(procs: Processes, run_id: str, *, timeout: float = 3600, poll: float = 2.0,
              max_poll: float = 10.0, ending: Optional[Callable[[], bool]] = None) -> str:
    """Poll ``flwr ls`` until run ``run_id`` ends; the run's log is saved to ``<work>/flwr_run.log``.

    The interval starts at ``poll`` seconds and grows by half each time up to ``max_poll``: every ``flwr`` call is
    a new Python process (about 2 s of CPU measured here), so polling every 2 s would take most of a core from the
    run on a 2-core machine. ``ending`` is a cheap local check (e.g. "metrics.json has its final entry"), looked at
    every 0.5 s between polls: once it is True the run is about to end and ``flwr ls`` is polled every second, so
    the end of a run is not noticed up to ``max_poll`` seconds late (B6 measured 10 s of such latency).

    Returns:
        The final run status (``finished:completed``).

    Raises:
        RuntimeError: the run did not complete (the log tail is included), or a started process died.
        TimeoutError: the run did not finish within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        procs.check_alive()
        status = str(run_info(procs, run_id).get("status", ""))
        if status.startswith("finished"):
            break
        wake = time.monotonic() + min(poll, max(0.0, deadline - time.monotonic()))
        while time.monotonic() < wake:
            if ending is not None and ending():
                poll, max_poll = 1.0, 1.0
                wake = min(wake, time.monotonic() + 1.0)
            time.sleep(max(0.0, min(0.5, wake - time.monotonic())))
        poll = min(max_poll, poll * 1.5)
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


def flwr_run(procs: Processes, run_config: Mapping[str, object], *, federation_config: str = "",
             timeout: float = 3600, app_dir: Path = APP_DIR, poll: float = 2.0,
             run_dir: Optional[Path] = None) -> str:
    """``flwr run <app> omnifuse``, then poll ``flwr ls`` until the run ends (:func:`flwr_wait`). Polling is used
    instead of ``--stream``, whose log stream can end early when the SuperLink is busy. The run folder (``run_dir``,
    else the ``run-dir`` of ``run_config``) getting its final ``metrics.json`` entry makes the polling quick.

    Returns:
        The final run status (``finished:completed``).
    """
    run_dir = run_dir or run_config.get("run-dir")
    ending = final_written(Path(str(run_dir))) if run_dir else None
    run_id = flwr_submit(procs, run_config, federation_config=federation_config, app_dir=app_dir)
    return flwr_wait(procs, run_id, timeout=timeout, poll=poll, ending=ending)


def final_written(run_dir: Path) -> Callable[[], bool]:
    """A check that is True once ``run_dir/metrics.json`` holds a non-empty ``final`` entry other than the one it
    held when the check was made (a resumed run's folder still has the previous run's)."""
    path = Path(run_dir) / "metrics.json"

    def final() -> Optional[dict]:
        try:
            return json.loads(path.read_text()).get("final") or None
        except (OSError, ValueError, AttributeError):
            return None

    before = final()

    def check() -> bool:
        now = final()
        return now is not None and now != before

    return check


def flwr_stop(procs: Processes, run_id: str) -> str:
    """``flwr stop <run-id>``: mark a run stopped on the SuperLink (e.g. after its ServerApp died)."""
    return _cli(procs, ["stop", run_id, CONNECTION])


def serverapp_pids(procs: Processes) -> list[int]:
    """PIDs of the ``flwr-serverapp`` processes the SuperLink started (one per running run)."""
    out = []
    for name, proc in procs.procs:
        if name != "superlink":
            continue
        for pid in descendants(proc.pid):
            try:
                if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
            except OSError:
                continue
    return out


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


def online_supernodes(nodes: Sequence[Mapping]) -> list[dict]:
    """The entries of :func:`list_supernodes` whose status is online."""
    return [dict(n) for n in nodes if "online" in str(n.get("status", n.get("state", ""))).lower()]


def wait_supernodes_online(procs: Processes, count: int, timeout: float = 180) -> list[dict]:
    """Poll ``flwr supernode list`` until ``count`` SuperNodes are online (so a run sees all of them from round
    1 even when ``min-sites`` is lower)."""
    deadline = time.monotonic() + timeout
    while len(online := online_supernodes(list_supernodes(procs))) < count:
        procs.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(online)} of {count} SuperNodes online after {timeout:.0f} s")
        time.sleep(1.0)
    return online


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
