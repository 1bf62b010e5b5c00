"""Report sections read from the run's records: metrics per round, availability, ω, TLA trace, imputation quality,
privacy, config and versions. Each builder returns ``Section``; an absent part gives a one-line note."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..diagnostics import OMEGA_BINS
from . import plots
from .collect import RunData


@dataclass
class Section:
    id: str
    title: str
    images: list[tuple[str, str]] = field(default_factory=list)  # (alt text, data URI)
    html: str = ""
    note: Optional[str] = None


def fmt(v, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1):
        return str(int(v))  # counts, rounds, n
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else html.escape(str(v))


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def overview(d: RunData) -> Section:
    m, final = d.metrics, d.metrics.get("final") or {}
    rows = [["run directory", str(d.run_dir.resolve())], ["mode", d.mode], ["task", d.task],
            ["fusion", m.get("fusion")], ["strategy", m.get("strategy")], ["rounds", len(m.get("rounds") or [])],
            ["headline metric", d.headline], [f"final {d.headline} (global, {final.get('split', 'test')})",
                                              (final.get("global") or {}).get(d.headline)],
            ["prediction mode", json_text(final.get("prediction_mode"))], ["config digest", m.get("config_digest")]]
    pb = final.get("pooled_binned")
    if pb:
        rows.insert(8, [f"final auroc (all sites' test patients pooled, {pb.get('bins')} score bins)",
                        f"{pb['auroc']:.4f} (95 % bootstrap {pb['auroc_ci_low']:.3f}–{pb['auroc_ci_high']:.3f}; "
                        f"binning error ≤ {pb['auroc_binning_error_max']:.4f}; n = {pb['n']})"])
    ps = final.get("pooled_stratified")
    if ps:
        rows.insert(8, ["final c_index (all sites' test patients, pairs within each site)",
                        f"{ps['c_index']:.4f} (95 % site-stratified bootstrap {ps['c_index_ci_low']:.3f}–"
                        f"{ps['c_index_ci_high']:.3f}; {ps['comparable_pairs']:.0f} comparable pairs)"])
    sites = final.get("sites") or {}
    thr = final.get("threshold")
    if isinstance(thr, dict) and "value" in thr:  # federated / centralized: one threshold (local: one per site)
        rows.insert(8, ["decision threshold (F1, sensitivity, specificity, PPV, NPV, accuracy use it)",
                        f"{thr['value']:.3f} ({thr.get('rule')}, from the {thr.get('from')})"])
    keys = [k for k in (d.headline, "auprc", "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy",
                        "threshold", "brier", "ece", "c_index", "n")
            if any(k in v for v in sites.values())]
    keys = list(dict.fromkeys(keys))
    body = table(["", ""], rows)
    if sites:
        body += "<h3>Final metrics per site (test split)</h3>" + table(
            ["site", *keys], [[s, *[v.get(k) for k in keys]] for s, v in sites.items()])
    return Section("overview", "Run overview", html=body)


def json_text(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    return "–" if v is None else str(v)


def rounds(d: RunData) -> Section:
    sec = Section("rounds", "Metrics per round (validation)")
    rs = d.metrics.get("rounds") or []
    if not rs:
        sec.note = "no rounds recorded in metrics.json"
        return sec
    x = [r.get("round") for r in rs]
    head = d.headline
    series = {"global": (x, [(r.get("global") or {}).get(head) for r in rs])}
    for site in sorted({s for r in rs for s in (r.get("sites") or {})}):
        series[site] = (x, [((r.get("sites") or {}).get(site) or {}).get(head) for r in rs])
    sec.images.append((f"{head} per round, global and per site",
                       plots.lines(series, title=f"{head} per round", xlabel="round", ylabel=head)))
    keys = [k for k in ("auroc", "auprc", "brier", "ece", "sensitivity", "specificity", "f1", "c_index")
            if any(isinstance((r.get("global") or {}).get(k), (int, float)) for r in rs)]
    if keys:  # one metric per axis: their scales and directions differ (Brier/ECE: lower is better)
        panels = {k: {"global": (x, [(r.get("global") or {}).get(k) for r in rs])} for k in keys}
        sec.images.append(("global validation metrics per round, one per panel", plots.small_multiples(
            panels, title="global validation metrics per round", xlabel="round")))
    return sec


def availability(d: RunData) -> Section:
    sec = Section("availability", "Modality availability per site")
    if not d.availability:
        sec.note = "no availability counts: the run did not record them and no site folders were given"
        return sec
    mods = d.modalities or sorted({k for s in d.availability.values() for c in s.values() for k in c}
                                  - {"n", "any"})
    totals = {site: {k: sum(int(c.get(k, 0)) for c in splits.values()) for k in [*mods, "n"]}
              for site, splits in d.availability.items()}
    frac = {m: [t[m] / t["n"] if t["n"] else 0.0 for t in totals.values()] for m in mods}
    sec.images.append(("fraction of patients with each modality per site",
                       plots.grouped_bars(list(totals), frac, title="modality availability", ylabel="fraction")))
    sec.html = (f"<p>Source: {html.escape(d.availability_source)}.</p>" +
                table(["site", "patients", *mods], [[s, t["n"], *[t[m] for m in mods]] for s, t in totals.items()]))
    return sec


def _omega_source(d: RunData) -> tuple[dict, str]:
    last = (d.metrics.get("rounds") or [{}])[-1].get("sites") or {}
    recorded = {s: v for s, v in last.items() if any(str(k).startswith("omega_hist/") for k in v)}
    if recorded:
        return recorded, "aggregate histograms reported by the sites in the last round"
    return d.diagnostics, "computed from the final model on each site's training split"


def omega(d: RunData) -> Section:
    sec = Section("omega", "DWFuse weight ω per modality per site")
    src, how = _omega_source(d)
    panels = {}
    for site, diag in src.items():
        mods = sorted({k.split("/")[1] for k in diag if str(k).startswith("omega_hist/")},
                      key=lambda m: d.modalities.index(m) if m in d.modalities else 99)
        panels[site] = {m: [diag.get(f"omega_hist/{m}/{b}") or 0 for b in range(len(OMEGA_BINS) - 1)] for m in mods}
    panels = {s: p for s, p in panels.items() if p}
    if not panels:
        sec.note = ("no ω histograms: the fusion is not OmniFuse/DWFuse, or neither the run nor site folders provide "
                    "them")
        return sec
    for i in range(0, len(panels), 4):
        chunk = dict(list(panels.items())[i:i + 4])
        sec.images.append((f"omega histograms {', '.join(chunk)}",
                           plots.histograms(chunk, OMEGA_BINS, title="ω", xlabel="ω (training weight)")))
    sec.html = f"<p>{html.escape(how)}. ω uses labels: it weights training only and never enters a prediction.</p>"
    return sec


def lazy_traces(metrics: dict) -> dict[str, list[str]]:
    """Per site (or ``pooled``) the laziest combination per epoch, over all rounds."""
    out: dict[str, list[str]] = {}
    for rnd in metrics.get("rounds") or []:
        per_site = dict(rnd.get("trace") or {})
        for site, train in (rnd.get("train") or {}).items():
            if isinstance(train, dict) and isinstance(train.get("trace"), dict):
                per_site.setdefault(site, train["trace"])
        for site, trace in per_site.items():
            lazy = (trace or {}).get("lazy") or []
            out.setdefault(site, []).extend("none" if c is None else str(c)
                                           for c in (lazy if isinstance(lazy, list) else [lazy]))
    return {s: v for s, v in out.items() if v}


def tla(d: RunData) -> Section:
    sec = Section("tla", "TLA trace: laziest modality combination per epoch")
    traces = lazy_traces(d.metrics)
    if not traces:
        sec.note = "no TLA trace in metrics.json (TLA off, a non-OmniFuse fusion, or a runner that does not record it)"
        return sec
    sec.images.append(("laziest combination per epoch per site", plots.categorical_trace(traces, title="TLA trace")))
    rows = [[s, len(v), max(set(v), key=v.count)] for s, v in traces.items()]
    sec.html = table(["site", "epochs", "most frequent laziest combination"], rows)
    return sec


def imputation(d: RunData) -> Section:
    sec = Section("imputation", "Imputation quality (cosine of imputed vs true embedding)")
    rs = d.metrics.get("rounds") or []
    series = {}
    for rnd in rs:
        for site, m in (rnd.get("sites") or {}).items():
            for k, v in m.items():
                if str(k).startswith("impute_cos/"):
                    x, y = series.setdefault(f"{site}/{k.split('/', 1)[1]}", ([], []))
                    x.append(rnd.get("round"))
                    y.append(v)
    if series:
        sec.images.append(("imputation cosine per round", plots.lines(
            series, title="imputation cosine per round", xlabel="round", ylabel="cosine", ylim=(-1, 1))))
        return sec
    final = {s: {k.split("/", 1)[1]: v for k, v in diag.items() if k.startswith("impute_cos/")}
             for s, diag in d.diagnostics.items()}
    final = {s: v for s, v in final.items() if v}
    if not final:
        sec.note = "no imputation diagnostics (not an imputing fusion, or no site folders given)"
        return sec
    mods = [m for m in d.modalities if any(m in v for v in final.values())]
    bars = {m: [np.nan_to_num(final[s].get(m, np.nan)) for s in final] for m in mods}
    sec.images.append(("imputation cosine of the final model per site and modality", plots.grouped_bars(
        list(final), bars, title="imputation cosine (final model)", ylabel="mean cosine")))
    sec.note = ("per-round values are not recorded by this run; shown: the final model on each site's training split "
                "with simulated missingness")
    return sec


def privacy(d: RunData) -> Section:
    sec = Section("privacy", "Privacy: ε per round per site")
    if d.privacy:
        series = {s: ([p.get("round") for p in r.get("per_round") or []],
                      [p.get("epsilon") for p in r.get("per_round") or []]) for s, r in d.privacy.items()}
        series = {s: v for s, v in series.items() if v[0]}
        if series:
            sec.images.append(("cumulative epsilon per round per site", plots.lines(
                series, title="cumulative ε per round", xlabel="round", ylabel="ε")))
        sec.html = table(["site", "ε", "δ", "accountant", "cap", "remaining"],
                         [[s, r.get("epsilon"), r.get("delta"), r.get("accountant"), r.get("max_epsilon"),
                           r.get("remaining_budget")] for s, r in d.privacy.items()])
        sec.html += "".join(f"<p>{html.escape(str(r['statement']))}</p>" for r in d.privacy.values()
                            if r.get("statement"))
    elif d.metrics.get("privacy"):
        sec.html = table(["site", "ε", "δ"], [[s, v.get("epsilon"), v.get("delta")]
                                              for s, v in d.metrics["privacy"].items()])
        sec.note = "no RUN/privacy/*.json reports: final ε from metrics.json only"
    else:
        sec.note = "trained without differential privacy (no privacy reports in this run)"
    return sec


def config(d: RunData) -> Section:
    sec = Section("config", "Resolved configuration and seeds")
    if not d.config_text:
        sec.note = "no config.yaml in the run directory"
        return sec
    seed = d.cfg.seed if d.cfg else "–"
    sec.html = (f"<p>Seed: {fmt(seed)} (local rounds use seed + round number). Config digest: "
                f"{fmt(d.metrics.get('config_digest'))}.</p><pre>{html.escape(d.config_text)}</pre>")
    return sec


def versions(d: RunData) -> Section:
    sec = Section("versions", "Package versions")
    sec.html = table(["package", "version"], [[k, v or "not installed"] for k, v in d.versions.items()])
    sec.note = d.notes.get("versions")
    return sec
