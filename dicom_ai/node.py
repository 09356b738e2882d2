"""The running node: the SCP receives, and the scheduler is the clock that drives every other stage.

Jobs (apscheduler, each never overlapping itself):
- assemble: every `tick` seconds, studies quiet for `stable_after` become complete, and so do those
  whose matching rule's `complete` expectation is met (Pipeline.complete_expected); it also books
  itself for the moment the next receiving study will have been quiet that long, so a study is
  complete stable_after seconds after its last instance, not up to a tick later;
- pipeline: processes complete studies one at a time (woken at once by assemble); a study it could
  not finish because the database or disk failed is queued again after a backoff (release_deferred);
  a study waiting for a rule's time window is queued again when it opens (release_waiting);
- outbox: delivers results and flags, retrying with backoff (woken at once by the pipeline); given-up
  sends are probed once per send_retry_max and resume when their destination answers again;
- rules: reloads rules/*.yaml when a file changes (a bad edit keeps the previous rules);
- retention: hourly, with retention_days set, deletes the files of studies finished that long ago;
- drift: every drift_interval seconds, each model with a reference in its card is checked week by
  week (scores and input properties, PSI and KS); a flag is logged and shown by `dicom-ai status`;
- reports: with hl7_listen set, every few seconds, final reports kept for studies that had not
  arrived (or been processed) are matched again (validation.match_pending_reports).

With hl7_listen set, an MLLP listener (feedback/listener.py, a thread of its own) takes final
reports and answers each with an ACK (validation.receive_report).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime, timedelta
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from dicom_ai import validation
from dicom_ai.config import Settings
from dicom_ai.domain import ReportRule
from dicom_ai.feedback.listener import Hl7Listener
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.pipeline import Pipeline
from dicom_ai.receive.limits import ConnectionLimits
from dicom_ai.receive.scp import start_scp
from dicom_ai.receive.server import GuardedServer
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.send.outbox import Outbox
from dicom_ai.store import Spool, Stores
from dicom_ai.store.recovery import recover_after_stop
from dicom_ai.store.retention import purge_expired
from dicom_ai.web.node_console import start_node_console
from dicom_ai.web.server import WebServer

log = logging.getLogger(__name__)

ASSEMBLE_DUE = "assemble-due"  # the one-shot assemble run booked for when the next study turns quiet
RETENTION_INTERVAL = 3600.0  # seconds between retention runs (when retention_days is set)
RETENTION_FIRST_RUN = 60.0  # seconds after start: let the node settle first
DUE_SLACK = 0.01  # seconds after the due moment, so `last_received_at <= now - stable_after` holds
REPORT_MATCH_INTERVAL = 2.0  # seconds between attempts to match kept reports to studies


class Node:
    """Owns the stores, the SCP and the scheduler; `start()` then `stop()`."""

    def __init__(self, settings: Settings, tick: float = 0.5) -> None:
        self.settings = settings
        self.tick = tick
        self.stores = Stores.open(settings.database_path)
        self.spool = Spool(settings.spool_dir)
        self.models = ModelRegistry(settings.models_dir, fast_path=settings.onnx_fast_path)
        for folder, problem in self.models.problems().items():
            log.error("model folder %s is unusable and will be skipped: %s", folder, problem)
        self.rules = RuleWatcher(settings.rules_dir, known_models=self.models.names())
        self.pipeline = Pipeline(self.stores.studies, self.spool, self.rules, self.models, settings)
        self.outbox = Outbox(self.stores.outbox, settings)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._server: GuardedServer | None = None
        self._web: WebServer | None = None
        self._hl7: Hl7Listener | None = None

    def report_rules(self) -> dict[str, list[ReportRule]]:
        """Model -> the report_terms of its labels, from the cards read at start."""
        return {name: card.report_rules for name, card in self.models.cards().items()}

    def start(self) -> None:
        recover_after_stop(self.stores, self.spool)
        for name in self.models.names():  # load now: the first study should not wait for it (Ray: the card side)
            try:
                self.pipeline.inference.front(name)
            except Exception as exc:
                log.error("model %s cannot be loaded; studies routed to it will fail: %s", name, exc)
        if self.settings.pacs is None and self.settings.stow_url is None:
            log.warning("no PACS (DICOM_AI_PACS) nor DICOMweb server (DICOM_AI_STOW_URL) configured: results are "
                        "kept in %s but not sent", self.spool.results)
        self.scheduler.add_job(self._assemble, "interval", seconds=self.tick, id="assemble")
        self.scheduler.add_job(self._process, "interval", seconds=max(self.tick * 4, 1.0), id="pipeline")
        self.scheduler.add_job(self._deliver, "interval", seconds=max(self.tick * 4, 1.0), id="outbox")
        self.scheduler.add_job(self.rules.refresh, "interval", seconds=2, id="rules")
        self.scheduler.add_job(self._check_drift, "interval", seconds=self.settings.drift_interval, id="drift")
        if self.settings.hl7_listen:
            self.scheduler.add_job(self._match_reports, "interval", seconds=REPORT_MATCH_INTERVAL, id="reports")
        if self.settings.retention_days is not None:
            first = datetime.now(self.scheduler.timezone) + timedelta(seconds=RETENTION_FIRST_RUN)
            self.scheduler.add_job(self._purge, "interval", seconds=RETENTION_INTERVAL, next_run_time=first,
                                   id="retention")
        # Last before the clock starts: model loading above is time in which nothing could arrive either.
        waiting = self.stores.studies.restart_quiet_clocks()
        if waiting:
            log.warning("%d study(ies) were still receiving when the node stopped: each waits stable_after again "
                        "for the rest of its instances", len(waiting))
        self.scheduler.start()
        s = self.settings
        try:
            self._server = start_scp(s.ae, s.host, s.port, s.max_pdu, self.spool, self.stores.studies, s.allowed_calling_aets,
                                     s.scp_tls(), limits=ConnectionLimits.from_settings(s),
                                     trusted_aets=[s.pacs.aet] if s.pacs else [],
                                     known_hosts=[s.pacs.host] if s.pacs else [])
        except OSError as exc:
            raise OSError(f"DICOM port {s.host}:{s.port}: {exc.strerror or exc}") from exc
        if s.http_port:
            self._web = start_node_console(s, self.stores, self.spool, self.models, self.rules)
        self._hl7 = validation.start_report_listener(self.stores, s, self.report_rules)
        log.info(
            "dicom-ai ready: AE %s on %s:%d, %d rule(s), models %s, stable after %.1f s, results to %s",
            s.ae, s.host, s.port, len(self.rules.ruleset.rules), ", ".join(self.models.names()) or "none",
            s.stable_after, " and ".join(str(to) for to in (s.pacs, s.stow_url) if to) or "nowhere",
        )

    def stop(self) -> None:
        if self._hl7 is not None:
            self._hl7.stop()
            self._hl7 = None
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._web is not None:
            self._web.stop()
            self._web = None
        self.scheduler.shutdown(wait=True)
        self.stores.close()
        log.info("dicom-ai stopped")

    def _wake(self, job_id: str) -> None:
        job = self.scheduler.get_job(job_id)
        if job is not None:
            job.modify(next_run_time=datetime.now(self.scheduler.timezone))

    def _assemble(self) -> None:
        completed = self.stores.studies.complete_quiet_studies(time.time() - self.settings.stable_after)
        for uid in completed:
            log.info("study %s complete (quiet for %.1f s)", uid, self.settings.stable_after)
        completed += self.pipeline.complete_expected()
        if completed:
            self._wake("pipeline")
        last = self.stores.studies.earliest_receiving_activity()
        if last is not None and self.scheduler.running:
            due = datetime.fromtimestamp(last + self.settings.stable_after + DUE_SLACK, self.scheduler.timezone)
            self.scheduler.add_job(self._assemble, "date", run_date=due, id=ASSEMBLE_DUE, replace_existing=True)

    def _purge(self) -> None:
        if self.settings.retention_days is not None:
            purge_expired(self.stores.studies, self.spool, self.settings.retention_days)

    def _check_drift(self) -> None:
        validation.check_recent_drift(self.stores, self.settings, self.models.cards(), time.time())

    def _match_reports(self) -> None:
        validation.match_pending_reports(self.stores, self.settings, self.report_rules())

    def _process(self) -> None:
        self.pipeline.release_deferred()
        for uid in self.stores.studies.release_waiting():
            log.info("study %s: a time window it waited for is open; it is queued again", uid)
        processed = 0
        while self.pipeline.process_next() is not None:
            processed += 1
            self._deliver()
        if processed:
            self._wake("outbox")

    def _deliver(self) -> None:
        self.outbox.deliver_due()

    def run_until_signalled(self) -> None:
        """Serve until SIGINT/SIGTERM; an acknowledged instance is already durable, so stopping is safe."""
        stop = threading.Event()

        def _handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()
