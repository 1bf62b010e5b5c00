"""Ledger durability and tamper detection; the site budget guard (project / refuse / record)."""

import json

import pytest

from omnifuse_core.privacy.accounting import epsilon_from_history
from omnifuse_core.privacy.budget import BudgetExceeded, SiteBudget, dpsgd_event
from omnifuse_core.privacy.ledger import LedgerCorrupt, PrivacyLedger
from omnifuse_core.privacy.noisy_max import noisy_max_event

FP = "abc123"
DELTA = 1e-5


def _fill(tmp_path, n=3):
    lg = PrivacyLedger(tmp_path, FP)
    for r in range(1, n + 1):
        lg.append(dpsgd_event(1.5, 0.04, 100, max_grad_norm=1.0, round=r, run_id="run-a"))
    return lg


def test_append_reload_history_and_other_events(tmp_path):
    lg = _fill(tmp_path)
    lg.append(noisy_max_event(20.0, count=2, round=3, run_id="run-a"))
    again = PrivacyLedger(tmp_path, FP)
    assert again.history() == [(1.5, 0.04, 100)] * 3
    assert [e["type"] for e in again.other_events()] == ["laplace"]
    assert again.other_events()[0]["epsilon0"] == pytest.approx(0.05)
    assert len(again) == 4 and lg.path.name == f"{FP}.jsonl"
    assert all(e["time"] for e in again.events())


def test_new_ledger_is_empty_and_fingerprint_is_checked(tmp_path):
    assert PrivacyLedger(tmp_path, FP).history() == []
    with pytest.raises(ValueError, match="fingerprint"):
        PrivacyLedger(tmp_path, "../escape")


@pytest.mark.parametrize("damage, reason", [
    (lambda lines: lines[:-1] + [lines[-1][: len(lines[-1]) // 2]], "line 3: is not valid JSON"),
    (lambda lines: [lines[0], lines[1].replace('"steps":100', '"steps":10'), lines[2]], "line 2: checksum"),
    (lambda lines: [lines[0], lines[2]], "line 2: has sequence number"),
    (lambda lines: lines[:-1], "head file records 3 lines"),
    (lambda lines: [lines[1], lines[0], lines[2]], "line 1: has sequence number"),
])
def test_corruption_truncation_and_tampering_are_detected(tmp_path, damage, reason):
    lg = _fill(tmp_path)
    lines = lg.path.read_text().splitlines()
    lg.path.write_text("\n".join(damage(lines)) + "\n")
    with pytest.raises(LedgerCorrupt, match=reason) as info:
        PrivacyLedger(tmp_path, FP)
    assert str(lg.path) in str(info.value) and "refused" in str(info.value)


def test_partial_last_line_and_missing_files_are_detected(tmp_path):
    lg = _fill(tmp_path)
    lg.path.write_text(lg.path.read_text()[:-5])
    with pytest.raises(LedgerCorrupt, match="incomplete"):
        PrivacyLedger(tmp_path, FP)
    lg.path.unlink()
    with pytest.raises(LedgerCorrupt, match="missing"):
        PrivacyLedger(tmp_path, FP)


def test_ledger_of_another_dataset_does_not_verify(tmp_path):
    lg = _fill(tmp_path)
    other = lg.dir / "other.jsonl"
    other.write_text(lg.path.read_text())
    with pytest.raises(LedgerCorrupt, match="does not chain"):
        PrivacyLedger(tmp_path, "other")


def test_crash_between_line_and_head_keeps_the_line(tmp_path):
    lg = _fill(tmp_path)
    head = json.loads(lg.head_path.read_text())
    lg.append(dpsgd_event(1.5, 0.04, 100, max_grad_norm=1.0, round=4))
    lg.head_path.write_text(json.dumps(head))  # head still describes 3 lines
    again = PrivacyLedger(tmp_path, FP)
    assert len(again.history()) == 4  # the durable line counts; epsilon never goes down


def test_invalid_events_are_refused_with_field_names(tmp_path):
    lg = PrivacyLedger(tmp_path, FP)
    with pytest.raises(ValueError, match="sample_rate"):
        lg.append({"type": "dpsgd", "noise_multiplier": 1.0, "sample_rate": 2.0, "steps": 1, "max_grad_norm": 1.0})
    with pytest.raises(ValueError, match="'type'"):
        lg.append({"type": "mystery"})
    assert len(PrivacyLedger(tmp_path, FP)) == 0


def test_budget_projects_refuses_and_records(tmp_path):
    lg = _fill(tmp_path, n=2)
    spent = epsilon_from_history([(1.5, 0.04, 200)], DELTA, "rdp")
    budget = SiteBudget(lg, DELTA, max_epsilon=spent + 1.0, accountant="rdp", site="hospital-a")
    assert budget.spent() == pytest.approx(spent)
    projected = budget.project(1.5, 0.04, 100)
    assert projected == pytest.approx(epsilon_from_history([(1.5, 0.04, 300)], DELTA, "rdp"))
    assert budget.check_round(1.5, 0.04, 100) == projected
    tla = [noisy_max_event(10.0, count=3)]
    assert budget.project(1.5, 0.04, 100, tla) > projected
    with pytest.raises(BudgetExceeded, match="hospital-a.*max-epsilon") as info:
        budget.check_round(1.5, 0.04, 5000)
    assert "refused" in str(info.value)
    assert len(PrivacyLedger(tmp_path, FP)) == 2  # a refused round writes nothing
    new = budget.record_round(1.5, 0.04, 100, max_grad_norm=1.0, round=3, run_id="run-a", extra_events=tla)
    assert new == pytest.approx(budget.project(1.5, 0.04, 0, []), rel=1e-9)
    reloaded = PrivacyLedger(tmp_path, FP)
    assert reloaded.other_events()[0]["round"] == 3 and len(reloaded) == 4
    assert SiteBudget(reloaded, DELTA, 100.0, "rdp").spent() == pytest.approx(new)


def test_budget_fails_closed_on_corrupt_ledger(tmp_path):
    lg = _fill(tmp_path)
    lg.path.write_text(lg.path.read_text().replace('"round":2', '"round":7'))
    with pytest.raises(LedgerCorrupt):
        SiteBudget(PrivacyLedger(tmp_path, FP), DELTA, 8.0)
