"""Flower ServerApp: resolves the run config and runs the federation loop (``server.loop``)."""
from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .loop import run_federation
from .run_config import resolve_run_config

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls once per run."""
    cfg, resume = resolve_run_config(context.run_config)
    log.info("federated run: config digest %s, %d rounds, strategy %s, run dir %s", cfg.digest(), cfg.rounds,
             cfg.strategy, cfg.run_dir)
    run_federation(grid, cfg, resume=resume)
