"""What people and monitors read: study lists, one study's detail, the worklist's rows, health counts.

Read-only, through the database's pool of read connections: a page or a CLI listing never waits
for the SCP or the pipeline, and filters run in SQL, not over every study in memory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from dicom_ai.domain import RESULT_CARRIERS, StudyState
from dicom_ai.store.database import Reader

_RESULT_KINDS = ", ".join("?" * len(RESULT_CARRIERS))  # placeholders for the result carriers' kinds


@dataclass(frozen=True)
class StudyRow:
    """A study as listed by `dicom-ai studies` and the worklist."""

    study_instance_uid: str
    state: str
    patient_id: str
    accession_number: str
    study_date: str
    instance_count: int
    last_received_at: float
    priority: str | None
    priority_score: float | None
    priority_reasons: tuple[str, ...]
    error: str | None
    models: tuple[str, ...]
    results: int
    pending_sends: int
    first_received_at: float = 0.0
    priority_override: str | None = None
    priority_override_reason: str | None = None
    priority_override_by: str | None = None
    purged_at: float | None = None  # when its files were deleted after retention_days
    waiting_until: float | None = None  # state waiting: when a model's time window opens and it is queued again


class Reports(Reader):
    """Queries only."""

    def study(self, study_uid: str) -> StudyRow | None:
        rows = self.studies(limit=1, study_uid=study_uid)
        return rows[0] if rows else None

    def studies(self, limit: int = 50, state: str | None = None, study_uid: str | None = None,
                patient_id: str | None = None, received_since: float | None = None,
                accession_number: str | None = None, study_date: str | None = None, model: str | None = None,
                priority: str | None = None) -> list[StudyRow]:
        """Studies newest first, filtered in SQL (indexed: state, UID, patient, arrival). `model` is a
        model's name (any version); `priority` the level in force (the override, else the AI's)."""
        # first_received_at <= last_received_at, so the second clause lets SQLite use the arrival index
        since = (("s.first_received_at >= ? and s.last_received_at >= ?", [received_since, received_since])
                 if received_since is not None else None)
        clauses: list[tuple[str, list[Any]]] = [(c, [v]) for c, v in (
            ("s.state = ?", state), ("s.study_instance_uid = ?", study_uid), ("s.patient_id = ?", patient_id),
            ("s.accession_number = ?", accession_number), ("s.study_date = ?", study_date),
            ("coalesce(s.priority_override, s.priority) = ?", priority),
            ("exists (select 1 from json_each(s.models) m where m.value = ? or m.value like ? || '@%')",
             model)) if v is not None]
        clauses = [(c, v * c.count("?")) for c, v in clauses]
        clauses += [since] if since else []
        where = "where " + " and ".join(c for c, _ in clauses) if clauses else ""
        params = [v for _, values in clauses for v in values]
        rows = self._query(
            "select s.*,"
            " (select count(*) from results r where r.study_instance_uid = s.study_instance_uid) as n_results,"
            " (select count(*) from outbox o where o.study_instance_uid = s.study_instance_uid"
            "   and o.state = 'pending') as n_pending"
            f" from studies s {where} order by s.last_received_at desc limit ?",
            [*params, limit],
        )
        return [
            StudyRow(
                study_instance_uid=row["study_instance_uid"],
                state=row["state"],
                patient_id=row["patient_id"] or "",
                accession_number=row["accession_number"] or "",
                study_date=row["study_date"] or "",
                instance_count=row["instance_count"] or 0,
                last_received_at=row["last_received_at"] or 0.0,
                priority=row["priority"],
                priority_score=row["priority_score"],
                priority_reasons=tuple(json.loads(row["priority_reasons"] or "[]")),
                error=row["error"],
                models=tuple(json.loads(row["models"] or "[]")),
                results=row["n_results"],
                pending_sends=row["n_pending"],
                first_received_at=row["first_received_at"] or 0.0,
                priority_override=row["priority_override"],
                priority_override_reason=row["priority_override_reason"],
                priority_override_by=row["priority_override_by"],
                purged_at=row["purged_at"],
                waiting_until=row["waiting_until"],
            )
            for row in rows
        ]

    def study_uids_received_since(self, since: float) -> list[str]:
        """Studies whose last instance arrived at or after `since`, oldest first (replays of rules drafts)."""
        rows = self._query("select study_instance_uid from studies where last_received_at >= ?"
                           " order by last_received_at, study_instance_uid", [since])
        return [row["study_instance_uid"] for row in rows]

    def findings_of(self, study_uid: str) -> list[dict[str, Any]]:
        """Per model and label: the highest probability over the study's images, and on how many it is present."""
        return self._query(
            "select model, model_version, label, code_scheme, code_value, max(probability) as probability,"
            " count(*) as images, sum(present) as images_present from findings where study_instance_uid = ?"
            " group by model, model_version, label order by model, probability desc",
            [study_uid],
        )

    def receive_counts(self, study_uid: str) -> dict[str, int]:
        """SOP Instance UID -> how many times it was received (1 unless a sender repeated it)."""
        rows = self._query(
            "select sop_instance_uid, receive_count from instances where study_instance_uid = ?", [study_uid]
        )
        return {row["sop_instance_uid"]: row["receive_count"] for row in rows}

    def health_counts(self) -> dict[str, Any]:
        """What an admin watches: studies by state, sends by kind and state, the oldest pending send."""
        studies = {row["state"]: row["n"] for row in self._query("select state, count(*) as n from studies group by state")}
        sends = self._send_counts()
        oldest = self._query(
            "select kind, destination, created_at, attempts, last_error from outbox where state = 'pending'"
            " order by created_at limit 1")
        # One subquery each: a max over an index is one lookup, where a case over all rows reads them all.
        times = self._query(
            "select (select max(last_received_at) from studies) as last_received,"
            " (select max(processed_at) from studies) as last_processed,"
            " (select min(completed_at) from studies where state = ?) as oldest_processing,"
            " (select min(waiting_until) from studies where state = ?) as next_window",
            [StudyState.PROCESSING, StudyState.WAITING])[0]
        held = self._query("select coalesce(sum(size), 0) as bytes, count(*) as files from instances")[0]
        [partial] = self._query("select count(*) as n from studies where state = ? and error is not null",
                                [StudyState.DONE])
        return {"studies": studies, "sends": sends, "oldest_pending": oldest[0] if oldest else None,
                **times, "held_bytes": held["bytes"], "held_files": held["files"], "done_with_skips": partial["n"]}

    def drift_flags(self) -> list[dict[str, Any]]:
        """Flagged drift checks in each model's latest checked week (an earlier week's flags are history)."""
        return self._query(
            "select d.* from drift_checks d where d.flagged = 1 and d.week = (select max(week) from drift_checks e"
            " where e.model = d.model) order by d.model, d.psi desc")

    def outbox_rows(self, study_uid: str) -> list[dict[str, Any]]:
        return self._query("select * from outbox where study_instance_uid = ? order by id", [study_uid])

    def events(self, study_uid: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if study_uid:
            return self._query(
                "select * from events where study_instance_uid = ? order by id desc limit ?", [study_uid, limit]
            )
        return self._query("select * from events order by id desc limit ?", [limit])

    def study_detail(self, study_uid: str) -> dict[str, Any] | None:
        """One study with its findings, sends (without payloads) and audit trail, oldest event first:
        what `dicom-ai study --json` prints and GET /api/studies/{uid} answers."""
        row = self.study(study_uid)
        if row is None:
            return None
        return {"study": asdict(row), "findings": self.findings_of(study_uid),
                "sends": [{k: v for k, v in r.items() if k != "payload"} for r in self.outbox_rows(study_uid)],
                "events": list(reversed(self.events(study_uid, limit=1000)))}

    def results_of(self, study_uid: str) -> list[dict[str, Any]]:
        """The study's current result objects (SR, SC...), not those a newer run replaced."""
        return self._query("select * from results where study_instance_uid = ? and superseded_by is null"
                           " order by kind desc, created_at", [study_uid])

    def turnarounds(self, since: float) -> list[float]:
        """Seconds from a study's last instance to its SR acknowledged by the PACS (C-STORE or STOW-RS),
        for studies whose SR was acknowledged since `since`."""
        rows = self._query(
            "select max(o.sent_at) - s.last_received_at as seconds from outbox o"
            " join results r on r.sop_instance_uid = o.key and r.kind = 'SR'"
            " join studies s on s.study_instance_uid = o.study_instance_uid"
            f" where o.state = 'sent' and o.kind in ({_RESULT_KINDS}) and o.sent_at >= ?"
            " group by o.study_instance_uid", [*sorted(RESULT_CARRIERS), since])
        return sorted(max(float(row["seconds"]), 0.0) for row in rows if row["seconds"] is not None)

    def model_runs(self, since: float) -> list[dict[str, Any]]:
        """Each model run since `since` (the pipeline's `model_ran` events): its model (None when the
        event names none) and seconds (0.0 when it gives none), read by SQLite's JSON functions."""
        return self._query("select json_extract(detail, '$.model') as model,"
                           " coalesce(json_extract(detail, '$.seconds'), 0.0) as seconds"
                           " from events where kind = 'model_ran' and at >= ?", [since])

    def studies_per_model(self, since: float) -> dict[str, int]:
        """Studies processed since `since` per model name@version."""
        rows = self._query("select m.value as model, count(*) as n from studies s, json_each(s.models) m"
                           " where s.processed_at >= ? group by m.value", [since])
        return {row["model"]: row["n"] for row in rows}

    def sends_by_carrier(self) -> list[dict[str, Any]]:
        """Outbox rows per carrier (kind) and state, with the oldest pending one's creation time
        (`oldest`, None for the other states)."""
        oldest = {row["kind"]: row["oldest"] for row in self._query(
            "select kind, min(created_at) as oldest from outbox where state = 'pending' group by kind")}
        return [{**row, "oldest": oldest.get(row["kind"]) if row["state"] == "pending" else None}
                for row in self._send_counts()]

    def _send_counts(self) -> list[dict[str, Any]]:
        """Sends by carrier (kind) and state, as `group by kind, state` over the outbox counts them,
        read from the counts its triggers keep (migration 013): a few rows, however many sends."""
        return self._query("select kind, state, n from outbox_counts where n > 0 order by kind, state")

    def audit(self, kind: str | None = None, by: str | None = None, study_uid: str | None = None,
              since: float | None = None, until: float | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Audit events newest first; `by` matches the person recorded in the event's detail."""
        clauses = [(c, v) for c, v in (("kind = ?", kind), ("coalesce(json_extract(detail, '$.by'), json_extract(detail, '$.author')) = ?", by),
                                       ("study_instance_uid = ?", study_uid), ("at >= ?", since),
                                       ("at < ?", until)) if v is not None]
        where = "where " + " and ".join(c for c, _ in clauses) if clauses else ""
        return self._query(f"select * from events {where} order by id desc limit ?", [*(v for _, v in clauses), limit])

    def event_kinds(self) -> list[str]:
        return [row["kind"] for row in self._query("select distinct kind from events order by kind")]
