"""Reading order: priority (override, else AI, raised by waiting) then how overdue; reasons always."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from dicom_ai.cli import main
from dicom_ai.domain import Priority, PriorityDecision
from dicom_ai.domain import TurnaroundTargets
from dicom_ai.prioritize.worklist import build_worklist, effective_priority
from dicom_ai.domain import ReceivedInstance
from dicom_ai.store import Stores

TARGETS = TurnaroundTargets(stat_minutes=60, urgent_minutes=240, routine_minutes=1440)
NOW = 1_000_000.0


def test_waiting_promotes_one_level_per_missed_target() -> None:
    assert effective_priority(Priority.ROUTINE, 720, TARGETS) == (Priority.ROUTINE, (), 0.5)
    level, reasons, overdue = effective_priority(Priority.ROUTINE, 1500, TARGETS)
    assert level == Priority.URGENT and overdue == 60 / 240
    assert reasons == ("waiting 25.0 h > ROUTINE target 24.0 h",)
    # the URGENT clock starts at promotion: STAT only after a further 4 h
    assert effective_priority(Priority.ROUTINE, 1440 + 241, TARGETS)[0] == Priority.STAT
    assert effective_priority(Priority.URGENT, 300, TARGETS)[0] == Priority.STAT
    level, _, overdue = effective_priority(Priority.STAT, 120, TARGETS)
    assert level == Priority.STAT and overdue == 2.0  # nothing above STAT: it is just late


def _study(store: Stores, uid: str, minutes_ago: float, priority: Priority | None, now: float = NOW) -> None:
    store.studies.record_instance(
        ReceivedInstance(sop_instance_uid=uid + ".1", sop_class_uid="1.2", series_instance_uid=uid + ".0",
                         study_instance_uid=uid, modality="CR", transfer_syntax_uid="1.2.840.10008.1.2.1",
                         path=Path("/x"), size=1, calling_aet="ORTHANC", patient_id="P" + uid[-1]),
        now=now - minutes_ago * 60,
    )
    store.studies.complete_quiet_studies(quiet_since=now)
    store.studies.claim_complete_study()
    if priority is None:
        store.studies.finish_without_results(uid, "no_match", "no rule")  # type: ignore[arg-type]
    else:
        store.studies.save_outcome(uid, rules=["r"], models=["m@1"], findings=[], results=[], outbox=[],
                           priority=PriorityDecision(priority, 0.9, (f"AI says {priority.name}",)))


def test_order_by_priority_then_overdue_with_reasons(tmp_path: Path) -> None:
    store = Stores.open(tmp_path / "db.sqlite")
    _study(store, "1.1", minutes_ago=10, priority=Priority.ROUTINE)
    _study(store, "1.2", minutes_ago=30, priority=Priority.URGENT)
    _study(store, "1.3", minutes_ago=5, priority=Priority.STAT)
    _study(store, "1.4", minutes_ago=1600, priority=None)  # old, no AI: aged to URGENT
    _study(store, "1.5", minutes_ago=20, priority=Priority.URGENT)
    entries = build_worklist(store.reports.studies(), NOW, TARGETS)
    assert [e.study_instance_uid for e in entries] == ["1.3", "1.4", "1.2", "1.5", "1.1"]
    aged = entries[1]
    assert aged.priority == Priority.URGENT
    assert aged.reasons == ("no AI result", "waiting 26.7 h > ROUTINE target 24.0 h")
    assert entries[0].reasons == ("AI says STAT",)


def test_override_is_audited_ranks_and_reaches_orthanc_outbox(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Stores.open(home / "dicom-ai.sqlite")
    _study(store, "1.6", minutes_ago=1, priority=Priority.ROUTINE, now=time.time())
    store.close()
    env = {"DICOM_AI_HOME": str(home), "DICOM_AI_ORTHANC_URL": "http://127.0.0.1:8042"}
    runner = CliRunner()
    refused = runner.invoke(main, ["priority", "1.6", "STAT"], env=env)
    assert refused.exit_code == 2 and "--reason is required" in refused.output
    done = runner.invoke(main, ["priority", "1.6", "STAT", "--reason", "clinician called", "--by", "dr.who"], env=env)
    assert done.exit_code == 0, done.output
    listed = runner.invoke(main, ["worklist", "--json"], env=env)
    [entry] = json.loads(listed.output)
    assert entry["priority"] == "STAT" and entry["ai_priority"] == "ROUTINE"
    assert entry["reasons"] == ["set to STAT by dr.who: clinician called"]
    store = Stores.open(home / "dicom-ai.sqlite")
    [event] = [e for e in store.reports.events("1.6") if e["kind"] == "priority_overridden"]
    assert json.loads(event["detail"]) == {"by": "dr.who", "reason": "clinician called", "ai": "ROUTINE",
                                           "previous": None, "new": "STAT"}
    [item] = store.outbox.due_outbox()
    assert json.loads(item.payload)["AiPriority"] == "STAT"
    store.close()
    cleared = runner.invoke(main, ["priority", "1.6", "--clear", "--by", "dr.who"], env=env)
    assert cleared.exit_code == 0
    [entry] = json.loads(runner.invoke(main, ["worklist", "--json"], env=env).output)
    assert entry["priority"] == "ROUTINE"


def test_unknown_study_is_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Stores.open(home / "dicom-ai.sqlite").close()
    result = CliRunner().invoke(main, ["priority", "9.9", "URGENT", "--reason", "x"], env={"DICOM_AI_HOME": str(home)})
    assert result.exit_code == 1 and "no study 9.9 on this node" in result.output
