"""Synthetic radiology-style reports whose findings follow the text modality's latent signals.

Each observed latent factor has a few findings. A finding's grade (0 none, 1 mild, 2 moderate, 3 severe) is the
factor signal plus a little noise cut at finding-specific thresholds; grade 0 is written as a negated sentence
("No consolidation.", "There is no evidence of consolidation.") and higher grades as graded positive sentences, so
the signal lives in words such as "consolidation" vs "no consolidation" and "mild" vs "extensive". Distractor
sentences carry no signal. Sites differ in header, negation and ordering (``text_style`` 0, 1, 2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# latent factor -> findings (noun phrase, thresholds for grades 1..3)
FINDINGS: dict[int, list[tuple[str, tuple[float, float, float]]]] = {
    0: [("pulmonary edema", (0.3, 1.0, 1.7)), ("support devices", (0.0, 0.8, 1.6))],
    1: [("consolidation", (-0.2, 0.6, 1.4)), ("airspace opacity", (0.2, 0.9, 1.6)),
        ("infiltrate", (-0.6, 0.3, 1.1))],
    2: [("hilar lymphadenopathy", (0.5, 1.2, 1.9))],
    3: [("cardiomegaly", (-0.3, 0.5, 1.3)), ("emphysema", (0.0, 0.8, 1.6)), ("pleural effusion", (0.3, 1.0, 1.8))],
}
SEVERITY = [["", "mild", "moderate", "extensive"], ["", "minimal", "moderate", "marked"],
            ["", "subtle", "moderate", "severe"]]
NEGATION = ["No {f}.", "There is no evidence of {f}.", "Negative for {f}."]
POSITIVE = ["{s} {f} is present.", "There is {s} {f}.", "{s} {f} noted."]
HEADER = ["FINDINGS:", "CHEST RADIOGRAPH, PORTABLE AP.\nFindings:", "Exam: chest imaging.\nReport:"]
IMPRESSION = ["IMPRESSION:", "Impression:", "Conclusion:"]
DISTRACTORS = ["No pneumothorax.", "Osseous structures are intact.", "Lines and tubes are in standard position.",
               "The trachea is midline.", "Comparison with prior study.", "Degenerative changes of the spine.",
               "Upper abdomen is unremarkable."]


def _sentence(finding: str, grade: int, style: int) -> str:
    if grade == 0:
        return NEGATION[style].format(f=finding)
    text = POSITIVE[style].format(s=SEVERITY[style][grade], f=finding)
    return text[0].upper() + text[1:]


def render_reports(signal: np.ndarray, factors: list[int], style: int, rng: np.random.Generator) -> list[str]:
    """One report per patient.

    Args:
        signal: the text modality's latent signals ``[N, len(factors)]``.
        factors: latent factor index of each signal column.
        style: site phrasing template (0, 1 or 2).
        rng: the site's text random stream.
    """
    if style not in (0, 1, 2):
        raise ValueError(f"text_style must be 0, 1 or 2, got {style}")
    n = signal.shape[0]
    items = [(col, name, np.asarray(th)) for col, f in enumerate(factors) for name, th in FINDINGS[f]]
    grades = np.stack([(signal[:, col, None] + 0.3 * rng.standard_normal((n, 1)) > th).sum(axis=1)
                       for col, _, th in items], axis=1) if items else np.zeros((n, 0), int)
    n_distract = rng.integers(1, 4, n)
    reports = []
    for i in range(n):
        sentences = [_sentence(name, int(g), style) for (_, name, _), g in zip(items, grades[i])]
        picks = rng.choice(len(DISTRACTORS), size=n_distract[i], replace=False)
        sentences += [DISTRACTORS[j] for j in picks]
        order = rng.permutation(len(sentences)) if style != 0 else np.arange(len(sentences))
        body = " ".join(sentences[j] for j in order)
        worst = [(g, name) for (_, name, _), g in zip(items, grades[i]) if g > 0]
        if worst:
            g, name = max(worst)
            impression = f"{SEVERITY[style][g].capitalize()} {name}."
        else:
            impression = "No acute cardiopulmonary process."
        reports.append(f"{HEADER[style]}\n{body}\n{IMPRESSION[style]}\n{impression}\n")
    return reports


def write_reports(site_dir: Path, pids: list[str], reports: list[str]) -> list[str]:
    """Write ``text/<pid>.txt``; returns their site-relative paths."""
    (site_dir / "text").mkdir(parents=True, exist_ok=True)
    rel = []
    for pid, doc in zip(pids, reports):
        path = f"text/{pid}.txt"
        (site_dir / path).write_text(doc)
        rel.append(path)
    return rel
