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
    """Without a policy a present finding (probability >= the model's operating threshold) is URGENT."""
    considered = [f for f in findings if policy is None or not policy.findings or f.label in policy.findings]
    if not considered:
        return PriorityDecision(Priority.ROUTINE, 0.0, ("no finding that the priority policy considers",))
    top = max(considered, key=lambda f: f.probability)
    described = f"{top.label} {top.probability:.0%}"
    if policy is not None and policy.stat_above is not None and top.probability >= policy.stat_above:
        return PriorityDecision(Priority.STAT, top.probability, (f"{described} >= STAT threshold {policy.stat_above:.0%}",))
    if policy is not None and policy.urgent_above is not None and top.probability >= policy.urgent_above:
        return PriorityDecision(
            Priority.URGENT, top.probability, (f"{described} >= URGENT threshold {policy.urgent_above:.0%}",)
        )
    has_thresholds = policy is not None and (policy.stat_above is not None or policy.urgent_above is not None)
    if not has_thresholds and top.present:
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
