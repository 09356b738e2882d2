"""One decision, every configured carrier, and an override that wins everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pydicom import dcmread

from dicom_ai.config import Settings
from dicom_ai.domain import Code, Finding, ModelInfo, Priority, PriorityDecision, Series, Study
from dicom_ai.prioritize.publish import publications, with_override
from tests.conftest import sample

MODEL = ModelInfo("chest-xray-demo", "1.0.0", "2.25.1", "dicom-ai", "Chest demo", True, "demo")
FINDINGS = [Finding("Consolidation", Code("95436008", "SCT", "Lung consolidation"), 0.7, 0.5)]


def study() -> Study:
    header = dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True)
    return Study(str(header.StudyInstanceUID), (Series(str(header.SeriesInstanceUID), (), header),))


def test_override_outranks_the_ai_and_keeps_its_reasons() -> None:
    ai = PriorityDecision(Priority.URGENT, 0.7, ("Consolidation 70% >= operating threshold 50%",))
    assert with_override(ai, None) is ai
    published = with_override(ai, ("ROUTINE", "known, seen yesterday", "dr.who"))
    assert published.level == Priority.ROUTINE
    assert published.reasons == ("set to ROUTINE by dr.who: known, seen yesterday", "AI said URGENT", *ai.reasons)


def test_every_enabled_carrier_gets_the_same_level(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, orthanc_url="http://127.0.0.1:8042", mwl_dir=tmp_path / "wl",
                        hl7_mllp="127.0.0.1:2575", webhook_url="http://127.0.0.1:9/hook", webhook_levels=("URGENT",),
                        smtp_host="127.0.0.1", smtp_to=("reading@localhost",), email_levels=("STAT",))
    decision = PriorityDecision(Priority.URGENT, 0.7, ("x",))
    built, skipped = publications(study(), decision, FINDINGS, [MODEL], settings)
    assert skipped == []
    items = {kind: payload for kind, _, _, payload in built}
    assert set(items) == {"orthanc_metadata", "mwl", "hl7", "webhook"}  # no e-mail below STAT
    assert json.loads(items["orthanc_metadata"])["AiPriority"] == "URGENT"
    assert json.loads(items["mwl"])["priority"] == "URGENT"
    assert "A^ASAP^HL70485" in items["hl7"]
    assert json.loads(items["webhook"])["priority"] == "URGENT"
    assert publications(study(), decision, FINDINGS, [MODEL], Settings(home=tmp_path)) == ([], [])


def test_a_carrier_that_cannot_be_built_is_skipped_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> str:
        raise ValueError("no room for this value")

    monkeypatch.setattr("dicom_ai.prioritize.publish.oru_message", broken)
    settings = Settings(home=tmp_path, orthanc_url="http://127.0.0.1:8042", hl7_mllp="127.0.0.1:2575")
    built, skipped = publications(study(), PriorityDecision(Priority.STAT, 0.9, ("x",)), FINDINGS, [MODEL], settings)
    assert [kind for kind, *_ in built] == ["orthanc_metadata"]  # the others still go
    assert skipped == ["hl7 to 127.0.0.1:2575: ValueError: no room for this value"]
