"""A radiologist's override outranks the AI's priority everywhere it is published or listed."""

from __future__ import annotations

from dicom_ai.domain import Override, PriorityDecision


def with_override(priority: PriorityDecision, override: Override | None) -> PriorityDecision:
    """The decision as published: the override's level and its sentence first, the AI's after.

    A removed override (level None) publishes the AI's level again, saying who removed it.
    """
    if override is None:
        return priority
    if override.level is None:
        return PriorityDecision(priority.level, priority.score, (override.describe(), *priority.reasons))
    return PriorityDecision(override.level, priority.score,
                            (override.describe(), f"AI said {priority.level.name}", *priority.reasons))
