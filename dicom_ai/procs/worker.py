"""A pipeline worker process: holds the models and processes complete studies one at a time.

Its Pipeline builds the executor the settings name (infer/executor.py): `local` runs the models in this
process; `ray` sends the forward passes to Ray actors, this worker keeping only the card side of each
model (every worker joins the same Ray: ray_address, RAY_ADDRESS, or the local one the supervisor
started), with actors of its own (one per model per Ray node).

Several run at once (the `workers` setting); the claim (complete -> processing, one write transaction)
hands each study to exactly one of them, and records the worker's id so that the supervisor can give
a dead worker's studies back to the queue. Idle workers poll with a read (WAL: never blocks the
receiver's commits) every POLL_S seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from dicom_ai.config import Settings
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.pipeline import Pipeline
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Spool, Stores

log = logging.getLogger(__name__)

POLL_S = 0.05  # seconds between two looks for a complete study while idle
RULES_EVERY_S = 2.0  # seconds between two checks of rules/*.yaml for changes


class Worker:
    """Models + pipeline in a loop thread; `start()` loads the models, `stop()` ends after the current study."""

    def __init__(self, settings: Settings, claimant: str, report_problems: bool = True) -> None:
        self.settings = settings
        self.claimant = claimant
        self.stores = Stores.open(settings.database_path)
        self.models = ModelRegistry(settings.models_dir, fast_path=settings.onnx_fast_path)
        if report_problems:  # one worker says it, not every one
            for folder, problem in self.models.problems().items():
                log.error("model folder %s is unusable and will be skipped: %s", folder, problem)
        self.report_problems = report_problems
        self.rules = RuleWatcher(settings.rules_dir, known_models=self.models.names())
        self.pipeline = Pipeline(self.stores.studies, Spool(settings.spool_dir), self.rules, self.models, settings,
                                 claimant=claimant)
        if settings.workers > 1 and settings.executor == "local":  # one torch pool per worker, not one per core each
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.workers))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"worker {claimant}", daemon=True)

    def start(self) -> None:
        for name in self.models.names():  # load now: the first study should not wait for it (Ray: the card side)
            try:
                self.pipeline.inference.front(name)
            except Exception as exc:
                if self.report_problems:
                    log.error("model %s cannot be loaded; studies routed to it will fail: %s", name, exc)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.pipeline.inference.close()  # Ray: this worker's actors go (a killed worker's go with it)
        self.stores.close()

    def _loop(self) -> None:
        rules_checked = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - rules_checked >= RULES_EVERY_S:
                    self.rules.refresh()
                    rules_checked = time.monotonic()
                self.pipeline.release_deferred()
                if self.stores.studies.has_complete_study():
                    while not self._stop.is_set() and self.pipeline.process_next() is not None:
                        pass
                    continue
            except Exception:  # the database is unreachable for a while: keep the worker, try again
                log.exception("worker %s: looking for studies failed", self.claimant)
            self._stop.wait(POLL_S)
