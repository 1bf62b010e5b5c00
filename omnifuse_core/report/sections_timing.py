"""Report section: where a run's time goes — seconds per round, and per site the stages of its messages."""
from __future__ import annotations

import statistics

from . import plots
from .collect import RunData
from .sections_run import Section

STAGES = ("startup", "load", "evaluate", "train", "serialise")


def timing(d: RunData) -> Section:
    sec = Section("timing", "Time per round and per site message")
    rs = d.metrics.get("rounds") or []
    secs = [(r.get("round"), r.get("seconds")) for r in rs if isinstance(r.get("seconds"), (int, float))]
    if secs:
        x, y = zip(*secs)
        sec.images.append(("wall seconds per round", plots.lines({"round": (list(x), list(y))},
                                                                 title="seconds per round", xlabel="round",
                                                                 ylabel="seconds")))
    per_site: dict[str, dict[str, list[float]]] = {}
    for r in rs:
        for site, msgs in (r.get("timing") or {}).items():
            for stage, v in ((msgs or {}).get("train") or {}).items():
                per_site.setdefault(site, {}).setdefault(stage, []).append(float(v))
    if per_site:
        sites = sorted(per_site)
        bars = {st: [statistics.median(per_site[s].get(st, [0.0])) for s in sites] for st in STAGES
                if any(st in per_site[s] for s in sites)}
        sec.images.append(("median seconds per stage of each site's train message", plots.grouped_bars(
            sites, bars, title="train message: median seconds per stage", ylabel="seconds")))
    if not sec.images:
        sec.note = "no timing recorded in metrics.json (runs before issue 16, or in-process modes)"
    else:
        sec.html = ("<p>A round's seconds include waiting for its slowest site and Flower's transport; a site's "
                    "stages are measured inside its ClientApp (startup = from the ClientApp process's start to the "
                    "handler: imports and Flower's app install, paid by every message in a deployment; load = "
                    "reading the site or mapping its cache; evaluate = the fused validation of the received "
                    "model).</p>")
    return sec
