"""Carrier DICOM: result objects (SR, Secondary Captures, Parametric Maps) by C-STORE to the PACS.

Unlike the priority carriers, one entry per result file, and delivered in batches: one association
per destination for all of its due files, each file's outcome reported as soon as the PACS answered
for it (so the outbox marks it sent before the next one goes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_ai.config import Peer
from dicom_ai.domain import Carrier, OutboxEntry, OutboxItem, ResultFile
from dicom_ai.errors import one_line
from dicom_ai.send.cstore import SendError, send_files

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.send.carriers import DeliveryContext

CARRIER = Carrier.DICOM


def build_results(results: Sequence[ResultFile], settings: Settings) -> list[OutboxEntry]:
    """One send per result file, when a PACS is configured."""
    if settings.pacs is None:
        return []
    return [OutboxEntry(CARRIER, result.sop_instance_uid, str(settings.pacs), str(result.path)) for result in results]


def deliver_batch(destination: str, items: Sequence[OutboxItem], context: DeliveryContext,
                  answered: Callable[[OutboxItem, str | None], None]) -> None:
    """C-STORE each item's file to `destination` (AE@host:port); `answered(item, error)` once per item:
    as the PACS answers for it, or with the reason it could not be sent."""
    by_path = {Path(item.payload): item for item in items}
    heard: set[Path] = set()

    def on_result(path: Path, error: str | None) -> None:
        heard.add(path)
        answered(by_path[path], error)

    try:
        peer = Peer.parse(destination)
        outcome = send_files(context.settings.ae, peer, list(by_path), context.settings.client_tls(peer.host),
                             on_result=on_result)
    except (SendError, OSError, ValueError) as exc:
        outcome = {path: one_line(exc) for path in by_path}
    for path, error in outcome.items():  # e.g. not DICOM, or the association failed before it went
        if path not in heard:
            answered(by_path[path], error or "not attempted")
