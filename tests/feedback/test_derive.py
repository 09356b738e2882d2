"""A report read against report_terms: coded observations first, then keywords with negation and hedging."""

from __future__ import annotations

import pytest

from dicom_ai.domain import ReportRule, Truth
from dicom_ai.feedback.derive import derive_truths
from dicom_ai.feedback.hl7_report import parse_report
from tests.validation_support import oru

RULE = ReportRule("chest-xray-demo", "Consolidation", ("95436008",), ("consolidation", "airspace opacity"))


def truth(text: str, extra: str = "") -> Truth | None:
    found = derive_truths(parse_report(oru("A1", text, extra=extra)), [RULE])
    return found[0].truth if found else None


@pytest.mark.parametrize(("text", "expected"), [
    ("Right lower lobe consolidation.", Truth.PRESENT),
    ("Airspace opacities in both lower zones.", Truth.PRESENT),
    ("No focal consolidation.", Truth.ABSENT),
    ("Without evidence of consolidation.", Truth.ABSENT),
    ("There is no pneumothorax, effusion or consolidation.", Truth.ABSENT),
    ("Negative for consolidation", Truth.ABSENT),
    ("The consolidation has resolved.", Truth.ABSENT),
    ("Consolidation is not seen.", Truth.ABSENT),
    ("Possible consolidation at the left base.", Truth.UNCERTAIN),
    ("Consolidation cannot be excluded.", Truth.UNCERTAIN),
    ("No effusion, possible consolidation.", Truth.UNCERTAIN),
    ("Possible atelectasis, no consolidation.", Truth.ABSENT),
    ("No effusion but consolidation in the right lung.", Truth.PRESENT),
    ("No consolidation. New consolidation in the left apex.", Truth.PRESENT),  # present outranks absent
    ("INDICATION: rule out consolidation.\\.br\\FINDINGS: Clear lungs.", None),  # the indication is not read
    ("Clear lungs, normal heart size.", None),  # silence is not a negative
])
def test_keywords_with_negation_and_hedging(text: str, expected: Truth | None) -> None:
    assert truth(text) == expected


@pytest.mark.parametrize(("obx", "expected"), [
    ("OBX|2|CE|95436008^Lung consolidation^SCT||52101004^Present^SCT||||||F\r", Truth.PRESENT),
    ("OBX|2|CE|95436008^Lung consolidation^SCT||2667000^Absent^SCT||||||F\r", Truth.ABSENT),
    ("OBX|2|ST|95436008^Lung consolidation^SCT||negative||||||F\r", Truth.ABSENT),
    ("OBX|2|CE|95436008^Lung consolidation^SCT||42425007^Equivocal^SCT||||||F\r", Truth.UNCERTAIN),
    ("OBX|2|NM|95436008^Lung consolidation^SCT|||||A|||F\r", Truth.PRESENT),  # the abnormal flag (OBX-8)
])
def test_a_coded_observation_outranks_the_text(obx: str, expected: Truth) -> None:
    # The text says the opposite; the coded OBX decides.
    text = "No consolidation." if expected == Truth.PRESENT else "Dense consolidation."
    assert truth(text, extra=obx) == expected


def test_labels_the_report_does_not_name_get_nothing_and_evidence_is_kept() -> None:
    other = ReportRule("chest-xray-demo", "Effusion", (), ("effusion",))
    found = derive_truths(parse_report(oru("A1", "No focal consolidation.")), [RULE, other])
    assert [(f.label, f.truth) for f in found] == [("Consolidation", Truth.ABSENT)]
    assert "no focal consolidation" in found[0].evidence
