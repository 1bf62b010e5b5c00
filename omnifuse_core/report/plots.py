"""Report figures as base64 PNG strings (matplotlib's object API with the Agg renderer; no pyplot global state).

Every function takes plain numbers/arrays and returns ``data:image/png;base64,...`` so the HTML needs no files.
"""
from __future__ import annotations

import base64
import io
import logging
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)


def _figure(ncols: int = 1, width: float = 6.0, height: float = 3.6) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def to_data_uri(fig: Figure) -> str:
    """Render a figure as an inline PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def lines(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, xlabel: str, ylabel: str,
          ylim: Optional[tuple[float, float]] = None, marker: str = "o") -> str:
    """One line per named series of (x, y); NaN points are left as gaps."""
    fig, (ax,) = _figure()
    for name, (x, y) in series.items():
        ax.plot(list(x), [np.nan if v is None else float(v) for v in y], marker=marker, label=str(name))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylim:
        ax.set_ylim(*ylim)
    if series:
        _legend_outside(ax)
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def _legend_outside(ax) -> None:
    """The legend right of the axes, never over the data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def small_multiples(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]], *, title: str,
                    xlabel: str, ncols: int = 3) -> str:
    """One axis per metric (``panels``: metric -> series name -> (x, y)), one shared legend below the grid."""
    names = list(panels)
    ncols = max(1, min(ncols, len(names)))
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows + 0.6), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    handles = {}
    for ax, metric in zip(axes, names):
        for name, (x, y) in panels[metric].items():
            (line,) = ax.plot(list(x), [np.nan if v is None else float(v) for v in y], marker="o", markersize=3,
                              label=str(name))
            handles.setdefault(str(name), line)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    if len(handles) > 1:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 5),
                   fontsize=8, frameon=False)
    return to_data_uri(fig)


def grouped_bars(groups: Sequence[str], bars: Mapping[str, Sequence[float]], *, title: str, ylabel: str) -> str:
    """Grouped bar chart: one group per x label, one bar per series."""
    fig, (ax,) = _figure(width=max(6.0, 1.2 * len(groups)))
    width = 0.8 / max(len(bars), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(bars.items()):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=str(name))
    ax.set_xticks(x, list(groups), fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    _legend_outside(ax)
    return to_data_uri(fig)


def histograms(panels: Mapping[str, Mapping[str, Sequence[float]]], edges: Sequence[float], *, title: str,
               xlabel: str) -> str:
    """One panel per key (e.g. site); inside, one step histogram (pre-binned counts) per series (e.g. modality)."""
    fig, axes = _figure(ncols=min(len(panels), 4), width=4.0, height=3.2)
    centers = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
    for ax, (panel, series) in zip(axes, list(panels.items())[:4]):
        for name, counts in series.items():
            c = np.asarray(counts, dtype=float)
            ax.step(centers, c / c.sum() if c.sum() else c, where="mid", label=str(name))
        ax.set(title=f"{title}: {panel}", xlabel=xlabel, ylabel="fraction of patients")
        ax.legend(fontsize=7)
    return to_data_uri(fig)


def categorical_trace(traces: Mapping[str, Sequence[str]], *, title: str) -> str:
    """Per series a sequence of categories over epochs (the TLA lazy combination per epoch per site)."""
    cats = sorted({c for seq in traces.values() for c in seq}, key=lambda c: (c.count("+"), c))
    fig, (ax,) = _figure(height=max(2.5, 0.45 * len(cats) + 1.5))
    for i, (name, seq) in enumerate(traces.items()):
        offset = (i - (len(traces) - 1) / 2) * 0.08
        ax.plot(np.arange(1, len(seq) + 1), [cats.index(c) + offset for c in seq], marker="o", label=str(name))
    ax.set_yticks(range(len(cats)), cats, fontsize=8)
    ax.set(title=title, xlabel="epoch (all rounds)", ylabel="laziest combination")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def scatter_map(real: np.ndarray, imputed: np.ndarray, modality: np.ndarray, names: Sequence[str]) -> str:
    """2-D map: real embeddings (circles) vs their imputations (crosses), coloured by modality."""
    fig, (ax,) = _figure(height=4.2)
    colors = [f"C{i}" for i in range(10)]
    for m, name in enumerate(names):
        sel = modality == m
        if sel.any():
            ax.scatter(real[sel, 0], real[sel, 1], s=14, c=colors[m % 10], marker="o", alpha=0.6, label=f"{name} real")
            ax.scatter(imputed[sel, 0], imputed[sel, 1], s=18, c=colors[m % 10], marker="x", label=f"{name} imputed")
    ax.set(title="real (o) vs imputed (x) embeddings, PCA", xlabel="PC 1", ylabel="PC 2")
    ax.legend(fontsize=7, ncol=2)
    return to_data_uri(fig)


def roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], *, title: str) -> str:
    """ROC curves: name -> (fpr, tpr, auc)."""
    fig, (ax,) = _figure(width=4.8, height=4.2)
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(title=title, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower right")
    return to_data_uri(fig)


def calibration(y: np.ndarray, p: np.ndarray, *, n_bins: int = 10, title: str) -> str:
    """Reliability diagram (equal-width bins) with the number of patients per bin."""
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    xs, ys, ns = [], [], []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            xs.append(float(p[sel].mean()))
            ys.append(float(y[sel].mean()))
            ns.append(int(sel.sum()))
    fig, (ax,) = _figure(width=4.8, height=4.2)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    ax.plot(xs, ys, marker="o", label="model")
    for x, yv, n in zip(xs, ys, ns):
        ax.annotate(str(n), (x, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(title=title, xlabel="mean predicted probability", ylabel="observed event rate", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return to_data_uri(fig)


def km_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str) -> str:
    """Kaplan–Meier step curves: name -> (t, S)."""
    fig, (ax,) = _figure()
    for name, (t, s) in curves.items():
        ax.step(t, s, where="post", label=str(name))
    ax.set(title=title, xlabel="time", ylabel="survival probability", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return to_data_uri(fig)
