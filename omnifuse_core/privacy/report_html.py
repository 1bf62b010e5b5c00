"""Markdown and self-contained HTML renderings of the privacy reports (epsilon-per-round plot as base64 PNG)."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from typing import Sequence

log = logging.getLogger(__name__)


def _f(v, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _preflight(check: dict | None) -> str:
    """One line: trainable parameters P, expected batch B, the ratio sigma*sqrt(P)/B and its verdict."""
    if not check:
        return "not run"
    return (f"{check['verdict']}: sigma*sqrt(P)/B = {_f(check['ratio'], '.2f')} per step with P = "
            f"{check['n_params']:,} trainable parameters and expected batch B = {_f(check['expected_batch'], '.0f')} "
            f"({_f(check['ratio_run'], '.3f')} over the run's {check['steps']} steps)")


def _schedule(sch: dict | None) -> str:
    """dp-schedule: the site's pick and its candidates (auto), or that batch-size was used as configured."""
    if not sch:
        return "fixed (batch-size, local-epochs and lr as configured)"
    cands = ", ".join(f"B={c['batch_size']}: r={_f(c['ratio'], '.2f')}" for c in sch.get("candidates", []))
    return (f"auto: batch-size {sch['batch_size']} (q={_f(sch['sample_rate'], '.4f')}, r={_f(sch['ratio'], '.2f')}, "
            f"{sch['verdict']}) for N={sch['n_train']}; local-epochs {sch['local_epochs']}, lr {sch['lr']} kept; "
            f"candidates {cands}; rule: {sch.get('rule', '')}")


def _adaptive(a: dict | None) -> str:
    """Adaptive clipping's settings, after the (final) clip norms of the rounds; empty for fixed clipping."""
    if not a:
        return ""
    return (f" (adaptive: target quantile {a['target_quantile']}, C {_f(a['initial_clip'], '.3g')} -> "
            f"{_f(a['final_clip'], '.3g')}, count noise sigma_b={a['count_noise_std']}, gradient sigma_delta="
            f"{a['gradient_noise_multiplier']}; accounted at sigma)")


def _rows(r: dict) -> list[tuple[str, str]]:
    cc, m, p = r["epsilon_cross_check"], r["mechanism"], r["provenance"]
    return [
        ("epsilon (headline)", f"{_f(r['epsilon'])} ({r['accountant'].upper()}, {r.get('accountant_version', '')})"),
        ("delta", _f(r["delta"], "g")),
        ("epsilon RDP / PRV (Opacus)", f"{_f(r['epsilon_rdp'])} / {_f(r['epsilon_prv'])}"),
        ("RDP optimal order", f"{_f(r['rdp_order'], 'g')}" + (" (on grid boundary)" if r["rdp_order_on_boundary"]
                                                             else "")),
        ("dp-accounting RDP / PLD", f"{_f(cc['rdp'])} / {_f(cc['pld'])} ({cc.get('library', '')})"),
        ("cap (max-epsilon) / remaining", f"{_f(r['max_epsilon'], 'g')} / {_f(r['remaining_budget'])}"),
        ("lifetime epsilon (all runs in ledger)", f"{_f(r['lifetime']['epsilon'])} over runs "
                                                  f"{', '.join(r['lifetime']['runs'])}"),
        ("unit / adjacency", f"{r['unit']}; {r['adjacency']}"),
        ("mechanism", f"clip C={m.get('max_grad_norm')}{_adaptive(m.get('adaptive_clipping'))}, "
                      f"sigma={m.get('noise_multiplier')}, {m.get('sampling')} "
                      f"sampling q={m.get('sample_rate')}, steps/round={m.get('steps_per_round')}, "
                      f"rounds={m.get('rounds')}, total steps={m.get('total_steps')}"),
        ("empty batches", str(m.get("empty_batch_policy", ""))),
        ("pre-flight noise check", _preflight(m.get("preflight"))),
        ("DP schedule (dp-schedule)", _schedule(m.get("schedule"))),
        ("noisy-max events", json.dumps(m.get("noisy_max", [])) + (f" — {r['pure_dp_composition']}"
                                                                   if r.get("pure_dp_composition") else "")),
        ("protected", "; ".join(r["scope"]["protected"])),
        ("NOT protected", "; ".join(r["scope"]["not_protected"])),
        ("provenance", f"run {p.get('run_id')}, dataset {p.get('dataset_fingerprint')}, code "
                       f"{p.get('code_version')}, config {p.get('config_hash')}, versions {p.get('versions')}"),
    ]


def render_markdown(site_reports: Sequence[dict], summary: dict) -> str:
    """Markdown report: federation note, one section per site, plain-language statements."""
    out = ["# Privacy report", "", summary.get("note", ""), ""]
    out += ["| site | epsilon | delta | accountant | cap | remaining | lifetime |", "|---|---|---|---|---|---|---|"]
    for r in site_reports:
        out.append(f"| {r['site']} | {_f(r['epsilon'])} | {_f(r['delta'], 'g')} | {r['accountant']} | "
                   f"{_f(r['max_epsilon'], 'g')} | {_f(r['remaining_budget'])} | {_f(r['lifetime']['epsilon'])} |")
    if summary.get("secure_aggregation"):
        out += ["", "## Secure aggregation", "", "```json",
                json.dumps(summary["secure_aggregation"], indent=2, default=str), "```"]
    if summary.get("central_dp"):
        out += ["", "## Central DP (client-level, reported separately)", "",
                "```json", json.dumps(summary["central_dp"], indent=2, default=str), "```"]
    for r in site_reports:
        out += ["", f"## Site {r['site']}", "", f"> {r['statement']}", "", "| item | value |", "|---|---|"]
        out += [f"| {k} | {v.replace('|', '/')} |" for k, v in _rows(r)]
        if r["per_round"]:
            out += ["", "Cumulative epsilon after each round: " +
                    ", ".join(f"round {x['round']}: {_f(x['epsilon'])}" for x in r["per_round"])]
    return "\n".join(out) + "\n"


def epsilon_plot_png(site_reports: Sequence[dict]) -> bytes | None:
    """PNG bytes of cumulative epsilon per round for every site (None when there is nothing to plot)."""
    series = [r for r in site_reports if r.get("per_round")]
    if not series:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for r in series:
        xs = [x["round"] if isinstance(x["round"], (int, float)) else i + 1 for i, x in enumerate(r["per_round"])]
        line, = ax.plot(xs, [x["epsilon"] for x in r["per_round"]], marker="o", label=str(r["site"]))
        if r.get("max_epsilon") is not None and math.isfinite(r["max_epsilon"]):
            ax.axhline(r["max_epsilon"], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative epsilon")
    ax.set_title("Privacy loss per site (dashed: site cap)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_html(site_reports: Sequence[dict], summary: dict) -> str:
    """Self-contained HTML report (no external resources)."""
    e = html.escape
    png = epsilon_plot_png(site_reports)
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Privacy report</title><style>"
             "body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
             "blockquote{background:#f4f4f8;padding:.6em 1em;border-left:4px solid #668}</style></head><body>",
             "<h1>Privacy report</h1>", f"<p>{e(summary.get('note', ''))}</p>"]
    parts.append("<table><tr><th>site</th><th>epsilon</th><th>delta</th><th>accountant</th><th>cap</th>"
                 "<th>remaining</th><th>lifetime</th></tr>")
    for r in site_reports:
        parts.append(f"<tr><td>{e(str(r['site']))}</td><td>{_f(r['epsilon'])}</td><td>{_f(r['delta'], 'g')}</td>"
                     f"<td>{e(r['accountant'])}</td><td>{_f(r['max_epsilon'], 'g')}</td>"
                     f"<td>{_f(r['remaining_budget'])}</td><td>{_f(r['lifetime']['epsilon'])}</td></tr>")
    parts.append("</table>")
    if png:
        parts.append(f"<p><img alt='cumulative epsilon per round' "
                     f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'></p>")
    if summary.get("secure_aggregation"):
        parts.append("<h2>Secure aggregation</h2><pre>"
                     f"{e(json.dumps(summary['secure_aggregation'], indent=2, default=str))}</pre>")
    if summary.get("central_dp"):
        parts.append("<h2>Central DP (client-level, reported separately)</h2><pre>"
                     f"{e(json.dumps(summary['central_dp'], indent=2, default=str))}</pre>")
    for r in site_reports:
        parts.append(f"<h2>Site {e(str(r['site']))}</h2><blockquote>{e(r['statement'])}</blockquote><table>")
        parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _rows(r)]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
