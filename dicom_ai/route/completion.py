"""Per-rule completion: a receiving study whose matching rule's expectation is met is complete now.

The node's usual completion is by quiet time (`stable_after`). A rule's `complete` block ends the
wait earlier (the expected series arrived) or despite a sender that never stops (`max_wait`).
A series counts as arrived once no instance of it came for the rule's `series_quiet` seconds, so
a study is not cut while its last expected series is still streaming in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from dicom_ai.route.matcher import explain

if TYPE_CHECKING:
    from dicom_ai.domain import Series, Study
    from dicom_ai.route.rules import RuleSet

__all__ = ["completion_due", "needs_completion_check"]


def needs_completion_check(ruleset: RuleSet) -> bool:
    """Whether any enabled rule completes studies itself (else receiving studies need no header read)."""
    return any(rule.complete is not None and rule.enabled for rule in ruleset.rules)


def _description(series: Series) -> str:
    return " ".join(str(series.header.get("SeriesDescription", "") or "").split()).casefold()


def completion_due(study: Study, ruleset: RuleSet, first_received_at: float, now: float,
                   series_last_received: Mapping[str, float]) -> str | None:
    """Why the (still receiving) study is complete now by a rule's `complete`; None: not yet."""
    for verdict in explain(study, ruleset):
        rule, decision = verdict.rule, verdict.decision
        if rule.complete is None or decision is None:
            continue
        expected = rule.complete

        def settled(series: Series) -> bool:
            last = series_last_received.get(series.series_instance_uid)
            return last is not None and now - last >= expected.series_quiet  # noqa: B023 (used at once)

        if expected.series is not None:
            arrived = sum(1 for series in decision.series if settled(series))
            if arrived >= expected.series:
                return f"rule {rule.name}: {arrived} of {expected.series} expected series arrived"
        if expected.series_descriptions is not None:
            present = {_description(series) for series in study.series if settled(series)}
            wanted = [" ".join(text.split()).casefold() for text in expected.series_descriptions]
            if all(text in present for text in wanted):
                return f"rule {rule.name}: the expected series {', '.join(text.strip() for text in expected.series_descriptions)} arrived"
        if expected.max_wait is not None and now - first_received_at >= expected.max_wait:
            return f"rule {rule.name}: max_wait {expected.max_wait:g} s after the first instance is over"
    return None
