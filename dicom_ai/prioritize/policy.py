"""Map a model's findings to STAT / URGENT / ROUTINE, always with the reasons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dicom_ai.domain import Finding, Priority, PriorityDecision


class PriorityPolicyLike(Protocol):
    """What a rule's `priority:` block provides (see dicom_ai.route.rules.PriorityPolicy)."""

    findings: list[str] | None
    stat_above: float | None
    urgent_above: float | None


def decide_priority(findings: Sequence[Finding], policy: PriorityPolicyLike | None) -> PriorityDecision:
    """STAT at `stat_above`; URGENT at `urgent_above`, or, when the policy sets none, at the
    model's operating threshold (the finding is present); ROUTINE otherwise."""
    considered = [f for f in findings if policy is None or not policy.findings or f.label in policy.findings]
    if not considered:
        return PriorityDecision(Priority.ROUTINE, 0.0, ("no finding that the priority policy considers",))
    top = max(considered, key=lambda f: f.probability)
    described = f"{top.label} {top.probability:.0%}"
    stat_above = policy.stat_above if policy is not None else None
    urgent_above = policy.urgent_above if policy is not None else None
    if stat_above is not None and top.probability >= stat_above:
        return PriorityDecision(Priority.STAT, top.probability, (f"{described} >= STAT threshold {stat_above:.0%}",))
    if urgent_above is not None and top.probability >= urgent_above:
        return PriorityDecision(Priority.URGENT, top.probability, (f"{described} >= URGENT threshold {urgent_above:.0%}",))
    if urgent_above is None and top.present:
        return PriorityDecision(
            Priority.URGENT, top.probability, (f"{described} >= operating threshold {top.threshold:.0%}",)
        )
    return PriorityDecision(Priority.ROUTINE, top.probability, (f"highest finding {described} below the thresholds",))


def combine(decisions: Sequence[PriorityDecision]) -> PriorityDecision:
    """A study is as urgent as its most urgent model result; reasons of that level are kept."""
    if not decisions:
        return PriorityDecision(Priority.ROUTINE, 0.0, ("no model ran",))
    top = max(decisions, key=lambda d: (d.level, d.score))
    reasons = tuple(r for d in decisions if d.level == top.level for r in d.reasons)
    return PriorityDecision(top.level, top.score, reasons)
