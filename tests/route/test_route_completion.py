"""Per-rule completion of a receiving study: expected series, expected descriptions, maximum wait."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import generate_uid

from dicom_ai.domain import Study
from dicom_ai.route.completion import completion_due, needs_completion_check
from dicom_ai.route.loader import load_ruleset

Write = Callable[[str, str], Path]
NOW = 1_000_000.0


def three_series(header: Dataset, make_study: Callable[..., Study]) -> Study:
    headers = []
    for description in ("PA", "LATERAL", "SCOUT"):
        copied = copy.deepcopy(header)
        copied.SeriesInstanceUID = generate_uid()
        copied.SeriesDescription = description
        headers.append(copied)
    return make_study(*headers)


def settled(study: Study, at: float = NOW - 10) -> dict[str, float]:
    return {series.series_instance_uid: at for series in study.series}


def test_expected_series_count(rules_dir: Path, write: Write, chest_header: Dataset,
                               make_study: Callable[..., Study]) -> None:
    write("a.yaml", "rules:\n  - name: chest\n    series: {Modality: CR}\n    models: [m]\n"
                    "    complete: {series: 3}\n")
    ruleset = load_ruleset(rules_dir)
    assert needs_completion_check(ruleset)
    study = three_series(chest_header, make_study)
    assert completion_due(study, ruleset, NOW - 20, NOW, settled(study)) == "rule chest: 3 of 3 expected series arrived"
    two = Study(study.study_instance_uid, study.series[:2])
    assert completion_due(two, ruleset, NOW - 20, NOW, settled(two)) is None
    streaming = {**settled(study), study.series[2].series_instance_uid: NOW - 0.5}  # still arriving
    assert completion_due(study, ruleset, NOW - 20, NOW, streaming) is None


def test_expected_series_descriptions_ignore_case_and_padding(rules_dir: Path, write: Write, chest_header: Dataset,
                                                               make_study: Callable[..., Study]) -> None:
    write("a.yaml", "rules:\n  - name: chest\n    models: [m]\n"
                    "    complete: {series_descriptions: [pa, ' Lateral'], series_quiet: 0}\n")
    ruleset = load_ruleset(rules_dir)
    study = three_series(chest_header, make_study)
    assert completion_due(study, ruleset, NOW, NOW, settled(study, NOW)) == \
        "rule chest: the expected series pa, Lateral arrived"
    only_pa = Study(study.study_instance_uid, study.series[:1])
    assert completion_due(only_pa, ruleset, NOW, NOW, settled(only_pa, NOW)) is None


def test_max_wait_forces_completion(rules_dir: Path, write: Write, chest_header: Dataset,
                                    make_study: Callable[..., Study]) -> None:
    write("a.yaml", "rules:\n  - name: chest\n    models: [m]\n    complete: {max_wait: 600}\n")
    ruleset = load_ruleset(rules_dir)
    study = make_study(chest_header)
    assert completion_due(study, ruleset, NOW - 599, NOW, {}) is None
    assert completion_due(study, ruleset, NOW - 600, NOW, {}) == \
        "rule chest: max_wait 600 s after the first instance is over"


def test_only_a_matching_rule_completes(rules_dir: Path, write: Write, chest_header: Dataset,
                                        make_study: Callable[..., Study]) -> None:
    write("a.yaml", "rules:\n  - name: ct\n    series: {Modality: CT}\n    models: [m]\n    complete: {max_wait: 1}\n"
                    "  - name: plain\n    models: [m]\n")
    ruleset = load_ruleset(rules_dir)
    study = make_study(chest_header)
    assert completion_due(study, ruleset, NOW - 1000, NOW, settled(study)) is None


def test_rules_without_completion_need_no_check(shipped_rules: Path) -> None:
    assert not needs_completion_check(load_ruleset(shipped_rules))
