from __future__ import annotations

from dataclasses import dataclass

from dicom_ai.domain import Code, Finding, Priority
from dicom_ai.prioritize.policy import combine, decide_priority

CODE = Code("95436008", "SCT", "Lung consolidation")


@dataclass
class Policy:
    findings: list[str] | None = None
    stat_above: float | None = None
    urgent_above: float | None = None


def finding(p: float, label: str = "Consolidation", threshold: float = 0.5) -> Finding:
    return Finding(label, CODE, p, threshold)


def test_without_policy_a_present_finding_is_urgent() -> None:
    decision = decide_priority([finding(0.7)], None)
    assert decision.level == Priority.URGENT
    assert decision.reasons == ("Consolidation 70% >= operating threshold 50%",)
    assert decide_priority([finding(0.3)], None).level == Priority.ROUTINE


def test_thresholds_of_the_policy() -> None:
    policy = Policy(stat_above=0.9, urgent_above=0.6)
    assert decide_priority([finding(0.95)], policy).level == Priority.STAT
    assert decide_priority([finding(0.7)], policy).level == Priority.URGENT
    routine = decide_priority([finding(0.55)], policy)  # present, but below the policy's URGENT line
    assert routine.level == Priority.ROUTINE
    assert "below the thresholds" in routine.reasons[0]


def test_policy_only_considers_its_findings() -> None:
    policy = Policy(findings=["Pneumothorax"], stat_above=0.5)
    decision = decide_priority([finding(0.99)], policy)
    assert decision.level == Priority.ROUTINE
    assert decision.score == 0.0


def test_combine_keeps_the_most_urgent_with_its_reasons() -> None:
    urgent = decide_priority([finding(0.7)], None)
    stat = decide_priority([finding(0.95)], Policy(stat_above=0.9))
    combined = combine([urgent, stat])
    assert combined.level == Priority.STAT
    assert combined.reasons == stat.reasons


def test_stat_only_policy_falls_back_to_the_operating_threshold_for_urgent() -> None:
    policy = Policy(stat_above=0.9)
    assert decide_priority([finding(0.6)], policy).level == Priority.URGENT
    assert decide_priority([finding(0.4)], policy).level == Priority.ROUTINE
