"""Federation-level check of the configured ``modalities`` against what the sites declare in ``site.yaml``.

A site may lack a modality (a hospital without genomics): its patients then have that modality missing. But a
configured modality that *no* site declares would train an encoder on zeros everywhere, and a modality a site
declares that the config does not list is ignored; both used to pass silently. Runs with every site's declared
list (centralized/local load all sites; in a federation each site sends its list with its shapes, names only).
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

from ..config import Config, ConfigError

log = logging.getLogger(__name__)


def check_declared(declared: Mapping[str, Sequence[str]], cfg: Config) -> list[str]:
    """Refuse configured modalities no site declares; return (and log) a note per declared-but-unused modality.

    Args:
        declared: site name -> modality names its ``site.yaml`` declares.
        cfg: run configuration (``modalities``).

    Raises:
        ConfigError: naming the undeclared modalities, each site's declared list, and the ``modalities`` to set.
    """
    configured = cfg.modality_list
    anywhere = {m for mods in declared.values() for m in mods}
    missing = [m for m in configured if m not in anywhere]
    if missing and declared:
        listing = "; ".join(f"{site}: {', '.join(mods) or '(none)'}" for site, mods in sorted(declared.items()))
        usable = [m for m in configured if m in anywhere]
        fix = (f"set modalities: {','.join(usable)}" if usable else
               "name the sites' modalities in the config's modalities (and use the names site.yaml declares)")
        raise ConfigError(f"configured modalities {', '.join(missing)} are declared by no site ({listing}); {fix} "
                          "(docs/data-format.md)")
    notes = []
    for site, mods in sorted(declared.items()):
        unused = [m for m in mods if m not in configured]
        if unused:
            notes.append(f"site '{site}' declares {', '.join(unused)}, which the config's modalities "
                         f"({','.join(configured)}) do not list: ignored")
    for note in notes:
        log.warning(note)
    return notes
