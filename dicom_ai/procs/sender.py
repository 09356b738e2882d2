"""The sending process: delivers the outbox (the only process that does) and runs retention.

The outbox keys each send by SOP Instance UID and destination, so a study processed twice (its worker
died) queues the same sends, not new ones; one process delivering means no cross-process claim on sends.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from dicom_ai.config import Settings
from dicom_ai.send.outbox import Outbox
from dicom_ai.store import Spool, Stores
from dicom_ai.store.retention import purge_expired

log = logging.getLogger(__name__)

POLL_S = 0.05  # seconds between two looks at the outbox (a read while nothing is due)
RETENTION_INTERVAL = 3600.0  # seconds between retention runs (when retention_days is set)
RETENTION_FIRST_RUN = 60.0  # seconds after start: let the node settle first


class Sender:
    """Outbox delivery and retention on a scheduler; `start()` then `stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stores = Stores.open(settings.database_path)
        self.spool = Spool(settings.spool_dir)
        self.outbox = Outbox(self.stores.outbox, settings)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def start(self) -> None:
        self.scheduler.add_job(self.outbox.deliver_due, "interval", seconds=POLL_S, id="outbox")
        if self.settings.retention_days is not None:
            first = datetime.now(self.scheduler.timezone) + timedelta(seconds=RETENTION_FIRST_RUN)
            self.scheduler.add_job(self._purge, "interval", seconds=RETENTION_INTERVAL, next_run_time=first,
                                   id="retention")
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)
        self.stores.close()

    def _purge(self) -> None:
        if self.settings.retention_days is not None:
            purge_expired(self.stores.studies, self.spool, self.settings.retention_days)
