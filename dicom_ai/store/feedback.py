"""Ground truth: radiologists' judgements, final reports received over HL7, and the assessments sent back.

Nothing is overwritten: every judgement is a row (with its audit event), so a revised judgement
keeps the earlier ones; the latest of each source counts, and an explicit radiologist judgement
always outranks one derived from a report. A report that names no study the node knows waits in
hl7_reports until the study arrives.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_ai.domain import Judgement, OutboxEntry, ResultFile, Truth, TruthSource
from dicom_ai.store.database import Part
from dicom_ai.store.studies import insert_outbox

ASSESSMENT = "AS"  # results.kind of an assessment SR
PENDING, MATCHED = "pending", "matched"


class FeedbackError(ValueError):
    """A judgement names a study, model or label the node does not know; the message says which."""


@dataclass(frozen=True)
class Effective:
    """The truth that counts for one label: a radiologist's latest, else the latest derived from a report."""

    truth: Truth
    source: TruthSource
    by: str
    comment: str
    at: float
    report_id: int | None


@dataclass(frozen=True)
class InboundReport:
    """A final report as the HL7 listener received it, kept until it is matched to a study."""

    id: int
    received_at: float
    control_id: str
    accession_number: str
    patient_id: str
    study_date: str
    message: str


@dataclass(frozen=True)
class ResultRef:
    """An SR the node made (an AI result or an assessment) that is still current."""

    sop_instance_uid: str
    series_instance_uid: str
    path: Path
    sent: bool


class FeedbackStore(Part):
    """Judgements, inbound reports and assessment SRs."""

    # judgements ----------------------------------------------------------------------------

    def judged_labels(self, study_uid: str) -> dict[str, dict[str, str]]:
        """Model -> {label: model version} of the findings the node recorded on the study: what can be judged."""
        rows = self._query("select distinct model, model_version, label from findings where study_instance_uid = ?",
                           [study_uid])
        found: dict[str, dict[str, str]] = {}
        for row in rows:
            found.setdefault(row["model"], {})[row["label"]] = row["model_version"]
        return found

    def check_judgeable(self, study_uid: str, model: str, label: str) -> None:
        """Raise FeedbackError naming the study, model or label when the node has no such result to judge."""
        if not self._query("select 1 from studies where study_instance_uid = ?", [study_uid]):
            raise FeedbackError(f"no study {study_uid} on this node (see `dicom-ai studies`)")
        labels = self.judged_labels(study_uid)
        if model not in labels:
            ran = ", ".join(sorted(labels)) or "none"
            raise FeedbackError(f"model {model!r} has no result on study {study_uid} (models with results: {ran})")
        if label not in labels[model]:
            raise FeedbackError(f"model {model!r} has no finding {label!r} on study {study_uid} "
                                f"(its findings: {', '.join(sorted(labels[model]))})")

    def record_judgement(self, judgement: Judgement, now: float | None = None) -> int:
        """Keep a judgement with its audit event; returns its id. Checked first (check_judgeable)."""
        self.check_judgeable(judgement.study_instance_uid, judgement.model, judgement.label)
        now = time.time() if now is None else now
        with self._transaction() as db:
            row_id = _inserted(db.table("feedback").insert({
                "study_instance_uid": judgement.study_instance_uid, "model": judgement.model,
                "label": judgement.label, "truth": str(judgement.truth), "source": str(judgement.source),
                "by": judgement.by, "comment": judgement.comment, "report_id": judgement.report_id, "at": now,
            }).last_rowid)
            self._event(db, "judged", judgement.study_instance_uid, model=judgement.model, label=judgement.label,
                        truth=str(judgement.truth), source=str(judgement.source), by=judgement.by,
                        comment=judgement.comment, report_id=judgement.report_id)
        return row_id

    def effective(self, study_uid: str, model: str) -> dict[str, Effective]:
        """Label -> the truth that counts for one model's result on a study."""
        rows = self._query("select * from feedback where study_instance_uid = ? and model = ? order by id",
                           [study_uid, model])
        return {label: truth for (_, label), truth in fold_truths(rows).items()}

    def effective_for_model(self, model: str) -> dict[tuple[str, str], Effective]:
        """(study, label) -> the truth that counts, for every judged study of a model."""
        return fold_truth_rows(self._rows(
            f"select {', '.join(FOLD_COLUMNS)} from feedback where model = ? order by id", [model]))

    def history(self, study_uid: str) -> list[dict[str, Any]]:
        """Every judgement of the study, oldest first (the audit trail shows who and when)."""
        return self._query("select * from feedback where study_instance_uid = ? order by id", [study_uid])

    # inbound reports -----------------------------------------------------------------------

    def keep_report(self, control_id: str, sender: str, accession: str, patient_id: str, study_date: str,
                    message: str, now: float | None = None) -> int:
        """A received final report, pending until matched; returns its id."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row_id = _inserted(db.table("hl7_reports").insert({
                "received_at": now, "control_id": control_id, "sender": sender, "accession_number": accession,
                "patient_id": patient_id, "study_date": study_date, "status": PENDING, "message": message,
            }).last_rowid)
        return row_id

    def pending_reports(self, limit: int = 200) -> list[InboundReport]:
        rows = self._query("select * from hl7_reports where status = ? order by id limit ?", [PENDING, limit])
        return [InboundReport(r["id"], r["received_at"], r["control_id"] or "", r["accession_number"] or "",
                              r["patient_id"] or "", r["study_date"] or "", r["message"]) for r in rows]

    def report(self, report_id: int) -> dict[str, Any] | None:
        rows = self._query("select * from hl7_reports where id = ?", [report_id])
        return rows[0] if rows else None

    def mark_report_matched(self, report_id: int, study_uid: str, outcome: str) -> None:
        with self._transaction() as db:
            db.execute("update hl7_reports set status = ?, study_instance_uid = ?, matched_at = ?, outcome = ?"
                       " where id = ?", [MATCHED, study_uid, time.time(), outcome, report_id])
            self._event(db, "report_matched", study_uid, report_id=report_id, outcome=outcome)

    def studies_for_report(self, accessions: Sequence[str], patient_id: str, study_date: str) -> list[str]:
        """Studies a report is about: by accession number, else by patient ID and study date."""
        for accession in accessions:
            if accession:
                rows = self._query("select study_instance_uid from studies where accession_number = ?", [accession])
                if rows:
                    return [row["study_instance_uid"] for row in rows]
        if patient_id and study_date:
            rows = self._query("select study_instance_uid from studies where patient_id = ? and study_date = ?",
                               [patient_id, study_date])
            return [row["study_instance_uid"] for row in rows]
        return []

    # assessments ---------------------------------------------------------------------------

    def current_sr(self, study_uid: str, model: str, kind: str = "SR") -> ResultRef | None:
        """The model's current AI SR (or, with kind AS, its current assessment) on the study."""
        rows = self._query(
            "select r.sop_instance_uid, r.series_instance_uid, r.path, exists(select 1 from outbox o where"
            " o.kind = 'dicom' and o.key = r.sop_instance_uid and o.state = 'sent') as sent from results r"
            " where r.study_instance_uid = ? and r.model = ? and r.kind = ? and r.superseded_by is null"
            " order by r.created_at desc, r.sop_instance_uid limit 1", [study_uid, model, kind])
        if not rows:
            return None
        row = rows[0]
        return ResultRef(row["sop_instance_uid"], row["series_instance_uid"], Path(row["path"]), bool(row["sent"]))

    def destinations(self, sop_instance_uid: str) -> list[str]:
        """Where a result was queued by the DICOM carrier (an assessment goes where its AI SR went)."""
        rows = self._query("select distinct destination from outbox where kind = 'dicom' and key = ? order by destination",
                           [sop_instance_uid])
        return [row["destination"] for row in rows]

    def study_row(self, study_uid: str) -> dict[str, Any] | None:
        rows = self._query("select * from studies where study_instance_uid = ?", [study_uid])
        return rows[0] if rows else None

    def save_assessment(self, study_uid: str, result: ResultFile, outbox: Sequence[OutboxEntry],
                        replaces: str | None) -> None:
        """Record an assessment SR and queue its send in one transaction; the one it replaces is superseded."""
        now = time.time()
        with self._transaction() as db:
            db.table("results").upsert({
                "sop_instance_uid": result.sop_instance_uid, "study_instance_uid": study_uid,
                "series_instance_uid": result.series_instance_uid, "kind": ASSESSMENT, "model": result.model,
                "model_version": result.model_version, "path": str(result.path), "created_at": now,
                "superseded_by": None,
            }, pk="sop_instance_uid")
            if replaces and replaces != result.sop_instance_uid:
                db.execute("update results set superseded_by = ? where sop_instance_uid = ?",
                           [result.sop_instance_uid, replaces])
                db.execute("update outbox set state = 'superseded' where kind = 'dicom' and key = ?"
                           " and state in ('pending', 'failed')", [replaces])
            insert_outbox(db, study_uid, outbox, now, keep_sent_duplicates=True)
            self._event(db, "assessment_queued", study_uid, sop=result.sop_instance_uid, model=result.model,
                        replaces=replaces)


def _inserted(row_id: int | None) -> int:
    if row_id is None:
        raise RuntimeError("SQLite reported no row id for an insert")
    return row_id


FOLD_COLUMNS = ("study_instance_uid", "label", "truth", "source", "by", "comment", "at", "report_id")
_TRUTHS = {truth.value: truth for truth in Truth}
_SOURCES = {source.value: source for source in TruthSource}


def fold_truths(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], Effective]:
    """(study, label) -> the truth that counts, from judgement rows in the order they were made."""
    return fold_truth_rows([tuple(row[name] for name in FOLD_COLUMNS) for row in rows])


def fold_truth_rows(rows: Sequence[tuple[Any, ...]]) -> dict[tuple[str, str], Effective]:
    """fold_truths over plain tuples in FOLD_COLUMNS order (a model's whole feedback table: no dicts built)."""
    latest: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    for row in rows:
        latest[(row[0], row[1], row[3])] = row
    radiologist = TruthSource.RADIOLOGIST.value
    folded: dict[tuple[str, str], Effective] = {}
    for (study, label, source), row in latest.items():
        if source != radiologist and (study, label, radiologist) in latest:
            continue  # an explicit judgement outranks a derived one, whatever their order
        truth = _TRUTHS.get(row[2]) or Truth(row[2])  # Truth() raises on a value the enum does not know
        folded[(study, label)] = Effective(truth, _SOURCES.get(source) or TruthSource(source), row[4] or "",
                                           row[5] or "", row[6], row[7])
    return folded


def describe(effective: Effective) -> str:
    """One line for lists and logs: "present (radiologist jdoe)"."""
    return f"{effective.truth} ({effective.source} {effective.by})".rstrip() + (
        f": {effective.comment}" if effective.comment else "")


__all__ = ["ASSESSMENT", "Effective", "FeedbackError", "FeedbackStore", "InboundReport", "ResultRef", "describe",
           "fold_truth_rows", "fold_truths"]
