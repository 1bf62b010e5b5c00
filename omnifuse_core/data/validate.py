"""``validate_site``: every problem of a site folder at once (what ``omnifuse check-site DIR`` prints)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import Config
from .problems import Problem, ValidationReport
from .scan import scan_site

log = logging.getLogger(__name__)


def validate_site(path: str | Path, cfg: Config | None = None) -> ValidationReport:
    """Check a site folder without loading models; never raises for bad data.

    Args:
        path: the site folder.
        cfg: run configuration (task, modalities, sizes). None = check every task and modality the site declares.

    Returns:
        The report: ``problems`` (file, row, field, reason), ``summary`` (patients, availability per modality,
        label balance, split sizes, notes), ``ok`` and ``format()``.
    """
    try:
        return scan_site(path, cfg).report
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:  # last line of defence: no traceback
        log.debug("validation of %s failed unexpectedly", path, exc_info=True)
        report = ValidationReport(str(path))
        report.add(Problem(str(path), None, None, f"cannot read the site ({type(exc).__name__}: {exc}); please "
                           "report this with the file layout", "unexpected", "site"))
        return report
