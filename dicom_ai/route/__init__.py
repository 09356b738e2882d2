"""route: admin-written YAML rules decide which series of a complete study go to which models."""

from __future__ import annotations

from dicom_ai.route.loader import RuleError, RuleSetError, RuleWatcher, load_ruleset
from dicom_ai.route.matcher import RouteDecision, RuleVerdict, explain, route
from dicom_ai.route.rules import Condition, PriorityPolicy, Rule, RuleSet, RuleSource

__all__ = [
    "Condition",
    "PriorityPolicy",
    "RouteDecision",
    "Rule",
    "RuleError",
    "RuleSet",
    "RuleSetError",
    "RuleSource",
    "RuleVerdict",
    "RuleWatcher",
    "explain",
    "load_ruleset",
    "route",
]
