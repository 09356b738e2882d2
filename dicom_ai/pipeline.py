"""The one place where the stages meet: a complete study goes route -> infer -> encode -> outbox.

Each study is processed by a compare-and-set claim (complete -> processing) and finished in one
transaction that records findings, result files and the sends to do. Result UIDs are derived
from the inputs and the model version, so re-processing (after a crash or a late instance) writes
the same objects again instead of new ones.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom import Dataset

from dicom_ai.assemble.study import StudyReadError, build_study, read_header
from dicom_ai.domain import (
    Finding,
    ImageResult,
    Instance,
    ModelInfo,
    PriorFinding,
    PriorityDecision,
    Series,
    Study,
    StudyState,
)
from dicom_ai.crashpoints import crash_point
from dicom_ai.encode import encode_results
from dicom_ai.errors import one_line, out_of_resources
from dicom_ai.prioritize.history import apply_history
from dicom_ai.prioritize.pacs_history import PacsHistoryError, comparison_reasons, prior_studies
from dicom_ai.prioritize.policy import combine, decide_priority
from dicom_ai.prioritize.publish import publications, with_override
from dicom_ai.route.matcher import route
from dicom_ai.send.outbox import DICOM
from dicom_ai.store.database import CurrentResult, ResultFile

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.infer.registry import ModelRegistry
    from dicom_ai.infer.runner import LoadedModel
    from dicom_ai.route.loader import RuleWatcher
    from dicom_ai.route.rules import PriorityPolicy
    from dicom_ai.store import Spool, Store

log = logging.getLogger(__name__)


DEFER_INITIAL_S = 5.0  # first wait before a study that could not be finished is queued again
DEFER_MAX_S = 600.0
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


class PipelineError(Exception):
    """A study could not be processed; the message is kept on the study for the admin."""


@dataclass(frozen=True)
class Deferral:
    """A study the pipeline could not finish (the database or disk failed): when to queue it again."""

    due: float
    attempts: int
    reason: str


def predecessor(result: CurrentResult) -> Dataset:
    """The identity of an earlier SR the PACS holds, for the Predecessor Documents Sequence of its successor."""
    reference = Dataset()
    reference.SOPClassUID = COMPREHENSIVE_3D_SR
    reference.SOPInstanceUID = result.sop_instance_uid
    reference.SeriesInstanceUID = result.series_instance_uid
    reference.StudyInstanceUID = result.study_instance_uid
    return reference


@dataclass
class _ModelJob:
    """The series one model will see for a study, and the policy of the first rule that asked for it."""

    rule: str
    policy: PriorityPolicy | None
    series: list[Series] = field(default_factory=list)


@dataclass
class Pipeline:
    store: Store
    spool: Spool
    rules: RuleWatcher
    models: ModelRegistry
    settings: Settings

    deferred: dict[str, Deferral] = field(default_factory=dict)

    def process_next(self) -> str | None:
        """Claim and process the oldest complete study; returns its UID, or None when idle."""
        study_uid = self.store.claim_complete_study()
        if study_uid is None:
            return None
        started = time.monotonic()
        try:
            self._process(study_uid)
        except (PipelineError, StudyReadError) as exc:
            log.error("study %s failed: %s", study_uid, one_line(exc))
            self._fail(study_uid, one_line(exc))
        except Exception as exc:  # a bug must not leave the study stuck in processing
            if out_of_resources(exc):
                self._defer(study_uid, f"out of resources: {one_line(exc)}")
            else:
                log.exception("study %s failed unexpectedly", study_uid)
                self._fail(study_uid, f"internal error: {one_line(exc)} (the log has the traceback)")
        log.debug("study %s processed in %.2f s", study_uid, time.monotonic() - started)
        return study_uid

    def _fail(self, study_uid: str, reason: str) -> None:
        try:
            self.store.finish_without_results(study_uid, StudyState.FAILED, reason)
        except (sqlite3.Error, OSError) as exc:  # the database itself fails (disk full): try again later
            self._defer(study_uid, f"{reason}; recording that failed too: {one_line(exc)}")

    def _defer(self, study_uid: str, reason: str) -> None:
        """Leave the study to `release_deferred`, which queues it again once the database takes writes."""
        earlier = self.deferred.get(study_uid)
        attempts = earlier.attempts + 1 if earlier else 1
        delay = min(DEFER_INITIAL_S * 2 ** (attempts - 1), DEFER_MAX_S)
        self.deferred[study_uid] = Deferral(time.time() + delay, attempts, reason)
        log.error("study %s cannot be finished now (%s); it is queued again in %.0f s", study_uid, reason, delay)

    def release_deferred(self, now: float | None = None) -> list[str]:
        """Queue deferred studies again (processing -> complete) once their wait is over."""
        now = time.time() if now is None else now
        released = []
        for study_uid, deferral in list(self.deferred.items()):
            if deferral.due > now:
                continue
            try:
                self.store.release_processing(study_uid, deferral.reason)
            except (sqlite3.Error, OSError) as exc:
                self._defer(study_uid, f"{deferral.reason}; queueing it again failed: {one_line(exc)}")
                continue
            del self.deferred[study_uid]
            released.append(study_uid)
            log.warning("study %s queued again after: %s", study_uid, deferral.reason)
        return released

    def _jobs(self, study: Study) -> tuple[dict[str, _ModelJob], list[str]]:
        study_uid = study.study_instance_uid
        jobs: dict[str, _ModelJob] = {}
        rule_names: list[str] = []
        for decision in route(study, self.rules.ruleset):
            rule_names.append(decision.rule.name)
            for model_name in decision.models:
                job = jobs.setdefault(model_name, _ModelJob(rule=decision.rule.name, policy=decision.priority))
                job.series.extend(s for s in decision.series if s not in job.series)
        if not jobs:
            modalities = sorted({str(s.header.get("Modality", "?")) for s in study.series})
            self._no_results(study_uid, f"no rule matched ({len(study.series)} series: {', '.join(modalities)})")
        return jobs, rule_names

    def _with_pacs_history(
        self, study: Study, priority: PriorityDecision, priors: list[PriorFinding]
    ) -> PriorityDecision:
        """Add the PACS's prior studies that no AI analysed as a reason to compare (best effort)."""
        patient_id = str(study.header.get("PatientID", "") or "")
        if self.settings.pacs is None or not patient_id:
            return priority
        try:
            found = prior_studies(self.settings.ae, self.settings.pacs, patient_id, study.study_instance_uid,
                                  tls=self.settings.client_tls(self.settings.pacs.host))
        except (PacsHistoryError, OSError, ValueError) as exc:
            log.warning("study %s: no prior studies from the PACS (%s); priority from our own history only",
                        study.study_instance_uid, exc)
            return priority
        reasons = comparison_reasons(found, analysed={p.study_instance_uid for p in priors})
        return PriorityDecision(priority.level, priority.score, priority.reasons + reasons)

    @staticmethod
    def _selected(model: LoadedModel, model_name: str, accepted: list[Series], skipped: list[str]) -> list[Instance]:
        """The images of the accepted series that the card's selection takes (e.g. only CC and MLO views)."""
        chosen: list[Instance] = []
        for series in accepted:
            for instance in series.instances:
                ok, why = model.selects(read_header(instance.path)) if model.card.select else (True, "")
                if ok:
                    chosen.append(instance)
                else:
                    skipped.append(f"{model_name} left out image {instance.sop_instance_uid}: {why}")
        return chosen

    def _no_results(self, study_uid: str, reason: str) -> None:
        log.info("study %s: %s; stored without results", study_uid, reason)
        self.store.finish_without_results(study_uid, StudyState.NO_MATCH, reason)

    def _process(self, study_uid: str) -> None:
        instances = self.store.instances_of(study_uid)
        if not instances:  # every instance moved to other studies (see Store.record_instance)
            self._no_results(study_uid, "no instances left: they were moved to other studies")
            return
        study = build_study(instances)
        revision = self.store.study_revision(study_uid)
        jobs, rule_names = self._jobs(study)
        if not jobs:
            return
        results: list[ResultFile] = []
        findings: list[tuple[str, str, str, Finding]] = []
        decisions: list[PriorityDecision] = []
        infos: list[ModelInfo] = []
        all_findings: list[Finding] = []
        skipped: list[str] = []
        supersede: dict[str, str] = {}
        priors = self.store.prior_findings(study_uid)
        for model_name, job in jobs.items():
            try:
                model = self.models.get(model_name)
            except Exception as exc:
                raise PipelineError(f"rule {job.rule}: model {model_name} cannot be loaded: {exc}") from exc
            accepted: list[Series] = []
            for series in job.series:
                ok, why = model.accepts(series.header)
                if ok:
                    ok, why = model.accepts_count(len(series.instances))
                if ok:
                    accepted.append(series)
                else:
                    skipped.append(f"{model_name} refused series {series.series_instance_uid}: {why}")
            instances = self._selected(model, model_name, accepted, skipped)
            if not instances:
                continue
            started = time.monotonic()
            try:
                image_results: list[ImageResult] = model.predict(instances, heatmaps=self.settings.heatmaps)
            except Exception as exc:
                raise PipelineError(f"model {model_name} failed on the study: {exc}") from exc
            info = model.info
            model_findings = [f for r in image_results for f in r.findings]
            decision = apply_history(decide_priority(model_findings, job.policy), model_findings, priors)
            sources = {i.sop_instance_uid: read_header(i.path) for i in instances}
            earlier = self.store.current_results(study_uid, info.name)
            encoded = encode_results(image_results, sources, info, decision, revision=revision,
                                     predecessors=[predecessor(r) for r in earlier if r.kind == "SR" and r.sent],
                                     parametric_maps="pm" in self.settings.heatmap_objects)
            new_uids = set()
            for kind, dataset in encoded.objects():
                path = self.spool.result_path(study_uid, str(dataset.SOPInstanceUID))
                self.spool.write_dataset(dataset, path)
                crash_point("pipeline.mid_result_write")
                new_uids.add(str(dataset.SOPInstanceUID))
                results.append(
                    ResultFile(str(dataset.SOPInstanceUID), str(dataset.SeriesInstanceUID), kind, info.name,
                               info.version, path)
                )
            supersede.update({r.sop_instance_uid: str(encoded.sr.SOPInstanceUID) for r in earlier
                              if r.sop_instance_uid not in new_uids})
            findings += [(r.source.sop_instance_uid, info.name, info.version, f) for r in image_results
                         for f in r.findings]
            all_findings += model_findings
            decisions.append(decision)
            infos.append(info)
            log.info(
                "study %s: rule %s -> %s %s on %d image(s) in %.2f s: %s (%s)",
                study_uid, job.rule, info.name, info.version, len(image_results), time.monotonic() - started,
                decision.level.name, "; ".join(decision.reasons),
            )
        for reason in skipped:
            log.info("study %s: %s", study_uid, reason)
        if not infos:
            self._no_results(study_uid, "; ".join(skipped) or "no series for any model")
            return
        priority = self._with_pacs_history(study, combine(decisions), priors)
        outbox: list[tuple[str, str, str, str]] = []
        if self.settings.pacs is not None:
            outbox += [(DICOM, r.sop_instance_uid, str(self.settings.pacs), str(r.path)) for r in results]
        published = with_override(priority, self.store.priority_override(study_uid))
        carried, skipped_carriers = publications(study, published, all_findings, infos, self.settings)
        outbox += carried
        self.store.save_outcome(
            study_uid,
            rules=rule_names,
            models=[f"{i.name}@{i.version}" for i in infos],
            findings=findings,
            results=results,
            priority=priority,
            outbox=outbox,
            skipped=skipped_carriers,
            supersede=supersede,
            revision=revision,
        )
        crash_point("pipeline.after_save_outcome")
        if supersede:
            log.info("study %s: %d earlier result object(s) superseded by this run (the study changed since)",
                     study_uid, len(supersede))
