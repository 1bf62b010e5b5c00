"""Turn Flower's run config into the one typed :class:`Config`.

Run config keys (``[tool.flwr.app.config]`` in pyproject.toml, overridable with ``flwr run . --run-config``):

* ``config``: a shipped config name (``smoke``, ``demo``) or an absolute YAML path, resolved on the server;
* ``data-root`` (simulation), ``run-dir`` (absolute), ``resume`` (continue from ``<run-dir>/checkpoints``);
* any other Config key (hyphenated); the empty string means "keep the YAML value" (Flower only accepts overrides
  of keys declared in pyproject, so declared-but-unset keys default to "").
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from omnifuse_core.config import Config, ConfigError

log = logging.getLogger(__name__)

CONFIG_KEY = "config"
RESUME_KEY = "resume"
_NOT_CONFIG = {CONFIG_KEY, RESUME_KEY}


def default_run_dir(run_id: Any) -> Path:
    """Where a run without ``run-dir`` writes (``flwr run .`` with no run config): ``~/.omnifuse/runs/flwr-<run id>``."""
    return Path.home().resolve() / ".omnifuse" / "runs" / f"flwr-{run_id}"


def resolve_run_config(run_config: Mapping[str, Any], run_id: Any = None) -> tuple[Config, bool]:
    """Build the run's Config and the resume flag from Flower's run config.

    Args:
        run_config: ``context.run_config`` of the ServerApp.

    Returns:
        ``(cfg, resume)``.

    Raises:
        ConfigError: unknown base config, or ``run-dir`` missing / not absolute.
    """
    base = Config.load(str(run_config.get(CONFIG_KEY) or "smoke"))
    overrides = {k: v for k, v in run_config.items() if k not in _NOT_CONFIG and v != ""}
    cfg = Config.from_flat(overrides, base=base, strict=False)
    if not cfg.run_dir and run_id is not None:  # `flwr run .` out of the box
        cfg = cfg.replace(run_dir=str(default_run_dir(run_id)))
    if not cfg.run_dir or not Path(cfg.run_dir).is_absolute():
        raise ConfigError(f"run config key 'run-dir' = {cfg.run_dir!r}: give an absolute folder for the run's "
                          "outputs (flwr run executes the ServerApp from an installed copy of the app, so relative "
                          "paths would land in $FLWR_HOME)")
    resume = run_config.get(RESUME_KEY, False)
    resume = resume if isinstance(resume, bool) else str(resume).lower() in ("true", "1", "yes")
    return cfg, resume
