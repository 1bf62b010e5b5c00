"""``omnifuse supernode``: one command per hospital — check the site folder, then start its ``flower-supernode``.

The plain Flower command stays documented (docs/deployment.md); this wrapper only assembles it: the node config
(``data-path``, ``state-dir``, optional ``max-epsilon`` and ``device``), TLS or ``--insecure``, SuperNode
authentication keys, ``--isolation subprocess`` and the SuperExec task poll (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``,
0.2 s unless set). The SuperNode then replaces this process (``exec``), so a service manager supervises Flower itself.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional

import click


def supernode_argv(data: Path, state: Path, superlink: str, *, root_certificates: Optional[Path], insecure: bool,
                   private_key: Optional[Path], public_key: Optional[Path], max_epsilon: Optional[float],
                   device: str, port: Optional[int]) -> list[str]:
    """The ``flower-supernode`` command line for this hospital."""
    if not insecure and root_certificates is None:
        raise click.UsageError("give --root-certificates CA.pem (TLS to the SuperLink) or, on a trusted test "
                               "network only, --insecure")
    exe = shutil.which("flower-supernode") or str(Path(sys.executable).with_name("flower-supernode"))
    conf = {"data-path": str(data.resolve()), "state-dir": str(state.resolve())}
    if max_epsilon is not None:
        conf["max-epsilon"] = max_epsilon
    if device:
        conf["device"] = device
    node_config = " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in conf.items())
    argv = [exe, "--superlink", superlink, "--isolation", "subprocess", "--node-config", node_config]
    argv += ["--insecure"] if insecure else ["--root-certificates", str(root_certificates)]
    if private_key or public_key:
        if not (private_key and public_key):
            raise click.UsageError("SuperNode authentication needs both --auth-private-key and --auth-public-key")
        argv += ["--auth-supernode-private-key", str(private_key), "--auth-supernode-public-key", str(public_key)]
    if port is not None:
        argv += ["--port", str(port)]
    return argv


@click.command("supernode")
@click.option("--data", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="This hospital's site folder.")
@click.option("--state", type=click.Path(path_type=Path), required=True,
              help="Folder for the site's durable state (privacy ledger, site cache); keep it across runs.")
@click.option("--superlink", required=True, metavar="HOST:PORT", help="The SuperLink's Fleet API address.")
@click.option("--root-certificates", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="CA certificate of the SuperLink (TLS).")
@click.option("--insecure", is_flag=True, help="No TLS (trusted test networks only).")
@click.option("--auth-private-key", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--auth-public-key", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--max-epsilon", type=float, help="This site's privacy cap (refuses rounds beyond it).")
@click.option("--device", default="", help="cpu, cuda, cuda:1 … (default: the run's config).")
@click.option("--port", type=int, help="Local port of the SuperNode's runtime API (Flower's default 9094).")
@click.option("--config", default=None, help="Check the site with this run config (modalities, task, split).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key for the check.")
@click.option("--dry-run", is_flag=True, help="Check the site and print the command instead of running it.")
def supernode(data: Path, state: Path, superlink: str, root_certificates: Optional[Path], insecure: bool,
              auth_private_key: Optional[Path], auth_public_key: Optional[Path], max_epsilon: Optional[float],
              device: str, port: Optional[int], config: Optional[str], overrides: tuple[str, ...],
              dry_run: bool) -> None:
    """Check this hospital's site folder, then start its flower-supernode with the right node config.

    \b
    Example:
      omnifuse supernode --data /data/hospital_a --state /srv/omnifuse/state_a \\
          --superlink superlink.example.org:9092 --root-certificates ca.pem --config demo
    """
    from omnifuse_core.data.validate import validate_site

    from .run_configs import check_config  # the check-site command's rule

    argv = supernode_argv(data, state, superlink, root_certificates=root_certificates, insecure=insecure,
                          private_key=auth_private_key, public_key=auth_public_key, max_epsilon=max_epsilon,
                          device=device, port=port)
    report = validate_site(data, check_config(config, overrides))
    click.echo(report.format())
    if not report.ok:
        raise click.ClickException(f"site {data} has problems (listed above); fix them before joining a federation")
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ}
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    if env.get("PYTHONDONTWRITEBYTECODE"):
        click.echo("note: PYTHONDONTWRITEBYTECODE is set, so every ClientApp process (one per message) compiles "
                   "the app's modules again; unset it for this service (docs/deployment.md, Threads)", err=True)
    click.echo("starting: " + shlex.join(argv))
    if dry_run:
        return
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)
