"""Statistics and tables shared by the benchmark scripts: mean ± std over runs, paired comparisons of two arms
(paired t-test over runs and the two-level bootstrap interval of ``bench/bootstrap.py``), the issue's targets beside
measured values, and Markdown tables."""
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


# --- paired comparisons of runs (t-test over runs + two-level bootstrap over seeds and test patients) ---------
def _value(run: dict, site) -> float:
    v = run["auroc"] if site is None else (run.get("sites") or {}).get(site)
    return float("nan") if v is None else float(v)


def compare(a: Sequence[dict], b: Sequence[dict], *, site: str | None = None, reps: int = 2000,
            seed: int = 0) -> dict:
    """Arm A − arm B over the runs they share (paired by data seed and model seed).

    Args:
        a, b: run results of ``bench.training`` / ``bench.runner`` (``data_seed``, ``seed``, ``auroc``, ``sites``,
            ``scores``, ``labels``, ``ids``).
        site: compare one site's AUROC only (default: the sample-weighted mean over sites).
        reps, seed: bootstrap replicates and seed (``bench.bootstrap.paired_bootstrap``).

    Returns:
        :func:`paired_test`'s fields over the runs (``mean_diff``, ``t_p``, ``wilcoxon_p``, ``pairs``) plus ``lo``,
        ``hi`` (95 % bootstrap interval; None when the runs carry no per-patient scores) and ``bootstrap``.
    """
    from bench.bootstrap import paired_bootstrap

    ib = {(r["data_seed"], r["seed"]): r for r in b}
    pairs = [(r, ib[(r["data_seed"], r["seed"])]) for r in a if (r["data_seed"], r["seed"]) in ib]
    out = paired_test([_value(x, site) for x, _ in pairs], [_value(y, site) for _, y in pairs])
    out.update({"lo": None, "hi": None, "bootstrap": None})
    if not pairs or any(not x.get("scores") or not y.get("scores") for x, y in pairs):
        return out
    arm_a, arm_b, labels = [], [], []
    for ds in sorted({x["data_seed"] for x, _ in pairs}):
        runs = [(x, y) for x, y in pairs if x["data_seed"] == ds]
        sites = [s for s in runs[0][0]["labels"] if site is None or s == site]
        for x, y in runs:
            if any(x["ids"].get(s) != y["ids"].get(s) or x["ids"].get(s) != runs[0][0]["ids"].get(s) for s in sites):
                raise ValueError(f"data seed {ds}: paired runs scored different test patients")
        labels.append({s: runs[0][0]["labels"][s] for s in sites})
        arm_a.append([{s: x["scores"][s] for s in sites} for x, _ in runs])
        arm_b.append([{s: y["scores"][s] for s in sites} for _, y in runs])
    boot = paired_bootstrap(arm_a, arm_b, labels, reps=reps, seed=seed)
    out.update({"lo": boot["lo"], "hi": boot["hi"], "bootstrap": boot})
    return out


def _signed(value, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):+.{digits}f}"


def fdiff(c: dict | None, digits: int = 3) -> str:
    """``+0.012 [−0.003, +0.027]`` (paired Δ and its 95 % bootstrap interval), ``—`` for no comparison."""
    if not c:
        return "—"
    ci = f" [{_signed(c.get('lo'), digits)}, {_signed(c.get('hi'), digits)}]" if c.get("lo") is not None else ""
    return _signed(c.get("mean_diff"), digits) + ci


def fp(c: dict | None) -> str:
    """The paired t-test p of a comparison (``—`` for none)."""
    return "—" if not c else fnum(c.get("t_p"))


def excludes_zero(c: dict | None) -> bool | None:
    """Whether the bootstrap interval of a comparison excludes 0 (None without an interval)."""
    if not c or c.get("lo") is None or not math.isfinite(c["lo"]) or not math.isfinite(c["hi"]):
        return None
    return c["lo"] > 0 or c["hi"] < 0


def summary(runs: Sequence[dict], site: str | None = None) -> dict:
    """:func:`mean_std` of the runs' AUROC (global, or one site's)."""
    return mean_std(_value(r, site) for r in runs)
