"""The sending process: delivers the outbox (the only process that does), runs retention, and takes the
clinical validation loop's inbound side: the HL7 listener (hl7_listen), report matching and drift checks.

The outbox keys each send by SOP Instance UID and destination, so a study processed twice (its worker
died) queues the same sends, not new ones; one process delivering means no cross-process claim on sends.
The validation jobs live here because they need the model cards (report terms, drift references) but
never a loaded model, and they write little: this process has neither torch nor the SCP's threads.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from dicom_ai import validation
from dicom_ai.config import Settings
from dicom_ai.domain import ReportRule
from dicom_ai.feedback.listener import Hl7Listener
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.send.outbox import Outbox
from dicom_ai.store import Spool, Stores
from dicom_ai.store.retention import purge_expired

log = logging.getLogger(__name__)

POLL_S = 0.05  # seconds between two looks at the outbox (a read while nothing is due)
RETENTION_INTERVAL = 3600.0  # seconds between retention runs (when retention_days is set)
RETENTION_FIRST_RUN = 60.0  # seconds after start: let the node settle first
REPORT_MATCH_INTERVAL = 2.0  # seconds between attempts to match kept reports to studies (as node.py)


class Sender:
    """Outbox delivery, retention, the HL7 listener, report matching and drift checks; `start()` then `stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stores = Stores.open(settings.database_path)
        self.spool = Spool(settings.spool_dir)
        self.outbox = Outbox(self.stores.outbox, settings)
        self.models = ModelRegistry(settings.models_dir, load=False)  # cards only: no torch here
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._hl7: Hl7Listener | None = None

    def report_rules(self) -> dict[str, list[ReportRule]]:
        """Model -> the report_terms of its labels, from the cards read at start."""
        return {name: card.report_rules for name, card in self.models.cards().items()}

    def start(self) -> None:
        s = self.settings
        self.scheduler.add_job(self.outbox.deliver_due, "interval", seconds=POLL_S, id="outbox")
        self.scheduler.add_job(self._check_drift, "interval", seconds=s.drift_interval, id="drift")
        if s.hl7_listen:
            self.scheduler.add_job(self._match_reports, "interval", seconds=REPORT_MATCH_INTERVAL, id="reports")
        if s.retention_days is not None:
            first = datetime.now(self.scheduler.timezone) + timedelta(seconds=RETENTION_FIRST_RUN)
            self.scheduler.add_job(self._purge, "interval", seconds=RETENTION_INTERVAL, next_run_time=first,
                                   id="retention")
        self.scheduler.start()
        self._hl7 = validation.start_report_listener(self.stores, s, self.report_rules)

    def stop(self) -> None:
        if self._hl7 is not None:
            self._hl7.stop()
            self._hl7 = None
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.stores.close()

    def _purge(self) -> None:
        if self.settings.retention_days is not None:
            purge_expired(self.stores.studies, self.spool, self.settings.retention_days)

    def _check_drift(self) -> None:
        validation.check_recent_drift(self.stores, self.settings, self.models.cards(), time.time())

    def _match_reports(self) -> None:
        validation.match_pending_reports(self.stores, self.settings, self.report_rules())
