"""Per-site privacy reports, the federation summary, and where they are written (``RUN/privacy/``).

Each site's guarantee is separate: sites hold disjoint patient records, so epsilons are never summed across
sites. A report's headline ``epsilon`` covers the events of its run; ``lifetime`` covers every event in the
site's ledger for that dataset (all runs), which is what the site's ``max-epsilon`` cap applies to.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

from .accounting import cross_check_epsilon, epsilon_from_history, rdp_details
from .adaptive_clip import mechanism_entry
from .budget import epsilon_of_events
from .ledger import DPSGD, PrivacyLedger
from .noisy_max import pure_events_from

log = logging.getLogger(__name__)

REPORT_INFO_KEY = "privacy-report-json"  # a site's report travels in its train reply's info ConfigRecord
SUMMARY_NAME = "summary.json"

SCOPE = {
    "protected": ["every model update sent by the site during the run", "all checkpoints and the final model "
                  "(post-processing of the protected updates)", "the TLA laziest-combination selections"],
    "not_protected": ["training and evaluation metrics sent to the server", "example and per-modality counts",
                      "preprocessing statistics (standardization sums/counts)",
                      "the MEDS code vocabulary (ehr-meds: code names held by at least k training patients, their "
                      "patient counts and per-code value sums; rarer codes never leave the site)",
                      "hyper-parameter tuning runs",
                      "the fact that the site participates"],
}
UNIT = "one patient record at one site (example-level DP for that site's dataset)"
ADJACENCY = "add/remove-one: datasets differing by the presence of one patient record"
EMPTY_BATCH_POLICY = ("Poisson batches may be empty; an empty batch still takes a noisy optimizer step, "
                      "and every step is counted")
PURE_DP_NOTE = ("noisy-max selections (pure eps0 = sensitivity/scale each for monotone scores, twice that otherwise; "
                "TLA's mean scores are not monotone) are composed in RDP "
                "via the randomized-response curve, added to PRV by basic composition, and as zCDP / worst-case "
                "PLD in dp-accounting")


def _versions() -> dict:
    out = {}
    for dist in ("omnifuse-fl", "opacus", "dp-accounting", "flwr", "torch"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def build_provenance(*, run_id: str | None, site: str, fingerprint: str | None, config_hash: str | None = None,
                     code_version: str | None = None) -> dict:
    """Provenance block: run, site, dataset fingerprint, code version, library versions, config hash."""
    versions = _versions()
    return {"run_id": run_id, "site": site, "dataset_fingerprint": fingerprint,
            "code_version": code_version or versions.get("omnifuse-fl"), "config_hash": config_hash,
            "versions": versions}


def _history(events: Sequence[dict]) -> list[list]:
    return [[e["noise_multiplier"], e["sample_rate"], e["steps"]] for e in events if e["type"] == DPSGD]


def _per_round(events: Sequence[dict], delta: float, accountant: str) -> list[dict]:
    rounds: list = []
    for e in events:
        if e.get("round") not in rounds:
            rounds.append(e.get("round"))
    out, done = [], []
    for r in rounds:
        done += [e for e in events if e.get("round") == r]
        out.append({"round": r, "epsilon": epsilon_of_events(done, delta, accountant)})
    return out


def _mechanism(events: Sequence[dict]) -> dict:
    sgd = [e for e in events if e["type"] == DPSGD]
    steps_per_round: dict = {}
    for e in sgd:
        steps_per_round[e.get("round")] = steps_per_round.get(e.get("round"), 0) + e["steps"]
    uniq = lambda key: sorted({e[key] for e in sgd})  # noqa: E731
    adaptive = mechanism_entry(sgd)  # max-grad-norm: adaptive (max_grad_norm = each round's final C)
    return {**({"clipping": "adaptive", "adaptive_clipping": adaptive} if adaptive else {}),
            "algorithm": "DP-SGD (Opacus), per-sample clipping + Gaussian noise", "sampling": "Poisson",
            "max_grad_norm": uniq("max_grad_norm"), "noise_multiplier": uniq("noise_multiplier"),
            "sample_rate": uniq("sample_rate"), "steps_per_round": list(steps_per_round.values()),
            "rounds": len(steps_per_round), "total_steps": sum(e["steps"] for e in sgd),
            "empty_batch_policy": EMPTY_BATCH_POLICY,
            "noisy_max": [{k: e[k] for k in ("type", "scale", "sensitivity", "count", "monotone")}
                          for e in events if e["type"] != DPSGD]}


def _last(events: Sequence[dict], key: str):
    vals = [e[key] for e in events if e["type"] == DPSGD]
    return vals[-1] if vals else None


def site_report(ledger_or_events: PrivacyLedger | Sequence[dict], *, site: str, delta: float,
                max_epsilon: float | None = None, per_round: list[dict] | None = None,
                provenance: dict | None = None, mechanism: dict | None = None, accountant: str = "prv",
                run_id: str | None = None) -> dict:
    """Build one site's privacy report.

    Args:
        ledger_or_events: the site's ledger, or its list of events.
        site: site name.
        delta: target delta.
        max_epsilon: the site's cap (None = no cap known).
        per_round: ``[{"round", "epsilon"}]`` cumulative epsilon per round; computed from the events when None.
        provenance: from :func:`build_provenance`; a minimal one is built when None.
        mechanism: extra mechanism facts (merged over those derived from the events).
        accountant: headline accountant, ``"prv"`` or ``"rdp"``.
        run_id: restrict the headline to this run's events (lifetime always covers all events).

    Returns:
        The report dict (JSON-serialisable).
    """
    ledger = ledger_or_events if isinstance(ledger_or_events, PrivacyLedger) else None
    all_events = ledger.events() if ledger else [dict(e) for e in ledger_or_events]
    events = [e for e in all_events if run_id is None or e.get("run_id") == run_id]
    hist, others = _history(events), [e for e in events if e["type"] != DPSGD]
    pure = pure_events_from(others)
    eps_rdp, order, boundary = rdp_details(hist, delta, pure)
    eps_prv = epsilon_from_history(hist, delta, "prv", pure)
    eps = eps_prv if accountant == "prv" else eps_rdp
    life_eps = epsilon_of_events(all_events, delta, accountant) if len(all_events) != len(events) else eps
    runs = sorted({str(e.get("run_id")) for e in all_events})
    prov = provenance or build_provenance(run_id=run_id, site=site, fingerprint=ledger.fingerprint if ledger else None)
    mech = {**_mechanism(events), **(mechanism or {})}
    remaining = None if max_epsilon is None or math.isinf(max_epsilon) else max_epsilon - life_eps
    report = {
        "site": site, "delta": delta, "epsilon": eps, "accountant": accountant,
        "accountant_version": f"opacus {_versions()['opacus']}", "epsilon_rdp": eps_rdp, "epsilon_prv": eps_prv,
        "epsilon_cross_check": cross_check_epsilon(hist, delta, pure), "max_epsilon": max_epsilon,
        "noise_multiplier": _last(events, "noise_multiplier"), "max_grad_norm": _last(events, "max_grad_norm"),
        "sample_rate": _last(events, "sample_rate"), "history": hist, "other_events": others,
        "per_round": per_round if per_round is not None else _per_round(events, delta, accountant),
        "rdp_order": order, "rdp_order_on_boundary": boundary, "remaining_budget": remaining,
        "lifetime": {"epsilon": life_eps, "runs": runs, "events": len(all_events),
                     "total_steps": sum(e["steps"] for e in all_events if e["type"] == DPSGD)},
        "provenance": prov, "scope": SCOPE, "unit": UNIT, "adjacency": ADJACENCY, "mechanism": mech,
        "pure_dp_composition": PURE_DP_NOTE if others else None,
    }
    report["statement"] = plain_statement(report)
    return report


def plain_statement(r: dict) -> str:
    """A plain-language statement of one site report for a privacy officer."""
    eps, d = r["epsilon"], r["delta"]
    scope = "during this run" if (r.get("provenance") or {}).get("run_id") else "in all runs recorded in its ledger"
    text = (f"For site '{r['site']}', the model updates it sent {scope}, and every checkpoint or model "
            f"built from them, are ({eps:.2f}, {d:g})-differentially private for each patient record: adding or "
            f"removing any one patient changes the probability of any result by at most a factor of "
            f"{math.exp(min(eps, 700)):.3g}, except with probability {d:g}. ")
    life = r["lifetime"]["epsilon"]
    text += f"Counting every run recorded in this site's ledger for this dataset, the total is epsilon = {life:.2f}"
    if r.get("max_epsilon") is not None and r.get("remaining_budget") is not None:
        text += f" of the site's own cap {r['max_epsilon']:g} ({r['remaining_budget']:.2f} left)"
    text += (". Not covered: metrics, example counts, preprocessing statistics, the MEDS code vocabulary and tuning runs. Smaller epsilon "
             "means stronger protection; values above about 10 give only weak formal protection.")
    return text


def federation_summary(site_reports: Sequence[dict], central: dict | None = None) -> dict:
    """Federation roll-up. Epsilons are NOT summed across sites: each site's guarantee covers its own patients.

    Args:
        site_reports: per-site reports.
        central: optional central-DP (client-level) accounting, reported separately.
    """
    sites = {r["site"]: {"epsilon": r["epsilon"], "delta": r["delta"], "accountant": r["accountant"],
                         "max_epsilon": r["max_epsilon"], "remaining_budget": r["remaining_budget"],
                         "lifetime_epsilon": r["lifetime"]["epsilon"]} for r in site_reports}
    eps = [s["epsilon"] for s in sites.values()]
    return {"sites": sites, "max_site_epsilon": max(eps) if eps else None,
            "min_site_epsilon": min(eps) if eps else None,
            "note": ("Each site's (epsilon, delta) protects that site's own patients and is reported separately; "
                     "the guarantees are not added across sites because their patient records are disjoint. A "
                     "person treated at two hospitals is two records, and their loss is at most the sum of those "
                     "two sites' epsilons."),
            "central_dp": central}


def secure_aggregation_entry(enabled: bool, settings: Mapping | None = None) -> dict:
    """What the server saw of the sites' updates (issue 24), for the summary and the rendered reports."""
    if not enabled:
        return {"enabled": False, "server_saw": "every site's model update (weights) in the clear, each round"}
    return {"enabled": True, "protocol": "Flower SecAgg+ (SecAggPlusWorkflow + secaggplus_mod)",
            "settings": dict(settings or {}),
            "server_saw": ["the sum over the round's sites of their count-weighted model updates, and of their "
                           "per-modality training counts and number of contributing sites (never one site's)",
                           "each site's masked vector (uniformly random to anyone without the other sites' keys)",
                           "per-site clear-text metrics: training losses, privacy epsilon and steps, the TLA trace "
                           "(lazy modality per epoch), message timing, validation/test metrics and their counts",
                           "which sites took part, withheld (with their reason) or dropped out"],
            "not_protected": ["a server colluding with at least reconstruction-threshold sites can unmask a site",
                              "the released (aggregated) model: that is what DP-SGD bounds",
                              "the plaintext metrics listed above and the setup statistics"]}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "site"


def report_filename(site: str) -> str:
    """``<site>.json`` (characters outside ``[A-Za-z0-9._-]`` become ``_``); a site named ``summary`` gets
    ``site-summary.json`` so it never overwrites the federation summary."""
    name = f"{_safe(site)}.json"
    return f"site-{name}" if name == SUMMARY_NAME else name


def _report_files(d: Path) -> list[Path]:
    """Site reports in a ``privacy/`` folder (a folder of another name needs its ``summary.json``)."""
    if not d.is_dir() or (d.name != "privacy" and not (d / SUMMARY_NAME).is_file()):
        return []
    return [f for f in sorted(d.glob("*.json")) if f.name != SUMMARY_NAME]


def write_reports(run_dir: str | Path, site_reports: Sequence[dict], summary: dict) -> dict:
    """Write ``RUN/privacy/<site>.json`` (one per site), ``summary.json``, ``privacy.md`` and ``privacy.html``.

    Returns:
        ``{"dir", "json": [...], "summary", "markdown", "html"}`` paths as strings.
    """
    from .report_html import render_html, render_markdown

    out = Path(run_dir) / "privacy"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in site_reports:
        p = out / report_filename(str(r["site"]))
        p.write_text(json.dumps(r, indent=2, default=str), encoding="utf-8")
        paths.append(str(p))
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    (out / "privacy.md").write_text(render_markdown(site_reports, summary), encoding="utf-8")
    (out / "privacy.html").write_text(render_html(site_reports, summary), encoding="utf-8")
    log.info("privacy reports written to %s", out)
    return {"dir": str(out), "json": paths, "summary": str(out / SUMMARY_NAME),
            "markdown": str(out / "privacy.md"), "html": str(out / "privacy.html")}


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(reports: Sequence[dict]) -> str:
    """Fixed-width text table of site reports (``omnifuse privacy-report``)."""
    head = ["site", "epsilon", "acct", "delta", "eps RDP", "eps PRV", "dpacc RDP", "dpacc PLD", "cap", "left",
            "lifetime", "steps"]
    rows = [[str(r["site"]), _fmt(r["epsilon"]), r["accountant"], _fmt(r["delta"], "g"), _fmt(r["epsilon_rdp"]),
             _fmt(r["epsilon_prv"]), _fmt(r["epsilon_cross_check"]["rdp"]), _fmt(r["epsilon_cross_check"]["pld"]),
             _fmt(r["max_epsilon"], "g"), _fmt(r["remaining_budget"]), _fmt(r["lifetime"]["epsilon"]),
             str(r["mechanism"].get("total_steps", "-"))] for r in reports]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ["(epsilons are per site and never added across sites)"])


def load_report_source(path: str | Path, *, delta: float = 1e-5,
                       max_epsilon: float | None = None) -> tuple[list[dict], dict]:
    """Load site reports from a run directory, its ``privacy/`` folder, a ledger file or a site state dir.

    Args:
        path: run dir (``RUN/privacy/<site>.json``), ledger ``.jsonl`` file, or a dir holding ``privacy-ledger/``.
        delta: delta used when building reports from ledgers.
        max_epsilon: cap shown when building reports from ledgers.

    Returns:
        ``(site_reports, summary)``.
    """
    p = Path(path)
    for d in (p / "privacy", p):
        if _report_files(d):
            reports = []
            for f in _report_files(d):
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise ValueError(f"privacy report {f} is unreadable ({exc}); re-run the report") from exc
                if not isinstance(data, dict) or "site" not in data or "epsilon" not in data:
                    raise ValueError(f"{f} is not a site privacy report (no 'site'/'epsilon'); remove it from "
                                     f"{d} or re-run the report")
                reports.append(data)
            summary = None
            if (d / SUMMARY_NAME).is_file():
                try:
                    summary = json.loads((d / SUMMARY_NAME).read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    log.warning("%s is unreadable (%s); rebuilding the summary", d / SUMMARY_NAME, exc)
            return reports, federation_summary(reports, (summary or {}).get("central_dp"))
    if p.is_file():
        ledgers = [PrivacyLedger.from_file(p)]
    elif (p / "privacy-ledger").is_dir():
        ledgers = [PrivacyLedger.from_file(f) for f in sorted((p / "privacy-ledger").glob("*.jsonl"))]
    else:
        ledgers = []
    if not ledgers:
        raise FileNotFoundError(f"{p}: no privacy reports (RUN/privacy/<site>.json) or ledgers "
                                "(<state-dir>/privacy-ledger/*.jsonl) found; pass a run directory or a ledger file")
    reports = [site_report(lg, site=lg.fingerprint, delta=delta, max_epsilon=max_epsilon) for lg in ledgers]
    return reports, federation_summary(reports)


def format_report_source(path: str | Path, fmt: str = "table") -> str:
    """Render the reports found at ``path`` (see :func:`load_report_source`) for ``omnifuse privacy-report``.

    Args:
        path: run directory, its ``privacy/`` folder, a ledger file or a site state directory.
        fmt: ``"table"``, ``"json"`` or ``"markdown"``.
    """
    reports, summary = load_report_source(path)
    if fmt == "table":
        return format_table(reports)
    if fmt == "json":
        return json.dumps({"sites": reports, "summary": summary}, indent=2, default=str)
    if fmt == "markdown":
        from .report_html import render_markdown

        return render_markdown(reports, summary)
    raise ValueError(f"unknown format {fmt!r}; use table, json or markdown")
