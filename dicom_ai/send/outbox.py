"""Deliver what the outbox holds, retrying failures with exponential backoff.

Results reach the outbox in the same transaction that marks their study done, so a crash never
loses a send; a crash after a send but before it is marked repeats it with the same SOP Instance
UID, which a PACS stores once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from dicom_ai.config import Peer, Settings
from dicom_ai.prioritize.mwl import write_entry
from dicom_ai.prioritize.orthanc_flags import OrthancFlags
from dicom_ai.send.cstore import SendError, send_files
from dicom_ai.send.errors import DeliveryError
from dicom_ai.send.mllp import send_hl7
from dicom_ai.send.webhook import post_notice, send_email
from dicom_ai.store.database import OutboxItem, Store

log = logging.getLogger(__name__)

DICOM = "dicom"
ORTHANC_METADATA = "orthanc_metadata"
WEBHOOK = "webhook"
MWL = "mwl"
HL7 = "hl7"
EMAIL = "email"


class Outbox:
    """Sends due items; one delivery round at a time (a lock), from the scheduler or the pipeline."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        flags_factory: Callable[[str], OrthancFlags] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._flags_factory = flags_factory or (
            lambda url: OrthancFlags(url, settings.orthanc_user, settings.orthanc_password)
        )
        self._flags: dict[str, OrthancFlags] = {}
        self._lock = threading.Lock()
        # kind -> how to deliver one item; DICOM goes in batches (one association per peer) instead.
        self._senders: dict[str, Callable[[OutboxItem], None]] = {
            ORTHANC_METADATA: self._publish_flags,
            WEBHOOK: lambda item: post_notice(item.destination, item.payload),
            MWL: _write_worklist,
            HL7: lambda item: send_hl7(item.destination, item.payload),
            EMAIL: lambda item: send_email(item.destination, item.payload),
        }

    def retry_at(self, attempts_so_far: int) -> float | None:
        """When to try again after a failure, or None to give up."""
        if attempts_so_far + 1 >= self.settings.send_max_attempts:
            return None
        delay = min(self.settings.send_retry_initial * 2**attempts_so_far, self.settings.send_retry_max)
        return time.time() + delay

    def deliver_due(self) -> int:
        """Deliver everything due now; returns how many items were delivered."""
        with self._lock:
            items = self.store.due_outbox()
            delivered = 0
            dicom: dict[str, list[OutboxItem]] = defaultdict(list)
            for item in items:
                if item.kind == DICOM:
                    dicom[item.destination].append(item)
            for destination, batch in dicom.items():
                delivered += self._send_dicom(destination, batch)
            # The rest after the objects, so whoever is told about a study finds the SR there.
            for item in items:
                if item.kind != DICOM:
                    delivered += self._deliver(item)
            return delivered

    def _fail(self, item: OutboxItem, error: str) -> None:
        retry_at = self.retry_at(item.attempts)
        if retry_at is None:
            log.error("giving up %s %s to %s after %d attempts: %s", item.kind, item.key, item.destination,
                      item.attempts + 1, error)
        else:
            log.warning("%s %s to %s failed (attempt %d, retry in %.0f s): %s", item.kind, item.key,
                        item.destination, item.attempts + 1, retry_at - time.time(), error)
        self.store.mark_failed_attempt(item, error, retry_at)

    def _send_dicom(self, destination: str, batch: list[OutboxItem]) -> int:
        try:
            peer = Peer.parse(destination)
            outcome = send_files(self.settings.ae, peer, [Path(item.payload) for item in batch],
                                 self.settings.client_tls(peer.host))
        except (SendError, OSError, ValueError) as exc:
            for item in batch:
                self._fail(item, str(exc))
            return 0
        sent = 0
        for item in batch:
            error = outcome.get(Path(item.payload), "not attempted")
            if error is None:
                self.store.mark_sent(item)
                sent += 1
            else:
                self._fail(item, error)
        if sent:
            log.info("sent %d result object(s) to %s", sent, destination)
        return sent

    def _deliver(self, item: OutboxItem) -> int:
        deliver = self._senders.get(item.kind)
        try:
            if deliver is None:
                raise DeliveryError(f"unknown outbox kind {item.kind!r} (written by a newer dicom-ai?)")
            deliver(item)
        except DeliveryError as exc:
            self._fail(item, str(exc))
            return 0
        self.store.mark_sent(item)
        log.info("delivered %s for study %s to %s", item.kind, item.study_instance_uid, item.destination)
        return 1

    def _publish_flags(self, item: OutboxItem) -> None:
        flags = self._flags.get(item.destination)
        if flags is None:
            flags = self._flags[item.destination] = self._flags_factory(item.destination)
        flags.publish(item.study_instance_uid, item.payload)


def _write_worklist(item: OutboxItem) -> None:
    try:
        write_entry(Path(item.destination), item.study_instance_uid, item.payload)
    except (OSError, ValueError, KeyError) as exc:
        raise DeliveryError(f"cannot write worklist entry in {item.destination}: {exc}") from exc
