"""Statistics and tables shared by the benchmark scripts: mean ± std over seeds, paired tests against a baseline,
the issue's targets beside measured values, and Markdown tables."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np


def finite(values: Iterable) -> list[float]:
    """The values that are numbers and finite (None and NaN are left out), as floats."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Iterable) -> dict:
    """``{"mean", "std" (sample, ddof=1; 0 for one value), "n", "runs"}`` over the finite values."""
    runs = [None if v is None else float(v) for v in values]
    vals = finite(runs)
    mean = float(np.mean(vals)) if vals else float("nan")
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else float("nan"))
    return {"mean": mean, "std": std, "n": len(vals), "runs": runs}


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired comparison of ``a`` against ``b`` over the same seeds: mean difference, t-test and Wilcoxon p.

    p-values are None when fewer than two complete pairs exist (or all differences are zero for Wilcoxon).
    """
    from scipy import stats

    pairs = [(float(x), float(y)) for x, y in zip(a, b)
             if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))]
    diff = [x - y for x, y in pairs]
    out = {"pairs": len(pairs), "mean_diff": float(np.mean(diff)) if diff else float("nan"),
           "t_p": None, "wilcoxon_p": None}
    if len(pairs) >= 2 and any(d != 0 for d in diff):
        xs, ys = zip(*pairs)
        t = stats.ttest_rel(xs, ys)
        out["t_p"] = None if not math.isfinite(float(t.pvalue)) else float(t.pvalue)
        out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
    return out


def fmt(summary: dict, digits: int = 3) -> str:
    """``0.812 ± 0.013`` (or ``n/a``)."""
    if summary is None or not math.isfinite(summary.get("mean", float("nan"))):
        return "n/a"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def fnum(value, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or ``n/a`` for None / NaN."""
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def target(name: str, value, threshold: float, op: str = ">=") -> dict:
    """A target from the issue beside its measured value: ``{"target", "value", "met"}`` (met None = no value)."""
    ok = None
    if value is not None and math.isfinite(float(value)):
        ops = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__}
        if op not in ops:
            raise ValueError(f"target {name!r}: unknown comparison {op!r}; use one of {list(ops)}")
        ok = bool(ops[op](float(value), float(threshold)))
    return {"target": f"{name} {op} {threshold:g}", "value": value, "met": ok}


def targets_lines(targets: dict) -> list[str]:
    """One printed line per target: what it is, the measured value, and met / missed / not measured."""
    return [f"- {k}: {t['target']}; measured {fnum(t['value'])} → "
            f"{'met' if t['met'] else 'missed' if t['met'] is False else 'not measured'}" for k, t in targets.items()]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub Markdown table.

    Args:
        header: column titles.
        rows: one sequence of cells (anything printable) per row.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
