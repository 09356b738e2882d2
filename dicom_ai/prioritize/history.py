"""The patient's history changes what a result means: a new finding is news, a known one is follow-up.

Prior AI results of the same patient (PatientID) come from our own database. A finding present
now but absent on the latest prior study that looked for it raises the priority one level; a
finding already present on that prior study lowers an URGENT to ROUTINE (known, under follow-up).
STAT is never lowered. Each change adds its reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dicom_ai.domain import Finding, PriorFinding, Priority, PriorityDecision


def apply_history(
    decision: PriorityDecision, findings: Sequence[Finding], priors: Sequence[PriorFinding]
) -> PriorityDecision:
    latest: dict[str, PriorFinding] = {}
    for prior in priors:
        if prior.label not in latest or prior.received_at > latest[prior.label].received_at:
            latest[prior.label] = prior
    level, reasons = decision.level, list(decision.reasons)
    for label in sorted({f.label for f in findings if f.present}):
        if label not in latest:
            continue
        prior = latest[label]
        when = time.strftime("%Y-%m-%d", time.localtime(prior.received_at))
        if not prior.present:
            if level < Priority.STAT:
                level = Priority(level + 1)
            reasons.append(f"new {label}: absent on prior study of {when} ({prior.probability:.0%})")
        else:
            if level == Priority.URGENT:
                level = Priority.ROUTINE
            reasons.append(f"known {label}: present on prior study of {when} ({prior.probability:.0%}), follow-up")
    return PriorityDecision(level, decision.score, tuple(reasons))
