"""Differential-privacy building blocks: accounting, the site ledger and budget guard, DP-SGD wiring,
report-noisy-max, reports and a membership-inference check. See docs/privacy.md."""

from .accounting import (calibrate_noise_multiplier, cross_check_epsilon, epsilon_from_history, rdp_details,
                         total_steps)
from .budget import BudgetExceeded, SiteBudget, dpsgd_event, epsilon_of_events
from .ledger import LedgerCorrupt, PrivacyLedger
from .noisy_max import combination_scores, make_noisy_select, noisy_max_event, report_noisy_max

__all__ = ["BudgetExceeded", "LedgerCorrupt", "PrivacyLedger", "SiteBudget", "calibrate_noise_multiplier",
           "combination_scores", "cross_check_epsilon", "dpsgd_event", "epsilon_from_history", "epsilon_of_events",
           "make_noisy_select", "noisy_max_event", "rdp_details", "report_noisy_max", "total_steps"]
