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
from dicom_ai.crashpoints import crash_point
from dicom_ai.errors import one_line
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

    def deliver_due(self, now: float | None = None) -> int:
        """Deliver everything due now; returns how many items were delivered.

        A given-up send is not the end: once per send_retry_max, one given-up item per destination
        that nothing else is trying is tried again as a probe, and when a destination accepts
        anything again, all its given-up items are queued afresh.
        """
        now = time.time() if now is None else now
        with self._lock:
            items = self.store.due_outbox(now)
            items += self.store.probe_candidates(last_attempt_before=now - self.settings.send_retry_max)
            delivered = 0
            dicom: dict[str, list[OutboxItem]] = defaultdict(list)
            for item in items:
                if item.kind == DICOM:
                    dicom[item.destination].append(item)
            answered: set[tuple[str, str]] = set()
            for destination, batch in dicom.items():
                sent = self._send_dicom(destination, batch)
                if sent:
                    answered.add((DICOM, destination))
                delivered += sent
            # The rest after the objects, so whoever is told about a study finds the SR there.
            for item in items:
                if item.kind != DICOM and self._deliver(item):
                    answered.add((item.kind, item.destination))
                    delivered += 1
            for kind, destination in answered:
                resumed = self.store.resume_given_up(kind, destination)
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
        self.store.mark_failed_attempt(item, error, retry_at)

    def _send_dicom(self, destination: str, batch: list[OutboxItem]) -> int:
        by_path = {Path(item.payload): item for item in batch}
        heard: set[Path] = set()
        sent = 0

        def answered(path: Path, error: str | None) -> None:  # each file as soon as the PACS answered for it
            nonlocal sent
            heard.add(path)
            if error is None:
                crash_point("send.after_ack")
                self.store.mark_sent(by_path[path])
                sent += 1
            else:
                self._fail(by_path[path], error)

        try:
            peer = Peer.parse(destination)
            outcome = send_files(self.settings.ae, peer, list(by_path), self.settings.client_tls(peer.host),
                                 on_result=answered)
        except (SendError, OSError, ValueError) as exc:
            outcome = {path: one_line(exc) for path in by_path}
        for path, error in outcome.items():  # e.g. not DICOM, or the association failed before it went
            if path not in heard:
                self._fail(by_path[path], error or "not attempted")
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
