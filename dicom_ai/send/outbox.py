"""Deliver what the outbox holds through each item's carrier, retrying failures with exponential backoff.

Results reach the outbox in the same transaction that marks their study done, so a crash never
loses a send; each item is marked sent as soon as its destination acknowledged it, so a crash
repeats at most that one item, with the same SOP Instance UID, which a PACS stores once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from dicom_ai.config import Settings
from dicom_ai.crashpoints import crash_point
from dicom_ai.domain import Carrier, OutboxItem
from dicom_ai.send.carriers import CARRIERS, RESULT_CARRIERS, DeliveryContext
from dicom_ai.send.carriers.orthanc_metadata import OrthancFlags
from dicom_ai.send.errors import DeliveryError
from dicom_ai.store.outbox import OutboxStore

log = logging.getLogger(__name__)

BATCH_KINDS = frozenset(str(carrier.CARRIER) for carrier in RESULT_CARRIERS)  # delivered by deliver_batch


class Outbox:
    """Sends due items; one delivery round at a time (a lock), from the scheduler or the pipeline."""

    def __init__(
        self,
        outbox: OutboxStore,
        settings: Settings,
        orthanc_client: Callable[[str], OrthancFlags] | None = None,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.context = DeliveryContext(settings, orthanc_client)
        self._lock = threading.Lock()

    def retry_at(self, attempts_so_far: int) -> float | None:
        """When to try again after a failure, or None to give up."""
        if attempts_so_far + 1 >= self.settings.send_max_attempts:
            return None
        delay = min(self.settings.send_retry_initial * 2**attempts_so_far, self.settings.send_retry_max)
        return time.time() + delay

    def deliver_due(self, now: float | None = None) -> int:
        """Deliver everything due now; returns how many items were delivered.

        A given-up send is not the end: once per send_retry_max, one given-up item per destination
        that nothing else is trying is tried again as a probe, and when a destination accepts
        anything again, all its given-up items are queued afresh.
        """
        now = time.time() if now is None else now
        with self._lock:
            items = self.outbox.due_outbox(now)
            items += self.outbox.probe_candidates(last_attempt_before=now - self.settings.send_retry_max)
            answered: set[tuple[str, str]] = set()
            delivered = 0
            # Result objects first, in batches per carrier and destination (one association or request
            # for many files); the rest after them, so whoever is told about a study finds the SR there.
            batches: dict[tuple[str, str], list[OutboxItem]] = defaultdict(list)
            for item in items:
                if item.kind in BATCH_KINDS:
                    batches[(item.kind, item.destination)].append(item)
            for (kind, destination), batch in batches.items():
                sent = self._send_batch(kind, destination, batch)
                if sent:
                    answered.add((kind, destination))
                delivered += sent
            for item in items:
                if item.kind not in BATCH_KINDS and self._deliver(item):
                    answered.add((item.kind, item.destination))
                    delivered += 1
            for kind, destination in answered:
                resumed = self.outbox.resume_given_up(kind, destination)
                if resumed:
                    log.warning("%s destination %s answers again: %d given-up send(s) queued again", kind,
                                destination, resumed)
            return delivered

    def _fail(self, item: OutboxItem, error: str) -> None:
        retry_at = self.retry_at(item.attempts)
        if retry_at is None:
            log.error("giving up %s %s to %s after %d attempts: %s", item.kind, item.key, item.destination,
                      item.attempts + 1, error)
        else:
            log.warning("%s %s to %s failed (attempt %d, retry in %.0f s): %s", item.kind, item.key,
                        item.destination, item.attempts + 1, retry_at - time.time(), error)
        self.outbox.mark_failed_attempt(item, error, retry_at)

    def _send_batch(self, kind: str, destination: str, batch: list[OutboxItem]) -> int:
        sent = 0

        def answered(item: OutboxItem, error: str | None) -> None:  # each file as soon as its destination answered
            nonlocal sent
            if error is None:
                crash_point("send.after_ack")
                self.outbox.mark_sent(item)
                sent += 1
            else:
                self._fail(item, error)

        CARRIERS[Carrier(kind)].deliver_batch(destination, batch, self.context, answered)
        if sent:
            log.info("sent %d result object(s) to %s (%s)", sent, destination, kind)
        return sent

    def _deliver(self, item: OutboxItem) -> bool:
        try:
            carrier = CARRIERS.get(Carrier(item.kind)) if item.kind in {c.value for c in Carrier} else None
            if carrier is None:
                raise DeliveryError(f"unknown outbox kind {item.kind!r} (written by a newer dicom-ai?)")
            carrier.deliver(item, self.context)
        except DeliveryError as exc:
            self._fail(item, str(exc))
            return False
        self.outbox.mark_sent(item)
        log.info("delivered %s for study %s to %s", item.kind, item.study_instance_uid, item.destination)
        return True
