"""Validation problems and the report that lists all of them at once."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

#: Problem scopes. ``site``: the site cannot be used at all (bad descriptor, unreadable cohort table);
#: ``row``: the whole patient row is unusable (bad label, duplicate id, bad split); ``entry``: one modality entry of
#: one patient is unusable (missing or unreadable file, NaN in its data); ``column``: a cohort column is not
#: understood (unknown column).
SCOPES = ("site", "row", "entry", "column")


def shown(value: Any) -> str:
    """A cell value quoted for a message: ``'NaN'``, never a Python repr such as ``np.str_('NaN')``."""
    return "'" + str(value) + "'"


@dataclass(frozen=True)
class Problem:
    """One problem in a site's data.

    Iterating a problem yields ``(file, row, field, reason)``.

    Args:
        file: path relative to the site folder (``site.yaml``, ``cohort.csv``, ``ehr/p1.csv``...).
        row: 1-based data row in ``file`` (first row after the header = 1); None when not row-specific.
        field: column or descriptor key concerned; None when not field-specific.
        reason: what is wrong and what to do.
        code: short machine reason, used to count skipped entries (``missing_file``, ``nan``...).
        scope: one of :data:`SCOPES`.
        modality: the modality concerned (``entry`` scope).
        patient: index of the patient's row in the cohort table (0-based), when the problem belongs to one.
    """

    file: str
    row: int | None
    field: str | None
    reason: str
    code: str = "invalid"
    scope: str = "entry"
    modality: str | None = None
    patient: int | None = field(default=None, compare=False)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.file, self.row, self.field, self.reason))

    def format(self) -> str:
        where = self.file + (f" row {self.row}" if self.row is not None else "")
        what = f" [{self.field}]" if self.field else ""
        return f"{where}{what}: {self.reason}"


@dataclass
class ValidationReport:
    """Every problem found in one site folder plus a summary of what is there.

    Args:
        site: the site folder.
        problems: all problems found.
        summary: patients, availability per modality, label balance, split sizes, notes.
    """

    site: str
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, *problems: Problem) -> None:
        self.problems.extend(problems)

    def counts(self) -> dict[str, dict[str, int]]:
        """Number of problems per modality (``rows`` for row scope, ``site``/``cohort`` otherwise) and code."""
        out: dict[str, Counter] = {}
        for p in self.problems:
            key = p.modality or {"row": "rows", "column": "cohort"}.get(p.scope, "site")
            out.setdefault(key, Counter())[p.code] += 1
        return {k: dict(v) for k, v in out.items()}

    def format(self, max_problems: int = 200) -> str:
        """Human-readable text: a summary, then every problem (up to ``max_problems``)."""
        lines = [f"Site {self.site}: " + ("OK" if self.ok else f"{len(self.problems)} problem(s)")]
        s = self.summary
        if "patients" in s:
            lines.append(f"  patients: {s['patients']}")
        for key in ("availability", "splits", "labels"):
            if s.get(key):
                lines.append(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in s[key].items()))
        for note in s.get("notes", []):
            lines.append(f"  note: {note}")
        for p in self.problems[:max_problems]:
            lines.append(f"  - {p.format()}")
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)


class SiteDataError(ValueError):
    """A site folder cannot be loaded; ``report`` lists every problem (with file, row, field and reason)."""

    def __init__(self, report: ValidationReport, intro: str = "") -> None:
        self.report = report
        intro = intro or ("the site data has problems; fix them (or set on-invalid: skip to train without the "
                          "invalid entries)")
        super().__init__(f"{intro}\n{report.format()}")
