"""Provision a site for a node that was given no data (``flwr run .`` out of the box): the data-layer entry point.

A simulation node without ``data-root`` builds its own small synthetic site (``smoke`` preset, seed 0, one site of
``n``) under ``~/.omnifuse/synthetic`` once, and reuses it; deterministic from the partition id, and nothing leaves
the node. The site *generator* lives in ``sim`` (which depends on this package, never the reverse), so it is named
here by a dotted path and imported only when a node actually needs a synthetic site: the client asks the data
layer for a site and no longer reaches into the simulator itself.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

#: ``module:function`` with the signature of ``sim.generator.generate_federation`` (preset, n_sites, out_dir, seed=,
#: overwrite=) -> the federation folder.
SYNTHETIC_PROVIDER = "sim.generator:generate_federation"


def _provider(spec: str = SYNTHETIC_PROVIDER) -> Callable[..., Path]:
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def synthetic_federation(pid: int, n: int, *, preset: str = "smoke", seed: int = 0,
                         root: Path | None = None) -> Path:
    """The federation folder holding node ``pid``'s synthetic site (of ``n``), generated on first use.

    Args:
        pid: the node's partition id.
        n: the number of partitions.
        preset: the synthetic preset.
        seed: the generator seed.
        root: parent folder (default ``~/.omnifuse/synthetic``).
    """
    root = Path(root) if root is not None else Path.home().resolve() / ".omnifuse" / "synthetic"
    folder = root / f"{preset}-{n}-seed{seed}-node{pid}"
    if not (folder / "federation.yaml").is_file():
        log.info("no data-root in the run config: node %d of %d builds its synthetic site in %s", pid, n, folder)
        _provider()(preset, n, folder, seed=seed, overwrite=True)
    return folder
