"""Where ground truth meets the stages: judgements recorded, reports matched, assessments sent back.

The CLI (`dicom-ai feedback`), the node's HL7 listener and, later, the console's study page call
these functions, so a judgement takes one path whoever gives it: checked and recorded with its
audit event (store/feedback.py), then the model's assessment SR re-encoded over the truths that
count (encode/assessment.py), written to the spool and queued through the DICOM carrier like any
result. A final report is parsed and matched (feedback/), each model's labels read from it by its
card's report_terms and recorded as derived from the report; a report for a study the node does
not know yet is kept and matched when the study has been processed (match_pending_reports, a node
job).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from dicom_ai.domain import (
    Carrier,
    Code,
    DriftCheck,
    Judgement,
    OutboxEntry,
    Prediction,
    Reference,
    ReportRule,
    ResultFile,
    TruthSource,
)
from dicom_ai.errors import one_line
from dicom_ai.feedback.derive import derive_truths
from dicom_ai.feedback.hl7_report import ACCEPT, ERROR, REJECT, MalformedMessage, ParsedReport, ack, control_id_of, parse_report
from dicom_ai.monitor.drift import weekly_drift
from dicom_ai.monitor.performance import LabelEvaluation, evaluate
from dicom_ai.monitor.seismometer import ExportError, SeismometerExport, export_seismometer
from dicom_ai.store import Spool
from dicom_ai.store.feedback import ASSESSMENT, FeedbackError
from dicom_ai.store.secret import node_secret

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.feedback.listener import Hl7Listener
    from dicom_ai.infer.card import ModelCard
    from dicom_ai.monitor.report import ReportFiles
    from dicom_ai.store import Stores

log = logging.getLogger(__name__)

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
Rules = Mapping[str, Sequence[ReportRule]]  # model name -> its labels' report rules

__all__ = ["Evaluated", "ExportError", "FeedbackError", "export_for_seismometer", "MatchOutcome", "check_drift", "check_recent_drift", "evaluate_model", "evaluate_predictions",
           "report_evaluation", "match_pending_reports", "queue_assessment", "receive_report",
           "record_feedback"]


@dataclass(frozen=True)
class MatchOutcome:
    """Whether a report found its study, and what it said, in words (the ACK's text and the log's)."""

    matched: bool
    text: str


def record_feedback(stores: Stores, settings: Settings, judgement: Judgement) -> str | None:
    """A radiologist's judgement (or one derived from a report): recorded, audited, and the model's
    assessment SR queued for the PACS. Returns the assessment's SOP Instance UID (None when the
    model's SR is not known to the node, e.g. never made). Raises FeedbackError naming an unknown
    study, model or label."""
    stores.feedback.record_judgement(judgement)
    return queue_assessment(stores, settings, judgement.study_instance_uid, judgement.model)


def queue_assessment(stores: Stores, settings: Settings, study_uid: str, model: str) -> str | None:
    """Encode the assessment of the model's current SR over the truths that count, and queue it.

    The same truths give the same SR (deterministic UID): nothing new is queued; changed truths give
    a new SR naming the previous one as its predecessor."""
    # The encoders (highdicom) and the DICOM carrier: only an assessment pays for importing them, not
    # `evaluate` or `export seismometer` (about a second of a command's start).
    from dicom_ai.encode.assessment import LabelAssessment, assessment_reference, build_assessment_sr
    from dicom_ai.encode.uids import derive_uid
    from dicom_ai.send.carriers import dicom

    truths = stores.feedback.effective(study_uid, model)
    ai_sr = stores.feedback.current_sr(study_uid, model)
    if not truths or ai_sr is None:
        log.info("study %s: no assessment for %s (%s)", study_uid, model,
                 "no judgement" if not truths else "the node holds no SR of that model")
        return None
    findings = {row["label"]: row for row in stores.reports.findings_of(study_uid) if row["model"] == model}
    thresholds = {row["label"]: row["threshold"] for row in stores.database.query(
        "select label, max(threshold) as threshold from findings where study_instance_uid = ? and model = ?"
        " group by label", [study_uid, model])}
    assessed = _assessed_header(stores, study_uid, ai_sr.sop_instance_uid, ai_sr.series_instance_uid, ai_sr.path)
    meanings = _code_meanings(assessed)
    assessments = [
        LabelAssessment(label=label, code=Code(findings[label]["code_value"], findings[label]["code_scheme"],
                                               meanings.get((findings[label]["code_scheme"], findings[label]["code_value"]),
                                                            label[:64])),
                        truth=truth.truth, source=truth.source, by=truth.by,
                        ai_present=findings[label]["probability"] >= thresholds[label],
                        ai_probability=float(findings[label]["probability"]), comment=truth.comment)
        for label, truth in sorted(truths.items()) if label in findings
    ]
    previous = stores.feedback.current_sr(study_uid, model, ASSESSMENT)
    sr = build_assessment_sr(
        assessed, assessments, model_name=model, node_device_uid=derive_uid("dicom-ai report reader", settings.ae),
        previous=assessment_reference(previous.sop_instance_uid, previous.series_instance_uid, study_uid)
        if previous is not None and previous.sent else None)
    sop_uid = str(sr.SOPInstanceUID)
    if previous is not None and previous.sop_instance_uid == sop_uid:
        return sop_uid  # the same judgements: the PACS has (or will get) this very SR
    spool = Spool(settings.spool_dir)
    path = spool.result_path(study_uid, sop_uid)
    spool.write_dataset(sr, path)
    version = next(iter({row["model_version"] for row in findings.values()}), "")
    result = ResultFile(sop_uid, str(sr.SeriesInstanceUID), ASSESSMENT, model, version, path)
    # The assessment goes where the assessed SR went (whoever runs this: the node, or a CLI without its PACS setting).
    sends = [OutboxEntry(Carrier.DICOM, sop_uid, destination, str(path))
             for destination in stores.feedback.destinations(ai_sr.sop_instance_uid)] or \
        dicom.build_results([result], settings)
    stores.feedback.save_assessment(study_uid, result, sends, replaces=previous.sop_instance_uid if previous else None)
    if not sends:
        log.warning("study %s: assessment SR %s kept in %s but not sent: no PACS configured (pacs)", study_uid,
                    sop_uid, path)
    log.info("study %s: assessment SR %s of %s queued (%s)", study_uid, sop_uid, model,
             "; ".join(f"{a.label} {a.truth} by {a.source} {a.by}" for a in assessments))
    return sop_uid


def _code_meanings(header: Dataset) -> dict[tuple[str, str], str]:
    """(scheme, value) -> meaning of the codes in the AI SR: the findings table keeps no meanings."""
    meanings: dict[tuple[str, str], str] = {}
    for element in header.iterall():
        if element.keyword == "ConceptCodeSequence":
            for item in element.value:
                if item.get("CodeValue") and item.get("CodeMeaning"):
                    meanings[(str(item.get("CodingSchemeDesignator", "")), str(item.CodeValue))] = str(item.CodeMeaning)
    return meanings


def _assessed_header(stores: Stores, study_uid: str, sop_uid: str, series_uid: str, path: object) -> Dataset:
    """The AI SR's header from the spool; after retention deleted it, its identity and the study's facts."""
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (OSError, InvalidDicomError):
        pass
    row = stores.feedback.study_row(study_uid) or {}
    header = Dataset()
    header.SOPClassUID, header.SOPInstanceUID = COMPREHENSIVE_3D_SR, sop_uid
    header.SeriesInstanceUID, header.StudyInstanceUID = series_uid, study_uid
    header.PatientID, header.PatientName = row.get("patient_id") or "", row.get("patient_name") or ""
    header.PatientBirthDate = header.PatientSex = header.StudyTime = header.ReferringPhysicianName = header.StudyID = ""
    header.StudyDate, header.AccessionNumber = row.get("study_date") or "", row.get("accession_number") or ""
    return header


# --- final reports over HL7 -------------------------------------------------------------------


def receive_report(stores: Stores, settings: Settings, rules: Rules, message: str) -> str:
    """The listener's handler: one ORU^R01 in, its ACK out (AA done, AE kept or refused with the reason,
    AR malformed)."""
    try:
        report = parse_report(message)
    except MalformedMessage as exc:
        log.warning("HL7 report refused (AR): %s", exc)
        return ack(control_id_of(message), REJECT, str(exc))
    if not report.final:
        text = f"result status {report.status or 'empty'} is not final (F or C): nothing derived"
        log.info("HL7 report %s: %s", report.control_id, text)
        return ack(report.control_id, ACCEPT, text)
    if not report.accession_number and not (report.patient_id and report.study_date):
        return ack(report.control_id, ERROR, "no accession number (OBR-3) nor patient ID and date to match a study")
    report_id = stores.feedback.keep_report(report.control_id, report.sender, report.accession_number,
                                            report.patient_id, report.study_date, message)
    outcome = match_report(stores, settings, rules, report_id, report)
    log.info("HL7 report %s (accession %s): %s", report.control_id, report.accession_number or "-", outcome.text)
    return ack(report.control_id, ACCEPT if outcome.matched else ERROR, outcome.text)


def match_report(stores: Stores, settings: Settings, rules: Rules, report_id: int, report: ParsedReport) -> MatchOutcome:
    """Find the report's study and record what it says of each model's findings there (as derived)."""
    studies = stores.feedback.studies_for_report(report.accessions, report.patient_id, report.study_date)
    who = (f"accession {report.accession_number}" if report.accession_number
           else f"patient {report.patient_id} on {report.study_date}")
    if not studies:
        return MatchOutcome(False, f"no study with {who} yet: kept, matched when it arrives")
    if len(studies) > 1 and not any(a for a in report.accessions):
        return MatchOutcome(False, f"{len(studies)} studies of {who}: send the accession number; kept")
    ran = {study: stores.feedback.judged_labels(study) for study in studies}
    if not any(ran.values()):
        return MatchOutcome(False, f"study of {who} has no AI result yet: kept, matched once it is processed")
    said: list[str] = []
    for study, models in ran.items():
        for model, labels in sorted(models.items()):
            model_rules = [rule for rule in rules.get(model, ()) if rule.label in labels]
            derived = derive_truths(report, model_rules)
            for found in derived:
                stores.feedback.record_judgement(Judgement(
                    study, model, found.label, found.truth, TruthSource.REPORT, by=report.sender or "report",
                    comment=found.evidence[:200], report_id=report_id))
                said.append(f"{found.label} {found.truth} ({model})")
            if derived:
                try:
                    queue_assessment(stores, settings, study, model)
                except (OSError, ValueError) as exc:  # the judgements are kept; the SR can be queued again
                    log.error("study %s: assessment SR of %s not queued: %s", study, model, one_line(exc))
    # What was read first: the ACK's text (MSA-3) holds 80 characters, the log the rest.
    text = (", ".join(said) if said else "the report names none of the AI findings") + f"; study {studies[0]}"
    for study in studies:
        stores.feedback.mark_report_matched(report_id, study, text)
    return MatchOutcome(True, text)


def match_pending_reports(stores: Stores, settings: Settings, rules: Rules) -> int:
    """Reports kept for studies that had not arrived (or been processed): matched now if they can be."""
    matched = 0
    for pending in stores.feedback.pending_reports():
        try:
            report = parse_report(pending.message)
        except MalformedMessage:  # it parsed when it was kept; a changed parser must not loop on it
            continue
        outcome = match_report(stores, settings, rules, pending.id, report)
        if outcome.matched:
            matched += 1
            log.info("HL7 report %s kept since %s now matched: %s", pending.control_id, pending.received_at,
                     outcome.text)
    return matched


# --- drift ------------------------------------------------------------------------------------

DRIFT_WINDOW_S = 8 * 7 * 86400.0  # the running node re-checks the last eight weeks


def check_drift(stores: Stores, settings: Settings, references: Mapping[str, Mapping[str, Reference]],
                since: float | None = None) -> list[DriftCheck]:
    """Check each model that has a reference in its card, keep the outcomes (flags become audit events
    and `dicom-ai status` problems), and log what drifted. Returns every check made."""
    checks: list[DriftCheck] = []
    for model, reference in sorted(references.items()):
        if not reference:
            continue
        found = weekly_drift(model, stores.performance.predictions(model, since=since),
                             stores.performance.image_columns(model, since=since), reference,
                             psi_threshold=settings.drift_psi, min_cases=settings.drift_min_cases)
        stores.performance.save_drift(found)
        checks.extend(found)
        for check in found:
            if check.flagged:
                log.warning("model %s drifted in %s: %s PSI %.2f%s over %d case(s) against its card's reference",
                            model, check.week, check.variable, check.psi,
                            f", KS p {check.ks_p:.1g}" if check.ks_p is not None else "", check.cases)
    return checks


def start_report_listener(stores: Stores, settings: Settings, report_rules: Callable[[], Rules]) -> Hl7Listener | None:
    """The HL7 listener for final reports when `hl7_listen` is set (None otherwise); an OSError names the setting."""
    listen = settings.hl7_listen_address
    if listen is None:
        return None
    from dicom_ai.feedback.listener import Hl7Listener  # only the process that listens loads the MLLP server

    listener = Hl7Listener(*listen, lambda text: receive_report(stores, settings, report_rules(), text))
    try:
        listener.start()
    except OSError as exc:
        raise OSError(f"HL7 listener {settings.hl7_listen} (DICOM_AI_HL7_LISTEN): {exc.strerror or exc}") from exc
    return listener


def check_recent_drift(stores: Stores, settings: Settings, cards: Mapping[str, ModelCard], now: float) -> list[DriftCheck]:
    """The running node's periodic check: every model with a reference in its card, over DRIFT_WINDOW_S."""
    references = {name: card.reference.references() for name, card in cards.items() if card.reference is not None}
    return check_drift(stores, settings, references, since=now - DRIFT_WINDOW_S)


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluated:
    """A model's predictions over a period (or a dataset), their evaluation per label, and the drift checks."""

    model: str
    predictions: tuple[Prediction, ...]
    labels: dict[str, LabelEvaluation]
    drift: tuple[DriftCheck, ...]


def evaluate_model(stores: Stores, settings: Settings, model: str, reference: Mapping[str, Reference] | None,
                   since: float | None = None, until: float | None = None) -> Evaluated:
    """The live evaluation the CLI prints and the console's model page shows: predictions processed in
    [since, until), evaluated per label, and each week's drift against the card's reference (if any)."""
    predictions = stores.performance.predictions(model, since=since, until=until)
    drift: list[DriftCheck] = []
    if reference:
        images = stores.performance.image_columns(model, since=since, until=until)
        drift = weekly_drift(model, predictions, images, reference, psi_threshold=settings.drift_psi,
                             min_cases=settings.drift_min_cases)
    return Evaluated(model, tuple(predictions), evaluate(predictions), tuple(drift))


def evaluate_predictions(model: str, predictions: Sequence[Prediction], settings: Settings,
                         reference: Mapping[str, Reference] | None = None) -> Evaluated:
    """The same evaluation for predictions made elsewhere (a labelled dataset run through the model)."""
    drift: list[DriftCheck] = []
    if reference:
        drift = weekly_drift(model, predictions, [], reference, psi_threshold=settings.drift_psi,
                             min_cases=settings.drift_min_cases)
    return Evaluated(model, tuple(predictions), evaluate(predictions), tuple(drift))


def report_evaluation(evaluated: Evaluated, folder: Path, title: str, settings: Settings,
                      notes: Sequence[str] = ()) -> ReportFiles:
    """Write the report folder (PNG figures, index.html, metrics.json) of an evaluation."""
    from dicom_ai.monitor.report import (
        write_report,  # matplotlib: only a report pays for it, not feedback
    )

    return write_report(folder, model=evaluated.model, title=title, predictions=evaluated.predictions,
                        evaluations=evaluated.labels, drift=evaluated.drift, psi_threshold=settings.drift_psi,
                        notes=notes)


def export_for_seismometer(stores: Stores, settings: Settings, model: str, folder: Path,
                           thresholds: Mapping[str, float] | None = None, since: float | None = None,
                           until: float | None = None, primary: str | None = None) -> SeismometerExport:
    """The seismometer folder of a model's judged studies processed in [since, until): pseudonyms keyed by
    the node's secret (home/pseudonym.key), thresholds from the card (else those the predictions used)."""
    predictions = stores.performance.predictions(model, since=since, until=until)
    if not predictions:
        known = ", ".join(stores.performance.models()) or "none"
        raise ExportError(f"no predictions of model {model!r} in the period on this node (models with predictions: "
                          f"{known})")
    used = {p.label: p.threshold for p in predictions}
    return export_seismometer(folder, model, predictions, secret=node_secret(settings.home),
                              thresholds={**used, **(thresholds or {})}, primary=primary)
