"""One decision, every configured carrier, and an override that wins everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pydicom import dcmread

from dicom_ai.config import Settings
from dicom_ai.domain import Carrier, Code, Finding, ModelInfo, Override, Priority, PriorityDecision
from dicom_ai.prioritize.override import with_override
from dicom_ai.send.carriers import Publication
from dicom_ai.send.publish import priority_change, publications
from tests.conftest import sample

MODEL = ModelInfo("chest-xray-demo", "1.0.0", "2.25.1", "dicom-ai", "Chest demo", True, "demo")
FINDINGS = [Finding("Consolidation", Code("95436008", "SCT", "Lung consolidation"), 0.7, 0.5)]


def publication(decision: PriorityDecision) -> Publication:
    header = dcmread(sample("RG1_UNCR.dcm"), stop_before_pixels=True)
    return Publication(str(header.StudyInstanceUID), header, decision, tuple(FINDINGS), (MODEL,))


def test_override_outranks_the_ai_and_keeps_its_reasons() -> None:
    ai = PriorityDecision(Priority.URGENT, 0.7, ("Consolidation 70% >= operating threshold 50%",))
    assert with_override(ai, None) is ai
    published = with_override(ai, Override(Priority.ROUTINE, "known, seen yesterday", "dr.who"))
    assert published.level == Priority.ROUTINE
    assert published.reasons == ("set to ROUTINE by dr.who: known, seen yesterday", "AI said URGENT", *ai.reasons)
    removed = with_override(ai, Override(None, "", "dr.who"))
    assert removed.level == Priority.URGENT and removed.reasons == ("override removed by dr.who", *ai.reasons)


def test_every_enabled_carrier_gets_the_same_level(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, orthanc_url="http://127.0.0.1:8042", mwl_dir=tmp_path / "wl",
                        hl7_mllp="127.0.0.1:2575", webhook_url="http://127.0.0.1:9/hook", webhook_levels=("URGENT",),
                        smtp_host="127.0.0.1", smtp_to=("reading@localhost",), email_levels=("STAT",))
    decision = PriorityDecision(Priority.URGENT, 0.7, ("x",))
    built, skipped = publications(publication(decision), settings)
    assert skipped == []
    items = {entry.carrier: entry.payload for entry in built}
    assert set(items) == {"orthanc_metadata", "mwl", "hl7", "webhook"}  # no e-mail below STAT
    assert json.loads(items["orthanc_metadata"])["AiPriority"] == "URGENT"
    assert json.loads(items["mwl"])["priority"] == "URGENT"
    assert "A^ASAP^HL70485" in items["hl7"]
    assert json.loads(items["webhook"])["priority"] == "URGENT"
    assert publications(publication(decision), Settings(home=tmp_path)) == ([], [])


def test_a_carrier_that_cannot_be_built_is_skipped_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> str:
        raise ValueError("no room for this value")

    monkeypatch.setattr("dicom_ai.send.carriers.hl7.oru_message", broken)
    settings = Settings(home=tmp_path, orthanc_url="http://127.0.0.1:8042", hl7_mllp="127.0.0.1:2575")
    built, skipped = publications(publication(PriorityDecision(Priority.STAT, 0.9, ("x",))), settings)
    assert [entry.carrier for entry in built] == [Carrier.ORTHANC_METADATA]  # the others still go
    assert skipped == ["hl7: no room for this value"]


def test_a_priority_change_reaches_the_carriers_that_can_follow_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, orthanc_url="http://127.0.0.1:8042", mwl_dir=tmp_path / "wl",
                        hl7_mllp="127.0.0.1:2575", webhook_url="http://127.0.0.1:9/hook")
    ai = PriorityDecision(Priority.URGENT, 0.7, ("x",))
    built, _ = publications(publication(ai), settings)
    previous = {entry.carrier: entry.payload for entry in built}
    changed = with_override(ai, Override(Priority.STAT, "clinician called", "dr.who"))
    entries = {entry.carrier: entry.payload for entry in priority_change("1.2.3", changed, previous, settings)}
    assert set(entries) == {Carrier.ORTHANC_METADATA, Carrier.MWL}  # HL7 and notices went as they were
    assert json.loads(entries[Carrier.ORTHANC_METADATA])["AiPriority"] == "STAT"
    assert json.loads(entries[Carrier.MWL])["priority"] == "STAT"
    assert json.loads(entries[Carrier.MWL])["reasons"].startswith("set to STAT by dr.who: clinician called")
    no_entry_yet = {k: v for k, v in previous.items() if k != Carrier.MWL}
    assert Carrier.MWL not in {e.carrier for e in priority_change("1.2.3", changed, no_entry_yet, settings)}
