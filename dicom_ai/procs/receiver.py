"""The receiving process: the SCP, the web console (with STOW-RS) and assembly, and nothing that imports torch.

Keeping the models out of this process keeps it small (its RSS does not grow with them) and keeps the
SCP's threads from waiting for the interpreter lock behind a model, so receive runs at the same pace
while studies are processed. Assembly lives here because it only reads the receive timestamps and the
rules: studies quiet for stable_after, and those whose rule's `complete` expectation is met
(ExpectedCompletion, headers only: no model, no executor), become complete; studies waiting for a rule's time window
are queued again when it opens (release_waiting). The console reads the model cards (never loads a
model) and the rules, which this process reloads as the workers do; /metrics is computed from the
database, so it is the same whichever process serves it.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from dicom_ai.config import Settings
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.pipeline import ExpectedCompletion
from dicom_ai.receive.limits import ConnectionLimits
from dicom_ai.receive.scp import start_scp
from dicom_ai.receive.server import GuardedServer
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Spool, Stores
from dicom_ai.web.node_console import start_node_console
from dicom_ai.web.server import WebServer

log = logging.getLogger(__name__)

ASSEMBLE_DUE = "assemble-due"  # the one-shot assemble run booked for when the next study turns quiet
DUE_SLACK = 0.01  # seconds after the due moment, so `last_received_at <= now - stable_after` holds
RULES_EVERY_S = 2.0  # seconds between two checks of rules/*.yaml for changes (as the workers)
WINDOWS_EVERY_S = 1.0  # seconds between two looks for studies whose time window opened


class Receiver:
    """SCP + web + assembly; `start()` then `stop()`.

    With `receivers` > 1 several receiver processes listen on the DICOM port (SO_REUSEPORT); only the
    primary one also runs the web console, assembly, and the rules it reads.
    """

    def __init__(self, settings: Settings, tick: float = 0.5, primary: bool = True) -> None:
        self.settings = settings
        self.tick = tick
        self.primary = primary
        self.stores = Stores.open(settings.database_path)
        self.spool = Spool(settings.spool_dir)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._server: GuardedServer | None = None
        self._web: WebServer | None = None
        self.models: ModelRegistry | None = None
        self.rules: RuleWatcher | None = None
        self.complete_expected: ExpectedCompletion | None = None
        if primary:  # cards and rules only: the workers load the models
            self.models = ModelRegistry(settings.models_dir, load=False)
            self.rules = RuleWatcher(settings.rules_dir, known_models=self.models.names())
            self.complete_expected = ExpectedCompletion(self.stores.studies, self.rules)

    def start(self) -> None:
        if self.primary:
            assert self.rules is not None
            waiting = self.stores.studies.restart_quiet_clocks()
            if waiting:
                log.warning("%d study(ies) were still receiving when the node stopped: each waits stable_after "
                            "again for the rest of its instances", len(waiting))
            self.scheduler.add_job(self._assemble, "interval", seconds=self.tick, id="assemble")
            self.scheduler.add_job(self._release_waiting, "interval", seconds=WINDOWS_EVERY_S, id="windows")
            self.scheduler.add_job(self.rules.refresh, "interval", seconds=RULES_EVERY_S, id="rules")
            self.scheduler.start()
        s = self.settings
        try:
            self._server = start_scp(s.ae, s.host, s.port, s.max_pdu, self.spool, self.stores.studies,
                                     s.allowed_calling_aets, s.scp_tls(), limits=ConnectionLimits.from_settings(s),
                                     trusted_aets=[s.pacs.aet] if s.pacs else [],
                                     known_hosts=[s.pacs.host] if s.pacs else [], shared_port=s.receivers > 1)
        except OSError as exc:
            raise OSError(f"DICOM port {s.host}:{s.port}: {exc.strerror or exc}") from exc
        if s.http_port and self.primary:
            self._web = start_node_console(s, self.stores, self.spool, self.models, self.rules)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._web is not None:
            self._web.stop()
            self._web = None
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.stores.close()

    def _assemble(self) -> None:
        completed = self.stores.studies.complete_quiet_studies(time.time() - self.settings.stable_after)
        for uid in completed:
            log.info("study %s complete (quiet for %.1f s)", uid, self.settings.stable_after)
        if self.complete_expected is not None:
            self.complete_expected()
        last = self.stores.studies.earliest_receiving_activity()
        if last is not None and self.scheduler.running:
            due = datetime.fromtimestamp(last + self.settings.stable_after + DUE_SLACK, self.scheduler.timezone)
            self.scheduler.add_job(self._assemble, "date", run_date=due, id=ASSEMBLE_DUE, replace_existing=True)

    def _release_waiting(self) -> None:
        for uid in self.stores.studies.release_waiting():
            log.info("study %s: a time window it waited for is open; it is queued again", uid)
