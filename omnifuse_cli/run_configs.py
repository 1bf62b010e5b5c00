"""How the commands turn ``--config``/``--set`` into a Config (shared by ``main`` and ``supernode``)."""
from __future__ import annotations

from omnifuse_core.config import Config


def load_config(config: str, overrides: tuple[str, ...]) -> Config:
    """A shipped config name or YAML file, with ``--set KEY=VALUE`` overrides."""
    return Config.load(config).with_overrides(overrides)


def check_config(config: str | None, overrides: tuple[str, ...]) -> Config | None:
    """The config a site check uses: ``--config`` with ``--set``; ``--set`` alone on the defaults; else None
    (the checker's own defaults)."""
    return load_config(config, overrides) if config else (Config().with_overrides(overrides) if overrides else None)
