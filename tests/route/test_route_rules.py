"""The rule models validate on construction and say what is wrong."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dicom_ai.route.rules import Condition, PriorityPolicy, Rule, RuleSet, RuleSource


def _errors(model: type, data: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(error["loc"], error["msg"]) for error in info.value.errors()]


def _rule(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "models": ["m"], **fields}


def test_scalar_is_equals_and_list_is_in() -> None:
    assert Condition.model_validate("CR").operators() == [("equals", "CR")]
    assert Condition.model_validate(1024).operators() == [("equals", 1024)]
    assert Condition.model_validate(["CR", "DX"]).operators() == [("in", ["CR", "DX"])]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"equals": "F"}, [("equals", "F")]),
        ({"equals": 0.5}, [("equals", 0.5)]),
        ({"in": ["CR", 2]}, [("in", ["CR", 2])]),
        ({"range": [512, None]}, [("range", (512, None))]),
        ({"range": [None, 2.5]}, [("range", (None, 2.5))]),
        ({"exists": False}, [("exists", False)]),
    ],
)
def test_each_operator_parses(data: dict[str, Any], expected: list[tuple[str, Any]]) -> None:
    assert Condition.model_validate(data).operators() == expected


def test_regex_is_compiled_and_not_nests() -> None:
    condition = Condition.model_validate({"regex": "(?i)^chest$"})
    [(name, pattern)] = condition.operators()
    assert name == "regex" and isinstance(pattern, re.Pattern) and pattern.search("CHEST")
    negated = Condition.model_validate({"not": {"not": ["LL", "RL"]}})
    inner = negated.not_
    assert inner is not None and inner.not_ is not None and inner.not_.in_ == ["LL", "RL"]


def test_several_operators_are_kept_in_evaluation_order() -> None:
    condition = Condition.model_validate(
        {"not": {"equals": 1024}, "range": [512, 4096], "exists": True}
    )
    assert [name for name, _ in condition.operators()] == ["exists", "range", "not"]


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        ({"regex": "(CHEST"}, ("regex",), "invalid regular expression '(CHEST'"),
        ({"regex": 5}, ("regex",), "regex must be text"),
        ({"range": [512]}, ("range",), "range takes [min, max] (null for an open end), got [512]"),
        ({"range": ["a", 5]}, ("range", 0), "range bounds must be numbers or null, got 'a'"),
        ({"range": [True, 5]}, ("range", 0), "range bounds must be numbers or null"),
        ({"range": [9, 5]}, (), "range minimum 9 is greater than maximum 5"),
        ({"range": [None, None]}, (), "range [null, null] allows everything"),
        ({"exists": "yes"}, ("exists",), "Input should be a valid boolean"),
        ({"in": []}, ("in",), "List should have at least 1 item"),
        (
            {"equals": True},
            ("equals",),
            "YAML read an unquoted yes/no/true/false/on/off as a boolean",
        ),
        ({"equals": datetime.date(2024, 1, 31)}, ("equals",), "quoted text, e.g. '20240131'"),
        ({"in": ["CR", None]}, ("in", 1), "a value is missing (null)"),
        ({"equals": None}, (), "equals has no value (null)"),
        ({}, (), "a condition needs an operator: one of exists, equals, in, regex, range, not"),
        (None, (), "the condition is empty; to require a missing attribute use exists: false"),
        ({"regexp": "x"}, ("regexp",), "Extra inputs are not permitted"),
    ],
)
def test_condition_errors(data: Any, loc: tuple[Any, ...], message: str) -> None:
    errors = _errors(Condition, data)
    assert any(error_loc == loc and message in msg for error_loc, msg in errors), errors


def test_rule_defaults_and_fields() -> None:
    rule = Rule.model_validate(_rule(series={"Modality": ["CR", "DX"]}))
    assert (rule.description, rule.enabled, rule.study, rule.priority, rule.source) == (
        "",
        True,
        {},
        None,
        None,
    )
    assert rule.series["Modality"].in_ == ["CR", "DX"]
    located = rule.with_source(Path("rules/a.yaml"), 7)
    assert located.source == RuleSource(Path("rules/a.yaml"), 7)
    assert str(located.source) == "rules/a.yaml:7"
    assert rule.source is None, "with_source must not change the original"


@pytest.mark.parametrize(
    ("fields", "loc", "message"),
    [
        (
            {"series": {"Modalty": "CR"}},
            ("series", "Modalty", "[key]"),
            "unknown DICOM keyword 'Modalty' (did you mean 'Modality'?)",
        ),
        (
            {"study": {"patientsex": "F"}},
            ("study", "patientsex", "[key]"),
            "unknown DICOM keyword 'patientsex' (did you mean 'PatientSex'?)",
        ),
        (
            {"series": {"Flavour": "x"}},
            ("series", "Flavour", "[key]"),
            "unknown DICOM keyword 'Flavour'",
        ),
        (
            {"series": {"ReferencedImageSequence": {"exists": True}}},
            ("series", "ReferencedImageSequence", "[key]"),
            "ReferencedImageSequence is a sequence (VR SQ); sequences cannot be matched",
        ),
        (
            {"series": {"ModalitiesInStudy": "CR"}},
            ("series", "ModalitiesInStudy", "[key]"),
            "put it under 'study'",
        ),
        (
            {"name": "chest rule"},
            ("name",),
            "rule name 'chest rule' must start with a letter or digit",
        ),
        ({"name": "-x"}, ("name",), "must start with a letter or digit"),
        ({"models": []}, ("models",), "List should have at least 1 item"),
        ({"models": ["a", "a"]}, ("models",), "model 'a' is listed twice"),
        ({"models": [""]}, ("models", 0), "at least 1 character"),
        ({"model": ["a"]}, ("model",), "Extra inputs are not permitted"),
    ],
)
def test_rule_errors(fields: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    errors = _errors(Rule, _rule(**fields))
    assert any(error_loc == loc and message in msg for error_loc, msg in errors), errors


def test_rule_requires_name_and_models() -> None:
    errors = _errors(Rule, {})
    assert {loc for loc, _ in errors} == {("name",), ("models",)}


def test_modalities_in_study_is_a_study_key() -> None:
    rule = Rule.model_validate(_rule(study={"ModalitiesInStudy": {"in": ["CR"]}}))
    assert "ModalitiesInStudy" in rule.study


def test_priority_policy() -> None:
    policy = PriorityPolicy.model_validate(
        {"findings": ["Consolidation"], "stat_above": 0.9, "urgent_above": 0.5}
    )
    assert (policy.findings, policy.stat_above, policy.urgent_above) == (
        ["Consolidation"],
        0.9,
        0.5,
    )
    assert PriorityPolicy(urgent_above=0.5).findings is None
    assert PriorityPolicy(stat_above=0.7, urgent_above=0.7).stat_above == 0.7


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"stat_above": 0.4, "urgent_above": 0.5},
            "stat_above (0.4) must be >= urgent_above (0.5)",
        ),
        ({"stat_above": 1.5}, "less than or equal to 1"),
        ({"urgent_above": -0.1}, "greater than or equal to 0"),
        ({"findings": ["Consolidation"]}, "needs stat_above, urgent_above or both"),
        ({"findings": [], "stat_above": 0.9}, "at least 1 item"),
        ({"stat_above": 0.9, "stat": 1}, "Extra inputs are not permitted"),
    ],
)
def test_priority_policy_errors(data: dict[str, Any], message: str) -> None:
    errors = _errors(PriorityPolicy, data)
    assert any(message in msg for _, msg in errors), errors


def test_ruleset_names_are_unique() -> None:
    first = Rule.model_validate(_rule(name="chest")).with_source(Path("rules/a.yaml"), 2)
    other = Rule.model_validate(_rule(name="ct"))
    ruleset = RuleSet(rules=(first, other), files=(Path("rules/a.yaml"),))
    assert ruleset.get("ct") is other and ruleset.get("nope") is None
    with pytest.raises(
        ValidationError,
        match=r"rule name 'chest' is used twice \(first defined at rules/a.yaml:2\)",
    ):
        RuleSet(rules=(first, Rule.model_validate(_rule(name="chest"))))


def test_models_are_frozen() -> None:
    rule = Rule.model_validate(_rule())
    with pytest.raises(ValidationError):
        rule.name = "other"  # type: ignore[misc]
