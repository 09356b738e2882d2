"""Studies from their first instance to their outcome: receive, assemble, process, retain.

Every state change is a compare-and-set in one transaction, with its audit event; results and the
sends they need are recorded in the transaction that marks the study done.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from dicom_ai.domain import (
    RESULT_CARRIERS,
    FindingRow,
    ImageProperties,
    Instance,
    OutboxEntry,
    Override,
    PriorFinding,
    Priority,
    PriorityDecision,
    ReceivedInstance,
    ResultFile,
    StudyState,
)
from dicom_ai.store.database import FINISHED_STATES, Part

log = logging.getLogger(__name__)
_RESULT_KINDS = ", ".join("?" * len(RESULT_CARRIERS))  # placeholders for the result carriers' kinds


@dataclass(frozen=True)
class Recorded:
    """What recording an instance changed: the SCP deletes a replaced copy once this is committed."""

    is_new: bool  # a SOP Instance UID the node did not hold
    replaced: Path | None = None  # the older copy of the same SOP Instance UID, now in the trash
    moved_from: str | None = None  # the study the instance left (it is re-processed without it)


@dataclass(frozen=True)
class StoredCopy:
    """Where the node keeps an instance now."""

    study_instance_uid: str
    path: Path


@dataclass(frozen=True)
class ReceivingStudy:
    """A study still receiving: what per-rule completion needs to know about it."""

    study_instance_uid: str
    first_received_at: float
    instance_count: int
    revision: int


@dataclass(frozen=True)
class CurrentResult:
    """A result object of one model on a study that no later run has superseded."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    kind: str
    sent: bool  # the PACS (or the DICOMweb archive) acknowledged it


class StudyStore(Part):
    """The studies' state and what belongs to them: instances, results, findings, overrides."""

    # receive -------------------------------------------------------------------------------

    def stored_copy(self, sop_instance_uid: str) -> StoredCopy | None:
        rows = self._query("select study_instance_uid, path from instances where sop_instance_uid = ?",
                           [sop_instance_uid])
        return StoredCopy(rows[0]["study_instance_uid"], Path(rows[0]["path"])) if rows else None

    def record_repeat(self, item: ReceivedInstance, now: float | None = None) -> None:
        """A byte-identical copy of an instance we hold: counted, and a running quiet period restarts."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute("update instances set receive_count = receive_count + 1 where sop_instance_uid = ?",
                       [item.sop_instance_uid])
            db.execute(
                "update studies set last_received_at = ?, quiet_since = ? where study_instance_uid = ? and state = ?",
                [now, now, item.study_instance_uid, StudyState.RECEIVING],
            )
            self._event(db, "instance_received_again", item.study_instance_uid, sop=item.sop_instance_uid,
                        calling_aet=item.calling_aet)

    def record_instance(self, item: ReceivedInstance, now: float | None = None) -> Recorded:
        """Record a durable instance file; a new or changed instance (re-)opens its study.

        The newest copy of a SOP Instance UID wins: when `item.path` is another file than the one
        held (the sender changed the instance, or moved it to another study), the row switches to
        the new file, the old file goes to the trash (deleted once this commit is done), and the
        study's revision is bumped so its next results get new UIDs and supersede the old ones.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            held = list(db.query(
                "select study_instance_uid, path, receive_count from instances where sop_instance_uid = ?",
                [item.sop_instance_uid]))
            self._ensure_study(db, item, now)
            recorded = Recorded(is_new=not held)
            if not held:
                self._reopen(db, item.study_instance_uid, now, count_change=1)
            else:
                old_study, old_path = held[0]["study_instance_uid"], Path(held[0]["path"])
                recorded = Recorded(is_new=False, replaced=old_path if old_path != item.path else None)
                if old_study != item.study_instance_uid:
                    recorded = Recorded(is_new=False, replaced=recorded.replaced, moved_from=old_study)
                    self._reopen(db, old_study, now, count_change=-1, revise=True)
                    self._reopen(db, item.study_instance_uid, now, count_change=1)
                    self._event(db, "instance_moved", old_study, sop=item.sop_instance_uid,
                                to_study=item.study_instance_uid, calling_aet=item.calling_aet)
                    self._event(db, "instance_moved", item.study_instance_uid, sop=item.sop_instance_uid,
                                from_study=old_study, calling_aet=item.calling_aet)
                elif recorded.replaced is not None:
                    self._reopen(db, item.study_instance_uid, now, count_change=0, revise=True)
                    self._event(db, "instance_replaced", item.study_instance_uid, sop=item.sop_instance_uid,
                                calling_aet=item.calling_aet, size=item.size)
                else:  # the same file recorded again: a repeat only extends a quiet period still running
                    db.execute("update studies set last_received_at = ?, quiet_since = ? where study_instance_uid = ?"
                               " and state = ?", [now, now, item.study_instance_uid, StudyState.RECEIVING])
                    self._event(db, "instance_received_again", item.study_instance_uid, sop=item.sop_instance_uid,
                                calling_aet=item.calling_aet)
                if recorded.replaced is not None:
                    db.execute("insert or replace into trash (path, at) values (?, ?)", [str(old_path), now])
            db.table("instances").upsert(
                {
                    "sop_instance_uid": item.sop_instance_uid,
                    "sop_class_uid": item.sop_class_uid,
                    "series_instance_uid": item.series_instance_uid,
                    "study_instance_uid": item.study_instance_uid,
                    "modality": item.modality,
                    "transfer_syntax_uid": item.transfer_syntax_uid,
                    "path": str(item.path),
                    "size": item.size,
                    "calling_aet": item.calling_aet,
                    "received_at": now,
                    "receive_count": (held[0]["receive_count"] if held else 0) + 1,
                },
                pk="sop_instance_uid",
            )
        return recorded

    def _ensure_study(self, db: sqlite_utils.Database, item: ReceivedInstance, now: float) -> None:
        if list(db.query("select 1 from studies where study_instance_uid = ?", [item.study_instance_uid])):
            return
        db.table("studies").insert(
            {
                "study_instance_uid": item.study_instance_uid,
                "patient_id": item.patient_id,
                "patient_name": item.patient_name,
                "accession_number": item.accession_number,
                "study_date": item.study_date,
                "study_description": item.study_description,
                "state": StudyState.RECEIVING,
                "first_received_at": now,
                "last_received_at": now,
                "quiet_since": now,
                "instance_count": 0,
                "revision": 0,
            }
        )
        self._event(db, "study_opened", item.study_instance_uid, calling_aet=item.calling_aet)

    def _reopen(self, db: sqlite_utils.Database, study_uid: str, now: float, count_change: int, revise: bool = False) -> None:
        """Back to receiving (also from processing: the running pipeline then discards its now stale
        results, see save_outcome), with the quiet clock restarted."""
        [row] = db.query("select state from studies where study_instance_uid = ?", [study_uid])
        if row["state"] != StudyState.RECEIVING:
            self._event(db, "study_reopened", study_uid, previous_state=row["state"])
        db.execute(
            "update studies set state = ?, last_received_at = ?, quiet_since = ?, error = null, purged_at = null,"
            " waiting_until = null, instance_count = instance_count + ?, revision = revision + ? where study_instance_uid = ?",
            [StudyState.RECEIVING, now, now, count_change, int(revise), study_uid],
        )

    def trash(self) -> list[Path]:
        """Files replaced by newer copies whose deletion a crash interrupted."""
        return [Path(row["path"]) for row in self._query("select path from trash")]

    def empty_trash(self, paths: Sequence[Path]) -> None:
        """Forget trash entries whose files are deleted."""
        with self._transaction() as db:
            for path in paths:
                db.execute("delete from trash where path = ?", [str(path)])

    # assemble ------------------------------------------------------------------------------

    def complete_quiet_studies(self, quiet_since: float) -> list[str]:
        """Move studies with no instance since `quiet_since` from receiving to complete."""
        with self._transaction() as db:
            uids = [
                row["study_instance_uid"]
                for row in db.query(
                    "select study_instance_uid from studies where state = ? and quiet_since <= ?",
                    [StudyState.RECEIVING, quiet_since],
                )
            ]
            for uid in uids:
                db.execute(
                    "update studies set state = ?, completed_at = ? where study_instance_uid = ?",
                    [StudyState.COMPLETE, time.time(), uid],
                )
                self._event(db, "study_complete", uid)
        return uids

    def receiving_studies(self) -> list[ReceivingStudy]:
        """The studies still receiving, for completion by the rules' expectations."""
        return [ReceivingStudy(row["study_instance_uid"], row["first_received_at"] or 0.0, row["instance_count"] or 0,
                               row["revision"] or 0)
                for row in self._query("select study_instance_uid, first_received_at, instance_count, revision"
                                       " from studies where state = ?", [StudyState.RECEIVING])]

    def series_last_received(self, study_uid: str) -> dict[str, float]:
        """Series Instance UID -> when its latest instance arrived."""
        rows = self._query("select series_instance_uid, max(received_at) as t from instances"
                           " where study_instance_uid = ? group by series_instance_uid", [study_uid])
        return {row["series_instance_uid"]: row["t"] for row in rows}

    def complete_study(self, study_uid: str, reason: str) -> bool:
        """A receiving study is complete before its quiet time (a rule's expectation is met): receiving -> complete."""
        with self._transaction() as db:
            cursor = db.execute("update studies set state = ?, completed_at = ? where study_instance_uid = ?"
                                " and state = ?", [StudyState.COMPLETE, time.time(), study_uid, StudyState.RECEIVING])
            if cursor.rowcount:
                self._event(db, "study_complete", study_uid, reason=reason)
            return cursor.rowcount == 1

    def earliest_receiving_activity(self) -> float | None:
        """When the quiet period of the quietest receiving study began (None: none is receiving)."""
        [row] = self._query("select min(quiet_since) as t from studies where state = ?", [StudyState.RECEIVING])
        return row["t"]

    def restart_quiet_clocks(self, now: float | None = None) -> list[str]:
        """At start-up: nothing could arrive while the node was down, so that time was not quiet.

        A study cut in half by a crash would otherwise be complete at once and get results on its
        first half; now it waits stable_after seconds for the sender to deliver the rest.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            uids = [row["study_instance_uid"] for row in db.query(
                "select study_instance_uid from studies where state = ?", [StudyState.RECEIVING])]
            db.execute("update studies set quiet_since = ? where state = ?", [now, StudyState.RECEIVING])
            for uid in uids:
                self._event(db, "quiet_clock_restarted", uid)
        return uids

    def claim_complete_study(self) -> str | None:
        """Take the oldest complete study for processing (complete -> processing), if any."""
        with self._transaction() as db:
            rows = list(
                db.query(
                    "select study_instance_uid from studies where state = ? order by completed_at limit 1",
                    [StudyState.COMPLETE],
                )
            )
            if not rows:
                return None
            uid = rows[0]["study_instance_uid"]
            db.execute(
                "update studies set state = ? where study_instance_uid = ?", [StudyState.PROCESSING, uid]
            )
            return str(uid)

    def recover_interrupted(self) -> list[str]:
        """After a crash: studies caught in processing are complete again (results are idempotent)."""
        with self._transaction() as db:
            uids = [
                row["study_instance_uid"]
                for row in db.query(
                    "select study_instance_uid from studies where state = ?", [StudyState.PROCESSING]
                )
            ]
            for uid in uids:
                db.execute(
                    "update studies set state = ? where study_instance_uid = ?", [StudyState.COMPLETE, uid]
                )
                self._event(db, "study_recovered", uid)
        return uids

    def release_processing(self, study_uid: str, reason: str) -> bool:
        """A study the pipeline could not finish (disk full...) goes back to the queue (processing -> complete)."""
        with self._transaction() as db:
            cursor = db.execute(
                "update studies set state = ?, completed_at = ? where study_instance_uid = ? and state = ?",
                [StudyState.COMPLETE, time.time(), study_uid, StudyState.PROCESSING])
            if cursor.rowcount:
                self._event(db, "study_deferred", study_uid, reason=reason)
            return cursor.rowcount == 1

    def wait_for_window(self, study_uid: str, until: float, models: Sequence[str]) -> bool:
        """The study's models may not run now (their rules' time windows): processing -> waiting until `until`."""
        with self._transaction() as db:
            cursor = db.execute(
                "update studies set state = ?, waiting_until = ? where study_instance_uid = ? and state = ?",
                [StudyState.WAITING, until, study_uid, StudyState.PROCESSING])
            if cursor.rowcount:
                self._event(db, "waiting_for_window", study_uid, until=until, models=list(models))
            return cursor.rowcount == 1

    def release_waiting(self, now: float | None = None) -> list[str]:
        """Studies whose wait for a time window is over are complete again (waiting -> complete)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            uids = [row["study_instance_uid"] for row in db.query(
                "select study_instance_uid from studies where state = ? and waiting_until <= ?",
                [StudyState.WAITING, now])]
            for uid in uids:
                db.execute("update studies set state = ?, completed_at = ?, waiting_until = null"
                           " where study_instance_uid = ?", [StudyState.COMPLETE, now, uid])
                self._event(db, "window_open", uid)
        return uids

    def requeue(self, study_uid: str, by: str) -> bool:
        """An admin asks for a finished study to be processed again (after fixing a rule or model)."""
        with self._transaction() as db:
            cursor = db.execute(
                f"update studies set state = ?, completed_at = ? where study_instance_uid = ?"
                f" and purged_at is null and state in ({', '.join('?' * len(FINISHED_STATES))})",
                [StudyState.COMPLETE, time.time(), study_uid, *FINISHED_STATES],
            )
            if cursor.rowcount == 1:
                self._event(db, "study_requeued", study_uid, by=by)
            return cursor.rowcount == 1

    def discard_failed(self, study_uid: str, by: str) -> bool:
        """An admin gives up on a failed study (e.g. its data cannot be read by any model): it becomes
        no_match (stored, no results) and leaves the open problems; its error stays, prefixed with who
        discarded it, and `retry` still works. False unless the study is failed."""
        with self._transaction() as db:
            rows = list(db.query("select error from studies where study_instance_uid = ? and state = ?",
                                 [study_uid, StudyState.FAILED]))
            if not rows:
                return False
            db.execute("update studies set state = ?, error = ? where study_instance_uid = ?",
                       [StudyState.NO_MATCH, f"discarded by {by} after: {rows[0]['error'] or 'a failure'}", study_uid])
            self._event(db, "study_discarded", study_uid, by=by, before={"state": StudyState.FAILED.value},
                        after={"state": StudyState.NO_MATCH.value}, error=rows[0]["error"])
        return True

    # process -------------------------------------------------------------------------------

    def record_model_run(self, study_uid: str, model: str, version: str, seconds: float, images: int) -> None:
        """How long a model took on a study (the console's latency and /metrics' inference histogram)."""
        with self._transaction() as db:
            self._event(db, "model_ran", study_uid, model=model, version=version, seconds=round(seconds, 4),
                        images=images)

    def study_revision(self, study_uid: str) -> int:
        """How many times the study's instances were replaced or moved out (0: never)."""
        rows = self._query("select revision from studies where study_instance_uid = ?", [study_uid])
        return int(rows[0]["revision"] or 0) if rows else 0

    def current_results(self, study_uid: str, model: str) -> list[CurrentResult]:
        """One model's results on a study that no later run superseded, and whether an archive has them
        (not the assessments of them: a re-run does not undo a radiologist's judgement)."""
        rows = self._query(
            "select r.sop_instance_uid, r.series_instance_uid, r.kind, exists(select 1 from outbox o where"
            f" o.kind in ({_RESULT_KINDS}) and o.key = r.sop_instance_uid and o.state = 'sent') as sent"
            " from results r where r.study_instance_uid = ? and r.model = ? and r.superseded_by is null"
            " and r.kind != 'AS' order by r.created_at, r.sop_instance_uid",
            [*sorted(RESULT_CARRIERS), study_uid, model])
        return [CurrentResult(row["sop_instance_uid"], row["series_instance_uid"], study_uid, row["kind"],
                              bool(row["sent"])) for row in rows]

    def is_result(self, sop_uid: str) -> bool:
        """True when the SOP Instance UID is one of the result objects this node made."""
        return bool(self._query("select 1 from results where sop_instance_uid = ?", [sop_uid]))

    def instances_of(self, study_uid: str) -> list[Instance]:
        rows = self._query(
            "select * from instances where study_instance_uid = ? order by series_instance_uid, received_at",
            [study_uid],
        )
        return [
            Instance(
                sop_instance_uid=row["sop_instance_uid"],
                sop_class_uid=row["sop_class_uid"],
                series_instance_uid=row["series_instance_uid"],
                study_instance_uid=row["study_instance_uid"],
                path=Path(row["path"]),
            )
            for row in rows
        ]

    def prior_findings(self, study_uid: str) -> list[PriorFinding]:
        """AI findings on earlier studies of the same patient (same non-empty PatientID)."""
        rows = self._query(
            "select f.study_instance_uid, s.first_received_at as received_at, f.label,"
            " max(f.probability) as probability, max(f.present) as present"
            " from findings f join studies s on s.study_instance_uid = f.study_instance_uid"
            " join studies me on me.study_instance_uid = ?"
            " where s.patient_id = me.patient_id and me.patient_id != ''"
            " and s.study_instance_uid != me.study_instance_uid and s.first_received_at < me.first_received_at"
            " group by f.study_instance_uid, f.label",
            [study_uid],
        )
        return [PriorFinding(r["study_instance_uid"], r["received_at"], r["label"], r["probability"], bool(r["present"]))
                for r in rows]

    def ai_priority(self, study_uid: str) -> PriorityDecision | None:
        """The AI's priority for the study as decided (ROUTINE before any result); None: no such study."""
        rows = self._query("select priority, priority_score, priority_reasons from studies where study_instance_uid = ?",
                           [study_uid])
        if not rows:
            return None
        row = rows[0]
        if not row["priority"]:
            return PriorityDecision(Priority.ROUTINE, 0.0, ("no AI result yet",))
        return PriorityDecision(Priority[row["priority"]], row["priority_score"] or 0.0,
                                tuple(json.loads(row["priority_reasons"] or "[]")))

    def priority_override(self, study_uid: str) -> Override | None:
        """The radiologist's priority for the study, if one was set."""
        rows = self._query(
            "select priority_override, priority_override_reason, priority_override_by from studies"
            " where study_instance_uid = ?", [study_uid])
        if not rows or not rows[0]["priority_override"]:
            return None
        row = rows[0]
        return Override(Priority[row["priority_override"]], row["priority_override_reason"] or "",
                        row["priority_override_by"] or "")

    def finish_without_results(self, study_uid: str, state: StudyState, reason: str) -> bool:
        """processing -> no_match or failed; False when a late instance re-opened it meanwhile."""
        with self._transaction() as db:
            cursor = db.execute(
                "update studies set state = ?, processed_at = ?, error = ? where study_instance_uid = ?"
                " and state = ?",
                [state, time.time(), reason if state == StudyState.FAILED else None, study_uid, StudyState.PROCESSING],
            )
            self._event(db, f"study_{state}", study_uid, reason=reason)
            return cursor.rowcount == 1

    def save_outcome(
        self,
        study_uid: str,
        *,
        rules: Sequence[str],
        models: Sequence[str],
        findings: Sequence[FindingRow],
        results: Sequence[ResultFile],
        priority: PriorityDecision,
        outbox: Sequence[OutboxEntry],
        skipped: Sequence[str] = (),
        supersede: Mapping[str, str] | None = None,
        revision: int = 0,
        images: Sequence[ImageProperties] = (),
        shadow_models: Sequence[str] = (),
    ) -> bool:
        """Record findings, result files and what to send, and mark the study done, atomically.

        `supersede` maps earlier result UIDs to the SR that replaces them (the study changed since):
        they are marked, and their sends that have not gone out yet are dropped.

        `images` are the input properties of each analysed image (drift and subgroups of the validation
        loop), kept with the calling AE title the image came from.

        `skipped` names result carriers whose message could not be built: the study is done (its
        other results go out) and keeps them as its error, for `dicom-ai studies` and `status`.

        `shadow_models` ran for shadow rules: their findings and results are recorded (the caller
        queues none of them) and a `shadow_results` event names them.

        A re-run of the same study replaces rather than duplicates: the outbox is unique per
        (carrier, key, destination) and an item already sent with the same payload is not sent again.
        """
        now = time.time()
        with self._transaction() as db:
            state = list(db.query("select state from studies where study_instance_uid = ?", [study_uid]))
            if not state or state[0]["state"] != StudyState.PROCESSING:
                log.info("study %s was re-opened while processing; its results wait for the next run", study_uid)
                return False
            for row in findings:
                finding = row.finding
                db.execute(
                    "insert into findings (study_instance_uid, sop_instance_uid, model, model_version, label,"
                    " code_value, code_scheme, probability, threshold, present, created_at)"
                    " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " on conflict (study_instance_uid, sop_instance_uid, model, label) do update set"
                    " model_version = excluded.model_version, probability = excluded.probability,"
                    " threshold = excluded.threshold, present = excluded.present, created_at = excluded.created_at",
                    [
                        study_uid,
                        row.source_sop_instance_uid,
                        row.model,
                        row.model_version,
                        finding.label,
                        finding.code.value,
                        finding.code.scheme,
                        finding.probability,
                        finding.threshold,
                        int(finding.present),
                        now,
                    ],
                )
            for image in images:
                save_image_properties(db, study_uid, image, now)
            for result in results:
                db.table("results").upsert(
                    {
                        "sop_instance_uid": result.sop_instance_uid,
                        "study_instance_uid": study_uid,
                        "series_instance_uid": result.series_instance_uid,
                        "kind": result.kind,
                        "model": result.model,
                        "model_version": result.model_version,
                        "path": str(result.path),
                        "created_at": now,
                        "revision": revision,
                        "superseded_by": None,
                    },
                    pk="sop_instance_uid",
                )
            for old_uid, new_uid in (supersede or {}).items():
                db.execute("update results set superseded_by = ? where sop_instance_uid = ?", [new_uid, old_uid])
                db.execute(f"update outbox set state = 'superseded' where kind in ({_RESULT_KINDS}) and key = ?"
                           " and state in ('pending', 'failed')", [*sorted(RESULT_CARRIERS), old_uid])
            if supersede:
                self._event(db, "results_superseded", study_uid, by=sorted(set(supersede.values())),
                            superseded=sorted(supersede))
            insert_outbox(db, study_uid, outbox, now, keep_sent_duplicates=True)
            for problem in skipped:
                self._event(db, "publication_skipped", study_uid, problem=problem)
            if shadow_models:
                self._event(db, "shadow_results", study_uid, models=list(shadow_models),
                            results=sum(1 for result in results if result.model in shadow_models))
            db.execute(
                "update studies set state = ?, processed_at = ?, error = ?, priority = ?, priority_score = ?,"
                " priority_reasons = ?, rules = ?, models = ? where study_instance_uid = ?",
                [
                    StudyState.DONE,
                    now,
                    ("result carrier skipped: " + "; ".join(skipped)) if skipped else None,
                    priority.level.name,
                    priority.score,
                    json.dumps(list(priority.reasons)),
                    json.dumps(list(rules)),
                    json.dumps(list(models)),
                    study_uid,
                ],
            )
            self._event(
                db, "study_done", study_uid, priority=priority.level.name, results=len(results), models=list(models)
            )
        return True

    def set_priority_override(self, study_uid: str, override: Override, outbox: Sequence[OutboxEntry] = ()) -> bool:
        """Record a radiologist's priority (or its removal: level None), audited; False if no such study.

        `outbox` entries queue the new priority for its carriers in the same transaction, so the
        override reaches the PACS even if the node restarts.
        """
        now = time.time()
        level = override.level.name if override.level is not None else None
        with self._transaction() as db:
            rows = list(db.query(
                "select priority, priority_override from studies where study_instance_uid = ?", [study_uid]))
            if not rows:
                return False
            db.execute(
                "update studies set priority_override = ?, priority_override_reason = ?, priority_override_by = ?,"
                " priority_override_at = ? where study_instance_uid = ?",
                [level, override.reason if level else None, override.by if level else None, now if level else None,
                 study_uid],
            )
            self._event(db, "priority_overridden", study_uid, by=override.by, reason=override.reason,
                        ai=rows[0]["priority"], previous=rows[0]["priority_override"], new=level)
            insert_outbox(db, study_uid, outbox, now, keep_sent_duplicates=False)
        return True

    # retention -----------------------------------------------------------------------------

    _FINISHED_AND_QUIET = (
        f"state in ({', '.join('?' * len(FINISHED_STATES))}) and purged_at is null"
        " and coalesce(processed_at, last_received_at) <= ?"
        " and not exists (select 1 from outbox o where o.study_instance_uid = studies.study_instance_uid"
        " and o.state = 'pending')"
    )

    def purgeable_studies(self, finished_before: float, limit: int = 200) -> list[str]:
        """Finished studies, untouched since `finished_before`, with nothing left to send."""
        rows = self._query(
            f"select study_instance_uid from studies where {self._FINISHED_AND_QUIET}"
            " order by coalesce(processed_at, last_received_at) limit ?",
            [*FINISHED_STATES, finished_before, limit],
        )
        return [row["study_instance_uid"] for row in rows]

    def forget_files(self, study_uid: str, finished_before: float) -> list[Path] | None:
        """Drop a purgeable study's instance rows and mark it purged; returns the files to delete.

        None when the study is no longer purgeable (a late instance re-opened it, a retry queued
        it, a result is pending). Findings, results, outbox and events stay: the audit trail.
        """
        with self._transaction() as db:
            still = list(db.query(
                f"select study_instance_uid from studies where study_instance_uid = ? and {self._FINISHED_AND_QUIET}",
                [study_uid, *FINISHED_STATES, finished_before],
            ))
            if not still:
                return None
            paths = [Path(row["path"]) for row in db.query(
                "select path from instances where study_instance_uid = ?"
                " union all select path from results where study_instance_uid = ?", [study_uid, study_uid])]
            db.execute("delete from instances where study_instance_uid = ?", [study_uid])
            db.execute("update studies set purged_at = ? where study_instance_uid = ?", [time.time(), study_uid])
            self._event(db, "study_purged", study_uid, files=len(paths))
        return paths

    def last_purged_study_uids(self, window: float) -> list[str]:
        """Studies purged within `window` seconds of the latest purge: a crash can only have
        interrupted that run, so start-up never walks the whole history."""
        return [row["study_instance_uid"] for row in self._query(
            "select study_instance_uid from studies where purged_at >= (select max(purged_at) from studies) - ?",
            [window])]


def save_image_properties(db: sqlite_utils.Database, study_uid: str, image: ImageProperties, now: float) -> None:
    """One analysed image's properties, in the caller's transaction (the calling AE from its instance row)."""
    db.execute(
        "insert or replace into analysed_images (sop_instance_uid, model, study_instance_uid, calling_aet,"
        " manufacturer, station_name, body_part, modality, photometric, rows, columns, pixel_spacing, kvp,"
        " field_strength, patient_sex, patient_age, analysed_at) values (?, ?, ?, coalesce((select calling_aet from"
        " instances where sop_instance_uid = ?), ''), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [image.sop_instance_uid, image.model, study_uid, image.sop_instance_uid, image.manufacturer,
         image.station_name, image.body_part, image.modality, image.photometric, image.rows, image.columns,
         image.pixel_spacing, image.kvp, image.field_strength, image.patient_sex, image.patient_age, now])


def insert_outbox(db: sqlite_utils.Database, study_uid: str, entries: Sequence[OutboxEntry], now: float,
                  keep_sent_duplicates: bool) -> None:
    """Queue deliveries in the caller's transaction; one row per (carrier, key, destination).

    With `keep_sent_duplicates`, a row already sent with the same payload stays sent (a re-run of
    the same result is not delivered twice); otherwise the entry is queued again whatever it was.
    """
    keep = ("state = case when outbox.state = 'sent' and outbox.payload = excluded.payload then 'sent' else 'pending' end,"
            " attempts = case when outbox.state = 'sent' and outbox.payload = excluded.payload"
            " then outbox.attempts else 0 end,") if keep_sent_duplicates else "state = 'pending', attempts = 0,"
    for entry in entries:
        db.execute(
            "insert into outbox (kind, key, study_instance_uid, destination, payload, state, attempts,"
            " next_attempt_at, created_at) values (?, ?, ?, ?, ?, 'pending', 0, ?, ?)"
            f" on conflict (kind, key, destination) do update set {keep}"
            " payload = excluded.payload, next_attempt_at = excluded.next_attempt_at",
            [str(entry.carrier), entry.key, study_uid, entry.destination, entry.payload, now, now],
        )
