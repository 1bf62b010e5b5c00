"""Synthetic gene expression (log2 scale): a few pathway gene sets follow the latent signals, the rest is noise.

The gene list (names, order, which genes form each pathway and their loadings) depends only on the preset and the
federation seed, so every site has the same columns. For each observed factor, ``pathway_genes`` genes follow
``mean_g + loading_g * u + noise``; the remaining genes are ``mean_g + sd_g * noise`` (a third of them share an
unrelated nuisance module). Each site adds a small per-gene batch shift (non-IID measurement).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GenePanel:
    """The federation's gene list and the pathway structure behind it."""

    names: list[str]
    mean: np.ndarray  # [G]
    sd: np.ndarray  # [G] noise sd
    pathway: np.ndarray  # [G] index of the signal column driving the gene, -1 = none
    loading: np.ndarray  # [G]
    nuisance: np.ndarray  # [G] loading on a shared latent-independent module

    def describe(self) -> dict:
        """Which genes carry signal (recorded in oracle.json for debugging)."""
        return {"n_genes": len(self.names),
                "pathways": {int(k): [self.names[g] for g in np.flatnonzero(self.pathway == k)]
                             for k in sorted(set(self.pathway.tolist())) if k >= 0}}


def make_panel(n_genes: int, n_signals: int, per_pathway: int, rng: np.random.Generator) -> GenePanel:
    """Build the gene panel.

    Args:
        n_genes: total genes.
        n_signals: number of genomics signal columns (observed latent factors).
        per_pathway: genes per signal column.
        rng: federation-wide random stream.
    """
    if n_genes < n_signals * per_pathway:
        raise ValueError(f"n_genes={n_genes} is smaller than {n_signals} pathways x {per_pathway} genes")
    pathway = np.full(n_genes, -1)
    chosen = rng.permutation(n_genes)[: n_signals * per_pathway]
    pathway[chosen] = np.repeat(np.arange(n_signals), per_pathway)
    loading = np.where(pathway >= 0, rng.choice([-1.0, 1.0], n_genes) * rng.uniform(0.6, 1.2, n_genes), 0.0)
    nuisance = np.where((pathway < 0) & (rng.random(n_genes) < 1 / 3), rng.uniform(0.5, 1.0, n_genes), 0.0)
    return GenePanel(names=[f"GENE{g + 1:04d}" for g in range(n_genes)], mean=rng.uniform(3.0, 11.0, n_genes),
                     sd=rng.uniform(0.4, 1.0, n_genes), pathway=pathway, loading=loading, nuisance=nuisance)


def render_expression(panel: GenePanel, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Expression ``[N, G]`` for N patients given their genomics signals ``[N, k]``."""
    n, g = signal.shape[0], len(panel.names)
    batch_shift = 0.15 * rng.standard_normal(g)
    module = rng.standard_normal((n, 1))
    drive = np.zeros((n, g))
    on = panel.pathway >= 0
    drive[:, on] = signal[:, panel.pathway[on]] * panel.loading[on]
    noise_sd = np.where(on, 0.5, panel.sd)
    return panel.mean + batch_shift + drive + module * panel.nuisance + noise_sd * rng.standard_normal((n, g))


def write_expression(site_dir: Path, panel: GenePanel, pids: list[str], expr: np.ndarray,
                     id_column: str = "patient_id") -> str:
    """Write ``genomics.csv`` (first column = patient key, then one column per gene); returns its relative path."""
    lines = [",".join([id_column, *panel.names])]
    for pid, row in zip(pids, expr):
        lines.append(pid + "," + ",".join(f"{v:.3f}" for v in row))
    (site_dir / "genomics.csv").write_text("\n".join(lines) + "\n")
    return "genomics.csv"
