"""AiFindings names each label once: its highest probability and on how many images it is present."""

from __future__ import annotations

from dicom_ai.domain import Code, Finding
from dicom_ai.send.carriers.orthanc_metadata import findings_summary

MASS = Code("4147007", "SCT", "Mass")


def _finding(p: float, label: str = "Mass") -> Finding:
    return Finding(label, MASS, p, 0.5)


def test_one_image_reads_as_before() -> None:
    assert findings_summary([_finding(0.97)]) == "Mass 97% (present)"


def test_four_views_give_one_entry_with_the_count() -> None:
    views = [_finding(0.92), _finding(0.1), _finding(0.2), _finding(0.05)]
    assert findings_summary(views) == "Mass 92% (present on 1 of 4 images)"
    assert findings_summary([_finding(0.1), _finding(0.3)]) == "Mass 30% (absent on 2 images)"


def test_labels_are_ordered_by_their_highest_probability() -> None:
    assert findings_summary([_finding(0.4, "A"), _finding(0.8, "B"), _finding(0.6, "A")]) == (
        "B 80% (present); A 60% (present on 1 of 2 images)"
    )
    assert findings_summary([]) == ""
