"""The C-STORE SCP: an instance is acknowledged with Success only once it is on disk and in the database.

pynetdicom streams each incoming dataset to a temporary file (STORE_RECV_CHUNKED_DATASET), so
memory stays flat whatever the instance size; the file already holds the File Meta Information
and the raw received bytes, which we keep as they are (no decode/re-encode: lossless and fast).
Keeping it is receive/keep.py's job, shared with the STOW-RS endpoint.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_ai.receive.incoming import IncomingFiles, attach
from dicom_ai.receive.keep import keep_file
from dicom_ai.receive.limits import Admission, ConnectionLimits, resolve_hosts
from dicom_ai.receive.server import GuardedServer, serve

if TYPE_CHECKING:
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

    from dicom_ai.store import Spool, StudyStore

log = logging.getLogger(__name__)


def handle_store(event: Event, spool: Spool, store: StudyStore, incoming: IncomingFiles) -> int:
    """EVT_C_STORE: make the instance durable, record it, then (and only then) answer Success."""
    calling_aet = event.assoc.requestor.ae_title.strip()
    sop_uid = str(cast("C_STORE", event.request).AffectedSOPInstanceUID)
    temporary = Path(event.dataset_path)
    try:
        return keep_file(temporary, spool, store, calling_aet=calling_aet, sender=calling_aet, expected_sop_uid=sop_uid,
                         transfer_syntax=str(event.context.transfer_syntax),
                         write_error=incoming.error_for(temporary)).status
    finally:
        incoming.release(temporary)


def handle_connection_closed(event: Event, incoming: IncomingFiles) -> None:
    """A transfer cut off mid-dataset never reaches the handler: remove its partial file now."""
    left = incoming.discard_unfinished(event.assoc)
    if left:
        log.warning("removed %d partial upload(s) from %s (%s:%s): the connection ended mid-transfer", left,
                    event.assoc.requestor.ae_title.strip() or "?", event.assoc.requestor.address,
                    event.assoc.requestor.port)


def handle_connection_open(event: Event) -> None:
    """Disable Nagle: DIMSE is request/response with small PDUs, Nagle makes it crawl."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    except (AttributeError, OSError) as exc:  # not fatal: only slower
        log.debug("could not set TCP_NODELAY: %s", exc)


def build_ae(ae_title: str, max_pdu: int, allowed_calling: Sequence[str] = (),
             limits: ConnectionLimits | None = None) -> AE:
    """An AE that accepts every storage SOP class (also private ones) in every transfer syntax, and C-ECHO.

    With `allowed_calling`, associations from any other calling AE title are rejected (A-ASSOCIATE-RJ,
    "calling AE title not recognised") before a byte of data is taken. The timeouts and the number of
    associations come from `limits` (receive/limits.py, receive/pdu_guard.py say how they are enforced).
    """
    limits = limits or ConnectionLimits()
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.network_timeout = limits.idle_timeout  # no complete PDU for this long: abort
    ae.dimse_timeout = 60
    ae.acse_timeout = limits.negotiation_timeout  # waiting for the A-ASSOCIATE-RQ, and for the peer to close
    # Admission (receive/server.py) never lets more connections in, so pynetdicom's own count is a backstop.
    ae.maximum_associations = limits.max_associations
    ae.require_calling_aet = list(allowed_calling)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae


def handle_rejected(event: Event, allowed_calling: Sequence[str]) -> None:
    requestor = event.assoc.requestor
    calling = requestor.ae_title.strip()
    if allowed_calling and calling not in allowed_calling:
        why = "its calling AE title is not in allowed_calling_aets"
    else:
        why = f"too many associations at once (at most {event.assoc.ae.maximum_associations}) or a request we do not support"
    log.warning("refused an association from %s (%s:%s): %s", calling, requestor.address, requestor.port, why)


def start_scp(ae_title: str, host: str, port: int, max_pdu: int, spool: Spool, store: StudyStore,
              allowed_calling: Sequence[str] = (), tls: ssl.SSLContext | None = None, *,
              limits: ConnectionLimits | None = None, trusted_aets: Sequence[str] = (),
              known_hosts: Sequence[str] = ()) -> GuardedServer:
    """Start listening in background threads; returns the server (call .shutdown() to stop).

    Calling AE titles in `allowed_calling` and `trusted_aets` teach the admission their addresses, and
    `known_hosts` (the PACS) are known from the start: those get the reserved slots (receive/limits.py).
    """
    limits = limits or ConnectionLimits()
    ae = build_ae(ae_title, max_pdu, allowed_calling, limits)
    # Incoming datasets stream into the spool's incoming/ folder (adopting one is then a rename on
    # the same filesystem); see receive/incoming.py for full disks and transfers cut off mid-way.
    incoming = IncomingFiles(spool.incoming)
    attach(ae, incoming)
    handlers = [
        (evt.EVT_C_STORE, handle_store, [spool, store, incoming]),
        (evt.EVT_CONN_CLOSE, handle_connection_closed, [incoming]),
        (evt.EVT_CONN_OPEN, handle_connection_open),
        (evt.EVT_REJECTED, handle_rejected, [list(allowed_calling)]),
    ]
    admission = Admission(limits, [*allowed_calling, *trusted_aets], resolve_hosts(known_hosts))
    server = serve(ae, (host, port), handlers, tls, admission, max_pdu)
    log.info("DICOM SCP %s listening on %s:%d%s", ae_title, host, port, " (TLS only)" if tls else "")
    return server
