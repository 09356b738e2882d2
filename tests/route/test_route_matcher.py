"""Matching real headers against rules, and the reasons `explain` gives."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from dicom_ai.domain import Series, Study
from dicom_ai.route.loader import load_ruleset
from dicom_ai.route.matcher import explain, image_series_problem, route, routing_view
from dicom_ai.route.rules import Rule, RuleSet

MakeStudy = Callable[..., Study]
GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"


def _ruleset(*rules: dict[str, Any]) -> RuleSet:
    return RuleSet(rules=tuple(Rule.model_validate({"models": ["m"], **rule}) for rule in rules))


def _matches(
    study: Study,
    *,
    study_conditions: dict[str, Any] | None = None,
    series: dict[str, Any] | None = None,
) -> bool:
    ruleset = _ruleset({"name": "r", "study": study_conditions or {}, "series": series or {}})
    return bool(route(study, ruleset))


def _chest_rule_only(shipped_rules: Path, folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(shipped_rules / "chest-radiograph.yaml", folder)
    return folder


def test_shipped_rule_routes_the_real_chest_radiograph(
    shipped_rules: Path, chest_header: Dataset, make_study: MakeStudy, tmp_path: Path
) -> None:
    ruleset = load_ruleset(_chest_rule_only(shipped_rules, tmp_path / "rules"), known_models={"chest-xray-demo"})
    study = make_study(chest_header)
    [decision] = route(study, ruleset)
    assert decision.rule.name == "chest-radiograph"
    assert decision.series == study.series
    assert decision.models == ("chest-xray-demo",)
    assert decision.priority == ruleset.rules[0].priority
    [verdict] = explain(study, ruleset)
    uid = chest_header.SeriesInstanceUID
    assert verdict.matched and verdict.decision == decision
    assert "study: ModalitiesInStudy 'CR' is in [CR, DX]" in verdict.reasons
    assert (
        f"series {uid} [CR CHEST PA]: BodyPartExamined 'CHEST' matches /(?i)^(CHEST|THORAX)$/"
        in verdict.reasons
    )
    assert (
        f"series {uid} [CR CHEST PA]: ViewPosition 'PA' is not in [LL, RL, LAT, LATERAL, RLO, LLO]"
        in verdict.reasons
    )
    assert f"series {uid} [CR CHEST PA]: Rows 1955 is >= 512" in verdict.reasons
    assert str(verdict).startswith(
        "chest-radiograph: MATCH -> chest-xray-demo (1 series)\n  study: "
    )


def test_shipped_rule_ignores_ct_and_extremity(
    shipped_rules: Path, ct_header: Dataset, extremity_header: Dataset, make_study: MakeStudy, tmp_path: Path
) -> None:
    ruleset = load_ruleset(_chest_rule_only(shipped_rules, tmp_path / "rules"))
    ct = make_study(ct_header)
    assert route(ct, ruleset) == []
    [verdict] = explain(ct, ruleset)
    assert not verdict.matched and verdict.decision is None
    assert verdict.reasons == ("study: ModalitiesInStudy 'CT' is not in [CR, DX]",)

    [verdict] = explain(make_study(extremity_header), ruleset)
    assert not verdict.matched
    label = f"series {extremity_header.SeriesInstanceUID} [CR EXTREMITY AP]"
    assert verdict.reasons[-2:] == (
        f"{label}: BodyPartExamined 'EXTREMITY' does not match /(?i)^(CHEST|THORAX)$/",
        "no image series satisfies every series condition",
    ), "explain stops a series at its first failing condition"


def test_decision_carries_exactly_the_matching_series(
    chest_header: Dataset, extremity_header: Dataset, make_study: MakeStudy
) -> None:
    extremity_header.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.9"
    study = make_study(extremity_header, chest_header)
    ruleset = _ruleset({"name": "chest", "series": {"BodyPartExamined": "CHEST"}})
    [decision] = route(study, ruleset)
    assert [series.series_instance_uid for series in decision.series] == [
        chest_header.SeriesInstanceUID
    ]


def test_non_image_series_are_never_selected(
    chest_header: Dataset, sr_header: Dataset, make_study: MakeStudy
) -> None:
    study = make_study(sr_header, chest_header)
    ruleset = _ruleset({"name": "anything"})  # no conditions at all: every image series
    [decision] = route(study, ruleset)
    assert [series.header.Modality for series in decision.series] == ["CR"]
    [verdict] = explain(study, ruleset)
    assert (
        f"series {sr_header.SeriesInstanceUID} [SR CHEST]: skipped, Modality SR is not an image"
        in verdict.reasons
    )
    # a study holding only the report matches nothing, even a rule asking for its attributes
    sr_only = make_study(sr_header)
    assert (
        route(sr_only, _ruleset({"name": "sr", "series": {"SeriesDescription": "AI findings"}}))
        == []
    )


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"Modality": "SEG"}, "Modality SEG is not an image"),
        (
            {"Modality": "OT", "SOPClassUID": GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE},
            f"SOPClassUID {GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE} is a presentation state",
        ),
        (
            {"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.59"},
            "is a structured report",
        ),
        ({"Rows": None}, "no Rows/Columns: not an image"),
    ],
)
def test_image_series_problem(
    chest_header: Dataset, make_series: Callable[..., Series], changes: dict[str, Any], problem: str
) -> None:
    assert image_series_problem(make_series(chest_header)) is None
    for keyword, value in changes.items():
        if value is None:
            delattr(chest_header, keyword)
        else:
            setattr(chest_header, keyword, value)
    assert problem in (image_series_problem(make_series(chest_header)) or "")


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"in": ["PRIMARY"]}, True),  # RG1 ImageType is DERIVED\PRIMARY: any value may match
        ("PRIMARY", True),
        ({"in": ["ORIGINAL", "SECONDARY"]}, False),
        ({"regex": "^DERIV"}, True),
        ({"not": {"in": ["DERIVED"]}}, False),  # not negates the whole "any" result
        ({"not": {"in": ["SECONDARY"]}}, True),
    ],
)
def test_multi_valued_attributes_match_on_any_value(
    chest_header: Dataset, make_study: MakeStudy, condition: Any, expected: bool
) -> None:
    assert _matches(make_study(chest_header), series={"ImageType": condition}) is expected


def test_modalities_in_study_is_derived_from_all_series(
    chest_header: Dataset, sr_header: Dataset, make_study: MakeStudy
) -> None:
    chest_header.ModalitiesInStudy = ["MR"]  # a header value is ignored: the study's series decide
    study = make_study(chest_header, sr_header)
    assert _matches(study, study_conditions={"ModalitiesInStudy": {"in": ["SR"]}})
    assert _matches(study, study_conditions={"ModalitiesInStudy": "CR"})
    assert not _matches(study, study_conditions={"ModalitiesInStudy": "MR"})
    assert not _matches(study, study_conditions={"ModalitiesInStudy": {"not": {"in": ["SR"]}}})
    [verdict] = explain(study, _ruleset({"name": "r", "study": {"ModalitiesInStudy": ["CT"]}}))
    assert verdict.reasons == ("study: ModalitiesInStudy ['CR', 'SR'] has no value in [CT]",)


@pytest.mark.parametrize(
    ("condition", "expected", "reason"),
    [
        ({"equals": "x"}, False, "SeriesDescription is missing"),
        ({"in": ["x"]}, False, "SeriesDescription is missing"),
        ({"regex": ".*"}, False, "SeriesDescription is missing"),
        ({"range": [0, None]}, False, "SeriesDescription is missing"),
        ({"exists": True}, False, "SeriesDescription is missing"),
        ({"exists": False}, True, "SeriesDescription is missing"),
        ({"not": {"equals": "x"}}, True, "SeriesDescription is missing"),
        (
            {"not": {"exists": False}},
            False,
            "SeriesDescription is missing, which the rule excludes (not)",
        ),
    ],
)
def test_missing_attribute_fails_all_but_exists_false_and_not(
    chest_header: Dataset, make_study: MakeStudy, condition: Any, expected: bool, reason: str
) -> None:
    assert "SeriesDescription" not in chest_header
    study = make_study(chest_header)
    [verdict] = explain(study, _ruleset({"name": "r", "series": {"SeriesDescription": condition}}))
    assert verdict.matched is expected
    assert verdict.reasons[0].endswith(f": {reason}")


def test_empty_attribute_counts_as_missing(chest_header: Dataset, make_study: MakeStudy) -> None:
    assert chest_header.DateOfLastCalibration == ""
    study = make_study(chest_header)
    assert _matches(study, series={"DateOfLastCalibration": {"exists": False}})
    assert not _matches(study, series={"DateOfLastCalibration": {"regex": ""}})


def test_negation(chest_header: Dataset, make_study: MakeStudy) -> None:
    study = make_study(chest_header)
    assert _matches(study, series={"ViewPosition": {"not": {"in": ["LL", "RL"]}}})
    assert not _matches(study, series={"ViewPosition": {"not": ["PA", "AP"]}})
    assert _matches(study, series={"ViewPosition": {"not": {"not": "PA"}}})
    [verdict] = explain(study, _ruleset({"name": "r", "series": {"ViewPosition": {"not": ["PA"]}}}))
    assert verdict.reasons[0].endswith(
        ": ViewPosition 'PA' is in [PA], which the rule excludes (not)"
    )


@pytest.mark.parametrize(
    ("keyword", "condition", "expected"),
    [
        ("Rows", 1955, True),  # US compares as a number
        ("Rows", "1955", True),
        ("Rows", 1955.0, True),
        ("Rows", {"range": [512, 2048]}, True),
        ("Rows", {"range": [None, 1954]}, False),
        ("Rows", {"range": [1955, 1955]}, True),  # inclusive
        ("KVP", 150, True),  # DS
        ("KVP", {"in": [120, 150.0]}, True),
        ("ExposureTime", {"range": [8, None]}, True),  # IS
        ("StudyDate", {"range": [20040101, 20041231]}, True),  # text that holds a number
        ("PatientSex", {"range": [0, 1]}, False),  # not a number
        ("PatientSex", "F", True),
        ("PatientSex", "f", False),  # text is case-sensitive
        ("PatientSex", {"regex": "(?i)f"}, True),
        ("BodyPartExamined", {"regex": "HES"}, True),  # search, not full match
        ("BodyPartExamined", {"regex": "^HES"}, False),
        ("TransferSyntaxUID", "1.2.840.10008.1.2.1", True),  # file meta is matchable
        (
            "Rows",
            {"range": [512, None], "not": {"equals": 1955}},
            False,
        ),  # several operators: all hold
        ("Rows", {"range": [512, None], "not": {"equals": 1024}}, True),
    ],
)
def test_values_and_operators_on_a_real_header(
    chest_header: Dataset, make_study: MakeStudy, keyword: str, condition: Any, expected: bool
) -> None:
    assert _matches(make_study(chest_header), series={keyword: condition}) is expected


def test_text_is_compared_stripped(chest_header: Dataset, make_study: MakeStudy) -> None:
    chest_header.BodyPartExamined = " CHEST "
    assert _matches(make_study(chest_header), series={"BodyPartExamined": "CHEST"})
    assert _matches(make_study(chest_header), series={"BodyPartExamined": {"regex": "^CHEST$"}})


def test_range_reason_for_text(chest_header: Dataset, make_study: MakeStudy) -> None:
    [verdict] = explain(
        make_study(chest_header),
        _ruleset({"name": "r", "series": {"PatientSex": {"range": [0, 1]}}}),
    )
    assert verdict.reasons[0].endswith(": PatientSex 'F' is not a number")


def test_study_conditions_use_the_study_header(
    chest_header: Dataset, make_study: MakeStudy
) -> None:
    study = make_study(chest_header)
    assert _matches(study, study_conditions={"PatientSex": "F", "StudyDescription": "THORAX"})
    assert not _matches(study, study_conditions={"PatientSex": "M"}, series={"Modality": "CR"})
    [verdict] = explain(
        study, _ruleset({"name": "r", "study": {"PatientSex": "M"}, "series": {"Modality": "CR"}})
    )
    assert verdict.reasons == ("study: PatientSex 'F' does not equal 'M'",), (
        "series are not checked after a study failure"
    )


def test_disabled_rules_never_match_and_several_rules_may_match(
    chest_header: Dataset, make_study: MakeStudy
) -> None:
    ruleset = _ruleset(
        {"name": "off", "enabled": False},
        {"name": "first", "series": {"Modality": "CR"}, "models": ["a", "b"]},
        {"name": "ct", "series": {"Modality": "CT"}},
        {"name": "second", "study": {"PatientSex": "F"}},
    )
    study = make_study(chest_header)
    decisions = route(study, ruleset)
    assert [(d.rule.name, d.models) for d in decisions] == [
        ("first", ("a", "b")),
        ("second", ("m",)),
    ]
    verdicts = explain(study, ruleset)
    assert [v.matched for v in verdicts] == [False, True, False, True]
    assert verdicts[0].reasons == ("disabled (enabled: false)",)
    assert str(decisions[0]) == f"first -> a, b: series {chest_header.SeriesInstanceUID}"


def test_routing_view_holds_what_the_rules_read(chest_header: Dataset, sr_header: Dataset) -> None:
    """A replay routes each distinct view once: studies that differ only where no rule looks share a
    view; a value a rule names (in either rule set), Modality, or what makes a series no image does not."""
    study_rules = _ruleset({"name": "s", "study": {"PatientSex": "F"}})
    series_rules = _ruleset({"name": "b", "series": {"BodyPartExamined": "CHEST"}})

    def view(change: Callable[[Dataset], None] | None = None, *rulesets: RuleSet, with_sr: bool = False) -> object:
        header = copy.deepcopy(chest_header)
        if change is not None:
            change(header)
        series = [Series("1.1", (), header)] + ([Series("1.2", (), copy.deepcopy(sr_header))] if with_sr else [])
        return routing_view(Study("1", tuple(series)), rulesets or (study_rules, series_rules))

    same = view()
    assert view(lambda h: setattr(h, "PatientName", "Other^Name")) == same  # no rule reads it
    assert view(lambda h: setattr(h, "InstitutionName", "Elsewhere")) == same
    assert view(lambda h: setattr(h, "BodyPartExamined", "HAND")) != same  # the second rule set's keyword
    assert view(lambda h: setattr(h, "PatientSex", "M")) != same  # a study condition's keyword
    assert view(lambda h: setattr(h, "BodyPartExamined", "HAND"), study_rules) == view(None, study_rules)
    assert view(lambda h: setattr(h, "Modality", "DX")) != same  # ModalitiesInStudy comes from it
    assert view(lambda h: delattr(h, "Rows")) != same  # no longer an image
    assert view(with_sr=True) != same  # one more series
