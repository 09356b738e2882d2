"""C-STORE SCU: send result files to a peer in one association."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_ai.config import Peer
from dicom_ai.send.errors import DeliveryError
from dicom_ai.tls import ClientTls

log = logging.getLogger(__name__)


class SendError(DeliveryError):
    """The peer could not be reached or refused the association; nothing was sent."""


def _association(ae_title: str, peer: Peer, contexts: Sequence[tuple[str, str]],  # type: ignore[no-untyped-def]
                 tls: ClientTls | None = None):
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, transfer_syntax in contexts:
        ae.add_requested_context(sop_class, transfer_syntax)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet, tls_args=tls)
    if not assoc.is_established:
        hint = "the AE title, port and TLS certificates" if tls else "the AE title and port (and does it want TLS?)"
        raise SendError(f"association with {peer} was rejected or failed (are {hint} right?)")
    return assoc


# A-ASSOCIATE-RQ carries at most 128 presentation contexts (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128


def _context(path: Path) -> tuple[str, str]:
    """(SOP Class, Transfer Syntax) from the file's header; raises with the file named if it is not DICOM."""
    try:
        header = dcmread(path, stop_before_pixels=True)
        return str(header.SOPClassUID), str(header.file_meta.TransferSyntaxUID)
    except (InvalidDicomError, OSError) as exc:
        raise ValueError(_unreadable(exc)) from exc
    except AttributeError as exc:
        raise ValueError(f"not a storable DICOM file: no SOP Class UID or Transfer Syntax UID ({exc})") from exc


def _unreadable(exc: Exception) -> str:
    if isinstance(exc, InvalidDicomError):
        return "not a DICOM file (no 'DICM' prefix and File Meta Information, as DICOM Part 10 files have)"
    return f"cannot read the file ({getattr(exc, 'strerror', None) or exc})"


def send_files(ae_title: str, peer: Peer, paths: Sequence[Path], tls: ClientTls | None = None,
               on_result: Callable[[Path, str | None], None] | None = None) -> dict[Path, str | None]:
    """Send each file; returns path -> None on Success, or an error message for that file.

    A file that is not DICOM fails on its own, named, and the others still go. Files are read one at
    a time as they are sent, so a large folder does not have to fit in memory. `on_result` hears of
    each file as soon as the peer has answered for it, so a caller can record each acknowledgement
    before the next file goes (a crash mid-batch then repeats one file, not the batch).
    """
    outcome: dict[Path, str | None] = {}
    context_of: dict[Path, tuple[str, str]] = {}
    for path in paths:
        try:
            context_of[path] = _context(path)
        except ValueError as exc:
            outcome[path] = str(exc)
    contexts = sorted(set(context_of.values()))
    for start in range(0, len(contexts), MAX_CONTEXTS):
        chunk = contexts[start:start + MAX_CONTEXTS]
        assoc = _association(ae_title, peer, chunk, tls)
        try:
            for path in [path for path, context in context_of.items() if context in chunk]:
                outcome[path] = _store(assoc, peer, path)
                if on_result is not None:
                    on_result(path, outcome[path])
        finally:
            if assoc.is_established:
                assoc.release()
    return {path: outcome[path] for path in paths}


def _store(assoc, peer: Peer, path: Path) -> str | None:  # type: ignore[no-untyped-def]
    try:
        dataset = dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        return _unreadable(exc)
    status = assoc.send_c_store(dataset)
    code = getattr(status, "Status", None)
    if code is None:
        return f"no response from {peer} (connection lost or timed out)"
    if code in (0x0000, 0xB000, 0xB006, 0xB007):
        return None
    return f"{peer} answered status 0x{code:04X}"


def echo(ae_title: str, peer: Peer, tls: ClientTls | None = None) -> int:
    """C-ECHO; returns the DIMSE status (0 is Success)."""
    assoc = _association(ae_title, peer, [(Verification, "1.2.840.10008.1.2")], tls)
    try:
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        if code is None:
            raise SendError(f"no C-ECHO response from {peer}")
        return int(code)
    finally:
        if assoc.is_established:
            assoc.release()
