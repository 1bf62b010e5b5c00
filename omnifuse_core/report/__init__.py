"""What users see after a run: the self-contained HTML report, the model card and patient stratification.

Framework-agnostic (no flwr). Entry points: :func:`write_report` (``RUN/report.html`` + ``RUN/model_card.md``) and
:mod:`omnifuse_core.report.stratify` (risk groups, Kaplan–Meier, log-rank, k-means clusters).
"""
from .html_report import write_report
from .model_card import write_model_card
from .stratify import kaplan_meier, logrank_test, risk_groups, stratify

__all__ = ["write_report", "write_model_card", "kaplan_meier", "logrank_test", "risk_groups", "stratify"]
