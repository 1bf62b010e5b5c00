"""Flower ServerApp: resolves the run config and runs the federation loop (``server.loop``)."""
from __future__ import annotations

import logging

from flwr.app import Context
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from .loop import run_federation
from .run_config import resolve_run_config

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls once per run."""
    cfg, resume = resolve_run_config(context.run_config, context.run_id)
    # Flower's own logger: `flwr run --stream` shows these lines to the user
    flwr_log(logging.INFO, "OmniFuse run folder: %s (config digest %s, %d rounds, strategy %s)", cfg.run_dir,
             cfg.digest(), cfg.rounds, cfg.strategy)
    run_federation(grid, cfg, resume=resume, run_id=context.run_id)
    flwr_log(logging.INFO, "OmniFuse run finished: %s (metrics.json, checkpoints/, logs/, privacy/)", cfg.run_dir)
