"""B5 figure: test AUROC (and the membership-inference AUC) against epsilon, one line per mode and preset, from
one or more ``bench/dp_utility.py`` result files. epsilon = inf (no DP) is drawn at the right edge.

Usage:
  .venv/bin/python bench/plot_dp.py bench/results/issue14/dp_utility-demo.json \
      bench/results/issue14/dp_utility-demo-x5.json --out bench/results/issue14/dp_utility.png
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

INF_X = 20.0  # where epsilon = inf is drawn on the log axis


def curves(result: dict) -> dict[str, list[tuple[float, float, float, float]]]:
    """``{mode: [(x, mean AUROC, std, MIA AUC), ...]}`` sorted by epsilon."""
    out: dict[str, list] = {}
    for cell in result["table"].values():
        eps = cell["epsilon_target"]
        x = INF_X if eps is None else float(eps)
        auroc = cell["auroc"]
        out.setdefault(cell["mode"], []).append((x, auroc.get("mean"), auroc.get("std") or 0.0, cell.get("mia_auc")))
    return {m: sorted(v) for m, v in out.items()}


def plot(results: list[dict], out: Path) -> Path:
    fig = Figure(figsize=(9, 3.6), dpi=110)
    ax_u, ax_m = fig.subplots(1, 2)
    styles = {"federated": "-", "centralized": "--"}
    for res in results:
        for mode, pts in curves(res).items():
            xs = [p[0] for p in pts]
            label = f"{res['preset']}, {mode}"
            ax_u.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                          linestyle=styles.get(mode, "-"), label=label)
            ax_m.plot(xs, [p[3] if p[3] is not None else math.nan for p in pts], marker="o",
                      linestyle=styles.get(mode, "-"), label=label)
    for ax, title in ((ax_u, "test AUROC (mean ± sd over runs)"), (ax_m, "membership-inference AUC")):
        ax.set_xscale("log")
        ax.set_xticks([1, 3, 8, INF_X])
        ax.set_xticklabels(["1", "3", "8", "no DP"])
        ax.set_xlabel("target ε (δ = 1e-5)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ax_u.axhline(0.5, color="grey", lw=0.8)
    ax_m.axhline(0.55, color="red", lw=0.8, ls=":")
    ax_m.axhline(0.5, color="grey", lw=0.8)
    handles, labels = ax_u.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.3, wspace=0.25)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench/results/issue14/dp_utility.png"))
    args = ap.parse_args()
    print(f"written to {plot([json.loads(p.read_text()) for p in args.results], args.out)}")


if __name__ == "__main__":
    main()
