"""C-STORE SCU: send result files to a peer in one association."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_ai.config import Peer
from dicom_ai.send.errors import DeliveryError

log = logging.getLogger(__name__)


class SendError(DeliveryError):
    """The peer could not be reached or refused the association; nothing was sent."""


def _association(ae_title: str, peer: Peer, contexts: Sequence[tuple[str, str]]):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, transfer_syntax in contexts:
        ae.add_requested_context(sop_class, transfer_syntax)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet)
    if not assoc.is_established:
        raise SendError(f"association with {peer} was rejected or failed (is the AE title and port right?)")
    return assoc


def send_files(ae_title: str, peer: Peer, paths: Sequence[Path]) -> dict[Path, str | None]:
    """Send each file; returns path -> None on Success, or an error message for that file."""
    datasets = {path: dcmread(path) for path in paths}
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets.values()})
    outcome: dict[Path, str | None] = {}
    assoc = _association(ae_title, peer, contexts)
    try:
        for path, dataset in datasets.items():
            status = assoc.send_c_store(dataset)
            code = getattr(status, "Status", None)
            if code is None:
                outcome[path] = f"no response from {peer} (connection lost or timed out)"
            elif code in (0x0000, 0xB000, 0xB006, 0xB007):
                outcome[path] = None
            else:
                outcome[path] = f"{peer} answered status 0x{code:04X}"
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome


def echo(ae_title: str, peer: Peer) -> int:
    """C-ECHO; returns the DIMSE status (0 is Success)."""
    assoc = _association(ae_title, peer, [(Verification, "1.2.840.10008.1.2")])
    try:
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        if code is None:
            raise SendError(f"no C-ECHO response from {peer}")
        return int(code)
    finally:
        if assoc.is_established:
            assoc.release()
