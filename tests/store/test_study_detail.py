"""`dicom-ai study UID`: one study's state, findings, sends and audit trail, for the admin asking "what happened?"."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dicom_ai.cli import main
from dicom_ai.domain import Override, Priority
from dicom_ai.store import Spool, Stores
from tests.store.test_retention import _finished


def test_one_study_with_its_findings_sends_and_audit_trail(tmp_path: Path) -> None:
    store, spool = Stores.open(tmp_path / "dicom-ai.sqlite"), Spool(tmp_path / "spool")
    _finished(store, spool, "1.2.3")
    store.studies.set_priority_override("1.2.3", Override(Priority.STAT, "clinician called", "dr.who"))
    store.close()
    env = {"DICOM_AI_HOME": str(tmp_path)}
    outcome = CliRunner().invoke(main, ["study", "1.2.3"], env=env)
    assert outcome.exit_code == 0, outcome.output
    text = outcome.output
    assert "state done, 1 instance(s)" in text and "(override STAT by dr.who)" in text
    assert "finding m 1: Consolidation (SCT 95436008) 90%, present on 1 of 1 image(s)" in text
    assert "send dicom 1.2.3.9 to PACS@127.0.0.1:4242: sent after 1 attempt(s)" in text
    trail = text[text.index("audit trail:"):]
    kinds = ["study_opened", "study_complete", "study_done", "sent", "priority_overridden"]
    assert [trail.index(kind) for kind in kinds] == sorted(trail.index(kind) for kind in kinds)  # in time order
    assert "by=dr.who" in trail
    as_json = json.loads(CliRunner().invoke(main, ["study", "1.2.3", "--json"], env=env).output)
    assert as_json["study"]["priority_override"] == "STAT" and "payload" not in as_json["sends"][0]
    missing = CliRunner().invoke(main, ["study", "9.9.9"], env=env)
    assert missing.exit_code == 1 and "no study 9.9.9 in this node's database" in missing.output
