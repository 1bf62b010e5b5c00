"""``RUN/report.html``: one self-contained page (inline CSS, every plot an embedded base64 PNG, no scripts, no URLs).

Sections (element ids): overview, rounds, availability, omega, tla, imputation, embedding, roc, calibration,
survival, stratification, privacy, config, versions. A section that does not apply to the run shows a one-line note.
"""
from __future__ import annotations

import datetime as _dt
import html
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from . import sections_pred as sp
from . import sections_run as sr
from . import sections_timing as st
from .collect import RunData, collect
from .model_card import write_model_card

log = logging.getLogger(__name__)

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;
color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #246;padding-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;color:#246}
h3{font-size:1.05em}nav a{margin-right:.8em;font-size:.9em}table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}th{background:#eef}img{max-width:100%;display:block;
margin:.6em 0}.note{color:#666;font-style:italic}pre{background:#f6f6f6;padding:.6em;font-size:.8em;overflow:auto;
max-height:30em}footer{margin-top:2em;color:#888;font-size:.8em}.how{color:#345;font-size:.92em}
table{display:block;overflow-x:auto;max-width:100%}img{height:auto}
@media (max-width:640px){body{padding:.5em .7em}nav a{display:inline-block;margin:.15em .6em .15em 0}}
"""

#: one line per section: what it shows and how to read it
HOW_TO_READ = {
    "overview": "The run's final test metrics: per site, the size-weighted mean, and the pooled metric over all "
                "sites' test patients with its 95 % interval — prefer the pooled one when sites are small.",
    "rounds": "Validation metrics after each round; a curve that peaks and falls means the later rounds overfit "
              "(final-model: best-val tests the peak). Higher is better except Brier and ECE.",
    "availability": "How many training patients at each site have each modality; OmniFuse imputes the rest.",
    "omega": "DWFuse's weight for each modality: how much each site's model relies on it.",
    "tla": "The modality combination TLA found laziest each epoch — the one the model under-uses.",
    "imputation": "How close imputed embeddings are to the real ones (1 = identical), for patients who have the "
                  "modality and had it hidden.",
    "embedding": "Real and imputed embeddings on one 2-D map; imputed points among the real ones mean plausible "
                 "imputations. Embeddings never leave a site.",
    "roc": "Sensitivity against 1 − specificity at every threshold; the area is the AUROC (0.5 = chance).",
    "calibration": "Predicted risk against observed event rate; points on the diagonal are well calibrated.",
    "survival": "Kaplan–Meier survival of the predicted risk groups; separated curves mean useful risk ranking.",
    "stratification": "Patients grouped by predicted risk; event rates should rise from low to high risk.",
    "privacy": "Privacy loss ε spent per round at each site (lower = more private); the total is in the report.",
    "timing": "Where the run's time goes: per round, and per stage of each site's messages.",
    "config": "Everything needed to rerun this exactly.",
    "versions": "Package versions this run used.",
}


def build_sections(data: RunData, *, n_groups: int = 3, clusters: int = 3) -> list[sr.Section]:
    """All report sections in page order."""
    strat = sp.compute_strata(data, n_groups=n_groups, clusters=clusters)
    data.strata = strat  # reused by the model card
    return [sr.overview(data), sr.rounds(data), sr.availability(data), sr.omega(data), sr.tla(data),
            sr.imputation(data), sp.embedding(data), sp.roc(data), sp.calibration(data), sp.survival(data, strat),
            sp.stratification(data, strat), sr.privacy(data), st.timing(data), sr.config(data), sr.versions(data)]


def render_html(data: RunData, sections: Sequence[sr.Section]) -> str:
    """The whole page as one string."""
    title = f"OmniFuse-FL report: {data.run_dir.resolve().name}"
    nav = " ".join(f'<a href="#{s.id}">{html.escape(s.title.split(":")[0])}</a>' for s in sections)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>"]
    if data.notes.get("data"):
        parts.append(f'<p class="note">{html.escape(data.notes["data"])}</p>')
    for s in sections:
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
        if s.id in HOW_TO_READ:
            parts.append(f'<p class="how">How to read this: {html.escape(HOW_TO_READ[s.id])}</p>')
        parts += [f'<img alt="{html.escape(alt)}" src="{uri}">' for alt, uri in s.images]
        parts.append(s.html)
        if s.note:
            parts.append(f'<p class="note">{html.escape(s.note)}</p>')
        parts.append("</section>")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<footer>Generated {stamp} by omnifuse report. Self-contained: no external resources."
                 "</footer></body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, *, sites: Optional[Sequence[str | Path]] = None, n_groups: int = 3,
                 clusters: int = 3) -> Path:
    """Write ``RUN/report.html`` and ``RUN/model_card.md``.

    Args:
        run_dir: a run directory written by any mode (centralized, local, federated).
        sites: site folders and/or federation folders; needed for the sections that use patient data (ROC,
            calibration, Kaplan–Meier, stratification, embedding map) unless the run recorded them.
        n_groups: risk groups for stratification (3 = tertiles).
        clusters: k-means clusters of fused patient embeddings (0 = none).

    Returns:
        The path of ``report.html``.
    """
    data = collect(run_dir, sites)
    sections = build_sections(data, n_groups=n_groups, clusters=clusters)
    out = data.run_dir / "report.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(render_html(data, sections), encoding="utf-8")
    os.replace(tmp, out)
    write_model_card(data)
    log.info("report written to %s (%d sections, %d figures)", out, len(sections),
             sum(len(s.images) for s in sections))
    return out
