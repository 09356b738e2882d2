"""The one place where the stages meet: a complete study goes route -> infer -> encode -> outbox.

Each study is processed by a compare-and-set claim (complete -> processing) and finished in one
transaction that records findings, result files and the sends to do. Result UIDs are derived
from the inputs and the model version, so re-processing (after a crash or a late instance) writes
the same objects again instead of new ones.

The steps: `_route` says which models see which series; `_run_model` runs one model and encodes
its results into a `ModelOutcome`; `_finish` combines the outcomes into the study's priority and
its publications and records everything at once. A radiologist's override goes through
`apply_override`, which decides and publishes the same way.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from pydicom import Dataset

from dicom_ai.assemble.study import StudyReadError, build_study, read_header
from dicom_ai.crashpoints import crash_point
from dicom_ai.domain import (
    FindingRow,
    ImageProperties,
    ImageResult,
    Instance,
    ModelInfo,
    Override,
    PriorFinding,
    Priority,
    PriorityDecision,
    ResultFile,
    Series,
    Study,
    StudyState,
)
from dicom_ai.encode import encode_results
from dicom_ai.errors import one_line, out_of_resources
from dicom_ai.infer.executor import ExecutorLost, InferenceExecutor, make_executor
from dicom_ai.infer.properties import image_properties
from dicom_ai.prioritize.history import apply_history
from dicom_ai.prioritize.override import with_override
from dicom_ai.prioritize.pacs_history import PacsHistoryError, comparison_reasons, prior_studies
from dicom_ai.prioritize.policy import combine, decide_priority
from dicom_ai.route.completion import completion_due, needs_completion_check
from dicom_ai.route.matcher import route
from dicom_ai.route.windows import plan_windows
from dicom_ai.send.carriers import Publication, dicom, stow
from dicom_ai.send.publish import priority_change, publications
from dicom_ai.store.model_switches import disabled_models

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.infer.registry import ModelRegistry
    from dicom_ai.infer.runner import ModelFront
    from dicom_ai.route.loader import RuleWatcher
    from dicom_ai.route.rules import PriorityPolicy, TimeWindow
    from dicom_ai.store import Spool, Stores, StudyStore
    from dicom_ai.store.studies import CurrentResult

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


@dataclass
class _ModelJob:
    """The series one model will see for a study, and the policy of the first rule that asked for it
    (the first non-shadow one: a model that any non-shadow rule names is not shadow)."""

    rule: str
    policy: PriorityPolicy | None
    shadow: bool
    series: list[Series] = field(default_factory=list)
    windows: list[TimeWindow | None] = field(default_factory=list)  # of every rule naming the model


@dataclass(frozen=True, eq=False)
class ModelOutcome:
    """What one model made of a study: its priority, findings, and the result files written."""

    model: ModelInfo
    rule: str
    decision: PriorityDecision
    images: tuple[ImageResult, ...]
    findings: tuple[FindingRow, ...]
    results: tuple[ResultFile, ...]
    supersede: Mapping[str, str]  # earlier result UID -> the SR that replaces it
    properties: tuple[ImageProperties, ...] = ()  # what the model saw of each analysed image (drift, subgroups)
    shadow: bool = False  # recorded only: nothing sent, no part in the published priority


class Headers:
    """Each instance's header read once per run (routing, image selection and encoding all need them)."""

    def __init__(self) -> None:
        self._read: dict[str, Dataset] = {}

    def of(self, instance: Instance) -> Dataset:
        if instance.sop_instance_uid not in self._read:
            self._read[instance.sop_instance_uid] = read_header(instance.path)
        return self._read[instance.sop_instance_uid]


def predecessor(result: CurrentResult) -> Dataset:
    """The identity of an earlier SR the PACS holds, for the Predecessor Documents Sequence of its successor."""
    reference = Dataset()
    reference.SOPClassUID = COMPREHENSIVE_3D_SR
    reference.SOPInstanceUID = result.sop_instance_uid
    reference.SeriesInstanceUID = result.series_instance_uid
    reference.StudyInstanceUID = result.study_instance_uid
    return reference


@dataclass
class ExpectedCompletion:
    """Completes receiving studies whose matching rule's `complete` expectation is met, before their quiet
    time. Needs no model: the receiver process runs it (dicom_ai/procs/), the one-process node through
    Pipeline.complete_expected."""

    studies: StudyStore
    rules: RuleWatcher
    clock: Callable[[], float] = time.time
    _receiving: dict[str, tuple[tuple[int, int], Study]] = field(default_factory=dict)  # headers of receiving studies

    def __call__(self, now: float | None = None) -> list[str]:
        """Complete the receiving studies whose matching rule's `complete` expectation is met (see
        route/completion.py). Headers are read once per series, and again only when instances come."""
        now = self.clock() if now is None else now
        ruleset = self.rules.ruleset
        if not needs_completion_check(ruleset):
            self._receiving.clear()
            return []
        completed = []
        receiving = self.studies.receiving_studies()
        for item in receiving:
            uid = item.study_instance_uid
            key = (item.instance_count, item.revision)
            cached = self._receiving.get(uid)
            if cached is None or cached[0] != key:
                instances = self.studies.instances_of(uid)
                if not instances:
                    continue
                try:
                    cached = (key, build_study(instances))
                except StudyReadError as exc:  # quiet time will complete it; the pipeline then reports the file
                    log.debug("study %s: no early completion: %s", uid, exc)
                    continue
                self._receiving[uid] = cached
            reason = completion_due(cached[1], ruleset, item.first_received_at, now,
                                    self.studies.series_last_received(uid))
            if reason is not None and self.studies.complete_study(uid, reason):
                log.info("study %s complete before its quiet time: %s", uid, reason)
                completed.append(uid)
        for uid in set(self._receiving) - {item.study_instance_uid for item in receiving} | set(completed):
            self._receiving.pop(uid, None)
        return completed


@dataclass
class Pipeline:
    studies: StudyStore
    spool: Spool
    rules: RuleWatcher
    models: ModelRegistry
    settings: Settings
    executor: InferenceExecutor | None = None  # None: the one the settings name (local or Ray)

    deferred: dict[str, Deferral] = field(default_factory=dict)
    claimant: str | None = None  # this worker process's id, kept on the studies it claims (dicom_ai/procs/)
    clock: Callable[[], float] = time.time  # the time windows of rules are read on it (tests move it)
    _completion: ExpectedCompletion | None = field(default=None, repr=False)

    def complete_expected(self, now: float | None = None) -> list[str]:
        """Complete the receiving studies whose matching rule's `complete` expectation is met (ExpectedCompletion)."""
        if self._completion is None:
            self._completion = ExpectedCompletion(self.studies, self.rules)
        return self._completion(self.clock() if now is None else now)

    def __post_init__(self) -> None:
        if self.executor is None:
            self.executor = make_executor(self.settings, self.models)

    @property
    def inference(self) -> InferenceExecutor:
        assert self.executor is not None  # __post_init__ sets it
        return self.executor

    def process_next(self) -> str | None:
        """Claim and process the oldest complete study; returns its UID, or None when idle."""
        study_uid = self.studies.claim_complete_study(self.claimant)
        if study_uid is None:
            return None
        started = time.monotonic()
        try:
            self._process(study_uid)
        except ExecutorLost as exc:  # the compute went away, not the study's fault: it goes back to the queue
            self._defer(study_uid, f"inference lost: {one_line(exc)}")
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

    # when a study cannot be finished ---------------------------------------------------------

    def _fail(self, study_uid: str, reason: str) -> None:
        try:
            self.studies.finish_without_results(study_uid, StudyState.FAILED, reason)
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
                self.studies.release_processing(study_uid, deferral.reason)
            except (sqlite3.Error, OSError) as exc:
                self._defer(study_uid, f"{deferral.reason}; queueing it again failed: {one_line(exc)}")
                continue
            del self.deferred[study_uid]
            released.append(study_uid)
            log.warning("study %s queued again after: %s", study_uid, deferral.reason)
        return released

    def _no_results(self, study_uid: str, reason: str) -> None:
        log.info("study %s: %s; stored without results", study_uid, reason)
        self.studies.finish_without_results(study_uid, StudyState.NO_MATCH, reason)

    # the steps -------------------------------------------------------------------------------

    def _process(self, study_uid: str) -> None:
        instances = self.studies.instances_of(study_uid)
        if not instances:  # every instance moved to other studies (see StudyStore.record_instance)
            self._no_results(study_uid, "no instances left: they were moved to other studies")
            return
        headers = Headers()
        study = build_study(instances, read=headers.of)
        jobs, rule_names = self._route(study)
        if not jobs:
            modalities = sorted({str(s.header.get("Modality", "?")) for s in study.series})
            self._no_results(study_uid, f"no rule matched ({len(study.series)} series: {', '.join(modalities)})")
            return
        skipped: list[str] = []
        for name in sorted(disabled_models(self.studies.database) & set(jobs)):
            skipped.append(f"{name} not run: switched off in the console (Models page)")
            del jobs[name]
        if not jobs:
            self._no_results(study_uid, "; ".join(skipped))
            return
        plan = plan_windows({name: job.windows for name, job in jobs.items()}, datetime.fromtimestamp(self.clock()))
        if plan.wait_until is not None:
            until = plan.wait_until.timestamp()
            log.info("study %s waits until %s: the time window of %s is closed", study_uid,
                     plan.wait_until.isoformat(timespec="minutes"), ", ".join(plan.waiting_for))
            self.studies.wait_for_window(study_uid, until, plan.waiting_for)
            return
        for name, why in plan.left_out.items():
            skipped.append(f"{name} not run: {why}")
            del jobs[name]
        revision = self.studies.study_revision(study_uid)
        priors = self.studies.prior_findings(study_uid)
        outcomes = [outcome for name, job in jobs.items()
                    if (outcome := self._run_model(study, name, job, headers, priors, revision, skipped))]
        for reason in skipped:
            log.info("study %s: %s", study_uid, reason)
        if not outcomes:
            self._no_results(study_uid, "; ".join(skipped) or "no series for any model")
            return
        self._finish(study, rule_names, outcomes, priors, revision)

    def _route(self, study: Study) -> tuple[dict[str, _ModelJob], list[str]]:
        """Which model sees which series (a model asked for by several rules runs once, on all of them)."""
        jobs: dict[str, _ModelJob] = {}
        rule_names: list[str] = []
        for decision in route(study, self.rules.ruleset):
            rule_names.append(decision.rule.name)
            for model_name in decision.models:
                job = jobs.setdefault(model_name, _ModelJob(rule=decision.rule.name, policy=decision.priority,
                                                            shadow=decision.shadow))
                if job.shadow and not decision.shadow:
                    job.rule, job.policy, job.shadow = decision.rule.name, decision.priority, False
                job.series.extend(s for s in decision.series if s not in job.series)
                job.windows.append(decision.rule.window)
        return jobs, rule_names

    def _run_model(self, study: Study, model_name: str, job: _ModelJob, headers: Headers,
                   priors: Sequence[PriorFinding], revision: int, skipped: list[str]) -> ModelOutcome | None:
        """One model on the series routed to it: gate, image selection, inference, encoding, files written."""
        study_uid = study.study_instance_uid
        try:
            model = self.inference.front(model_name)
        except Exception as exc:
            raise PipelineError(f"rule {job.rule}: model {model_name} cannot be loaded: {exc}") from exc
        instances = self._selected(model, model_name, self._accepted(model, model_name, job, skipped), headers,
                                   skipped)
        if not instances:
            return None
        started = time.monotonic()
        try:
            images = tuple(self.inference.predict(model_name, instances, self.settings.heatmaps))
        except ExecutorLost:
            raise
        except Exception as exc:
            raise PipelineError(f"model {model_name} failed on the study: {exc}") from exc
        info = model.info
        self.studies.record_model_run(study_uid, info.name, info.version, time.monotonic() - started, len(images))
        findings = [f for image in images for f in image.findings]
        decision = apply_history(decide_priority(findings, job.policy), findings, priors)
        earlier = self.studies.current_results(study_uid, info.name)
        encoded = encode_results(images, {i.sop_instance_uid: headers.of(i) for i in instances}, info, decision,
                                 revision=revision,
                                 predecessors=[predecessor(r) for r in earlier if r.kind == "SR" and r.sent],
                                 parametric_maps="pm" in self.settings.heatmap_objects)
        results = []
        for kind, dataset in encoded.objects():
            path = self.spool.result_path(study_uid, str(dataset.SOPInstanceUID))
            self.spool.write_dataset(dataset, path)
            crash_point("pipeline.mid_result_write")
            results.append(ResultFile(str(dataset.SOPInstanceUID), str(dataset.SeriesInstanceUID), kind, info.name,
                                      info.version, path))
        written = {result.sop_instance_uid for result in results}
        log.info(
            "study %s: rule %s -> %s %s on %d image(s) in %.2f s: %s (%s)",
            study_uid, job.rule, info.name, info.version, len(images), time.monotonic() - started,
            decision.level.name, "; ".join(decision.reasons),
        )
        return ModelOutcome(
            model=info, rule=job.rule, decision=decision, images=images,
            findings=tuple(FindingRow(image.source.sop_instance_uid, info.name, info.version, finding)
                           for image in images for finding in image.findings),
            results=tuple(results),
            supersede={r.sop_instance_uid: str(encoded.sr.SOPInstanceUID) for r in earlier
                       if r.sop_instance_uid not in written},
            properties=tuple(image_properties(headers.of(image.source), image.source.sop_instance_uid, info.name)
                             for image in images),
            shadow=job.shadow,
        )

    @staticmethod
    def _accepted(model: ModelFront, model_name: str, job: _ModelJob, skipped: list[str]) -> list[Series]:
        """The routed series that the model's gate (modality, size...) takes, whatever the rules said."""
        accepted = []
        for series in job.series:
            ok, why = model.accepts(series.header)
            if ok:
                ok, why = model.accepts_count(len(series.instances))
            if ok:
                accepted.append(series)
            else:
                skipped.append(f"{model_name} refused series {series.series_instance_uid}: {why}")
        return accepted

    @staticmethod
    def _selected(model: ModelFront, model_name: str, accepted: list[Series], headers: Headers,
                  skipped: list[str]) -> list[Instance]:
        """The images of the accepted series that the card's selection takes (e.g. only CC and MLO views)."""
        chosen: list[Instance] = []
        for series in accepted:
            for instance in series.instances:
                ok, why = model.selects(headers.of(instance)) if model.card.select else (True, "")
                if ok:
                    chosen.append(instance)
                else:
                    skipped.append(f"{model_name} left out image {instance.sop_instance_uid}: {why}")
        return chosen

    def _finish(self, study: Study, rule_names: Sequence[str], outcomes: Sequence[ModelOutcome],
                priors: Sequence[PriorFinding], revision: int) -> None:
        """The study's priority from all its models, its publications, and one transaction for all of it."""
        study_uid = study.study_instance_uid
        live = [outcome for outcome in outcomes if not outcome.shadow]
        if live:
            priority = self._with_pacs_history(study, combine([o.decision for o in live]), priors)
            published = with_override(priority, self.studies.priority_override(study_uid))
            publication = Publication(study_uid, study.header, published,
                                      tuple(finding for o in live for image in o.images for finding in image.findings),
                                      tuple(o.model for o in live))
            carried, skipped_carriers = publications(publication, self.settings)
        else:  # only shadow models ran: nothing is published
            priority = PriorityDecision(Priority.ROUTINE, 0.0, ("only shadow models ran: nothing published",))
            carried, skipped_carriers = [], []
        live_results = [result for outcome in live for result in outcome.results]
        supersede = {old: new for outcome in outcomes for old, new in outcome.supersede.items()}
        self.studies.save_outcome(
            study_uid,
            rules=rule_names,
            models=[f"{o.model.name}@{o.model.version}{' (shadow)' if o.shadow else ''}" for o in outcomes],
            findings=[row for outcome in outcomes for row in outcome.findings],
            results=[result for outcome in outcomes for result in outcome.results],
            priority=priority,
            outbox=[*dicom.build_results(live_results, self.settings),
                    *stow.build_results(live_results, self.settings), *carried],
            skipped=skipped_carriers,
            supersede=supersede,
            revision=revision,
            images=[image for outcome in outcomes for image in outcome.properties],
            shadow_models=[o.model.name for o in outcomes if o.shadow],
        )
        crash_point("pipeline.after_save_outcome")
        if supersede:
            log.info("study %s: %d earlier result object(s) superseded by this run (the study changed since)",
                     study_uid, len(supersede))

    def _with_pacs_history(self, study: Study, priority: PriorityDecision,
                           priors: Sequence[PriorFinding]) -> PriorityDecision:
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


def apply_override(stores: Stores, settings: Settings, study_uid: str, override: Override) -> bool:
    """A radiologist sets (or, with level None, removes) a study's priority: decided like the pipeline's
    (the override outranks the AI's level), recorded with its audit event, and its carriers queued in the
    same transaction. False when the node has no such study."""
    ai = stores.studies.ai_priority(study_uid)
    if ai is None:
        return False
    published = with_override(ai, override)
    previous = stores.outbox.latest_payloads(study_uid)
    return stores.studies.set_priority_override(study_uid, override,
                                                priority_change(study_uid, published, previous, settings))
