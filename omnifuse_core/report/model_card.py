"""``RUN/model_card.md``: data, task, metrics per site, fairness across sites, privacy, intended use and limits."""
from __future__ import annotations

import datetime as _dt
import logging
import math
from pathlib import Path

import numpy as np

from .collect import RunData

log = logging.getLogger(__name__)

INTENDED_USE = (
    "Research and method development on multimodal clinical data with missing modalities: comparing fusion methods, "
    "federated vs centralized vs local training, and privacy/utility trade-offs. Any clinical use needs a separate "
    "prospective validation at the deploying hospital, a review by its clinical governance, and a calibration check "
    "on its own population.")
LIMITS = [
    "Metrics come from the test split of the participating sites only; performance at other hospitals, on other "
    "populations or under other acquisition protocols is unknown.",
    "Small sites give noisy metrics: read the per-site numbers together with their patient counts.",
    "Missing modalities are imputed from the available ones; predictions for patients with few modalities rest on "
    "imputed embeddings (the `imputed_<m>` columns of `omnifuse predict` show where).",
    "The per-modality head probabilities show each modality's contribution; they are not causal explanations.",
    "A site whose modalities or feature schema differ from the training sites is refused by `omnifuse predict`.",
]


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def _f(v, spec: str = ".3f") -> str:
    f = _num(v)
    return "–" if math.isnan(f) else format(f, spec)


def fairness(sites: dict, headline: str) -> dict:
    """Spread of the headline metric across sites: min, max, max − min, standard deviation, worst site."""
    vals = {s: _num(m.get(headline)) for s, m in sites.items()}
    vals = {s: v for s, v in vals.items() if not math.isnan(v)}
    if not vals:
        return {}
    arr = np.array(list(vals.values()))
    worst = min(vals, key=vals.get)
    return {"min": float(arr.min()), "max": float(arr.max()), "spread": float(arr.max() - arr.min()),
            "std": float(arr.std()), "worst_site": worst, "sites": len(vals)}


def _privacy_lines(data: RunData) -> list[str]:
    if data.privacy:
        return [f"- **{s}**: ε = {_f(r.get('epsilon'))} at δ = {r.get('delta')} ({r.get('accountant')}). "
                f"{r.get('statement', '')}" for s, r in data.privacy.items()]
    if data.metrics.get("privacy"):
        return [f"- **{s}**: ε = {_f(v.get('epsilon'))} at δ = {v.get('delta')}"
                for s, v in data.metrics["privacy"].items()]
    if data.cfg is not None and data.cfg.dp:
        return ["DP-SGD was configured (`dp: true`) but this run holds no privacy report; treat the model as "
                "trained without a verified DP guarantee until `omnifuse privacy-report` confirms one."]
    return ["Trained without DP (differential privacy was off): the model and its checkpoints carry no formal "
            "privacy guarantee for the training patients."]


def render_model_card(data: RunData) -> str:
    """The model card as Markdown."""
    m, final = data.metrics, data.metrics.get("final") or {}
    head = data.headline
    lines = [f"# Model card: {data.run_dir.resolve().name}", "",
             f"Generated {_dt.date.today().isoformat()} from `{data.run_dir.resolve()}`.", "", "## Model", "",
             f"- Task: **{data.task}** (headline metric: {head})",
             f"- Fusion: {m.get('fusion')}; training mode: {data.mode}; strategy: {m.get('strategy')}",
             f"- Modalities: {', '.join(data.modalities) or 'unknown'}",
             f"- Prediction mode: {final.get('prediction_mode')}; rounds: {len(m.get('rounds') or [])}",
             f"- Config digest: {m.get('config_digest')}; seed: {data.cfg.seed if data.cfg else 'unknown'}", "",
             "## Data", ""]
    if data.availability:
        mods = data.modalities
        lines += [f"Availability source: {data.availability_source}.", "",
                  "| site | patients | " + " | ".join(mods) + " |", "|---|---|" + "---|" * len(mods)]
        for site, splits in data.availability.items():
            n = sum(int(c.get("n", 0)) for c in splits.values())
            cells = [f"{sum(int(c.get(k, 0)) for c in splits.values())} ({_pct(splits, k, n)})" for k in mods]
            lines.append(f"| {site} | {n} | " + " | ".join(cells) + " |")
    else:
        lines.append("Per-site counts were not recorded and no site folders were given.")
    sites = final.get("sites") or {}
    lines += ["", "## Metrics per site (test split)", "", f"| site | n | {head} |", "|---|---|---|"]
    lines += [f"| {s} | {v.get('n', '–')} | {_f(v.get(head))} |" for s, v in sites.items()]
    lines.append(f"| **global (sample-weighted)** | {(final.get('global') or {}).get('n', '–')} | "
                 f"{_f((final.get('global') or {}).get(head))} |")
    pb = final.get("pooled_binned")
    if pb:
        lines.append(f"| **pooled (all test patients, from binned counts)** | {pb['n']} | {_f(pb['auroc'])} "
                     f"(95 % CI {_f(pb['auroc_ci_low'])}–{_f(pb['auroc_ci_high'])}) |")
    ps = final.get("pooled_stratified")
    if ps:
        lines.append(f"| **pooled (all test patients, pairs within each site)** | – | {_f(ps['c_index'])} "
                     f"(95 % CI {_f(ps['c_index_ci_low'])}–{_f(ps['c_index_ci_high'])}) |")
    thr = final.get("threshold")
    if isinstance(thr, dict) and "value" in thr:
        lines += ["", f"Decisions (F1, sensitivity, specificity, PPV, NPV) use the threshold {thr['value']:.3f}, "
                  f"chosen by {thr.get('rule')} on the {thr.get('from')} (never on test patients)."]
    fair = fairness(sites, head)
    lines += ["", "## Fairness of performance across sites", ""]
    if fair:
        lines.append(f"{head} ranges from {_f(fair['min'])} to {_f(fair['max'])} across {fair['sites']} sites "
                     f"(spread {_f(fair['spread'])}, standard deviation {_f(fair['std'])}); the weakest site is "
                     f"**{fair['worst_site']}**. A large spread means the model serves some hospitals' patients "
                     "worse than others; check that site's data and availability before deployment.")
    else:
        lines.append("No per-site headline metric is defined (e.g. single-class test splits).")
    if data.strata:
        lines += ["", "## Risk groups (pooled test split)", "", "| group | patients | event rate |", "|---|---|---|"]
        lines += [f"| {g['group']} | {g['n']} | {_f(g['event_rate'])} |" for g in data.strata["summary"]]
    lines += ["", "## Privacy", "", *_privacy_lines(data), "", "## Intended use", "", INTENDED_USE, "",
              "## Limits", "", *[f"- {x}" for x in LIMITS], ""]
    return "\n".join(lines)


def _pct(splits: dict, key: str, n: int) -> str:
    return f"{100 * sum(int(c.get(key, 0)) for c in splits.values()) / n:.0f}%" if n else "–"


def write_model_card(data: RunData) -> Path:
    """Write ``RUN/model_card.md`` and return its path."""
    path = data.run_dir / "model_card.md"
    path.write_text(render_model_card(data), encoding="utf-8")
    log.info("model card written to %s", path)
    return path
