"""TLS and SuperNode authentication with real Flower processes on 127.0.0.1: a SuperLink with TLS (certificates from
scripts/make_certs.sh) and ``--enable-supernode-auth``. Only the SuperNode with the federation's CA *and* a
registered key is listed online (so the ServerApp can never sample the others); a SuperNode connecting
``--insecure``, one trusting another CA, and an unregistered one are refused. Every process is stopped."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from sim.deploy import (flower_processes, is_running, list_supernodes, online_supernodes, register_supernode,
                        start_superlink, start_supernode, write_connection)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parent.parent


def _certs(out: Path) -> Path:
    subprocess.run(["bash", str(ROOT / "scripts" / "make_certs.sh"), str(out), "localhost", "127.0.0.1"], check=True,
                   capture_output=True, timeout=120)
    return out


def _key(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(path)], check=True,
                   capture_output=True, timeout=60)
    return path


def test_tls_and_node_auth_refuse_unknown_supernodes(tmp_path):
    ca = _certs(tmp_path / "certs")
    other = _certs(tmp_path / "other_ca")
    keys = tmp_path / "keys"
    keys.mkdir()
    good, unregistered = _key(keys / "hospital_good"), _key(keys / "hospital_unknown")
    site = tmp_path / "site"
    site.mkdir()
    conf = {"data-path": str(site), "state-dir": str(tmp_path / "state")}
    with flower_processes(tmp_path / "flower") as procs:
        port = start_superlink(procs, simulation=False, extra_args=["--enable-supernode-auth"],
                               tls={"ca": ca / "ca.crt", "cert": ca / "server.pem", "key": ca / "server.key"})
        write_connection(procs.env, port, root_cert=ca / "ca.crt")
        registered = register_supernode(procs, good.with_suffix(".pub"), "hospital_good")
        auth = ["--auth-supernode-private-key", str(good)]
        start_supernode(procs, "good", port, conf, root_cert=ca / "ca.crt", extra_args=auth)
        insecure = start_supernode(procs, "insecure", port, conf, extra_args=auth)  # no TLS at all
        wrong_ca = start_supernode(procs, "wrong_ca", port, conf, root_cert=other / "ca.crt", extra_args=auth)
        start_supernode(procs, "unregistered", port, conf, root_cert=ca / "ca.crt",
                        extra_args=["--auth-supernode-private-key", str(unregistered)])
        deadline = time.monotonic() + 120
        nodes: list[dict] = []
        while time.monotonic() < deadline and not online_supernodes(nodes):
            time.sleep(2)
            nodes = list_supernodes(procs)
        assert online_supernodes(nodes), f"the registered SuperNode never came online: {nodes}"
        time.sleep(10)  # give the refused nodes time to retry
        nodes = list_supernodes(procs)
        online = online_supernodes(nodes)
        assert len(online) == 1, nodes  # only the registered node with the right CA
        assert len(nodes) == 1, nodes  # the unregistered key never became a node at all
        if "node-id" in registered:
            assert str(online[0]["node-id"]) == str(registered["node-id"]), (online, registered)
        assert insecure.poll() is None or insecure.returncode != 0  # refused, never served
        assert wrong_ca.poll() is None or wrong_ca.returncode != 0
    assert not [pid for pid in procs.stopped_pids if is_running(pid)], "a Flower process outlived the test"
