"""The files pynetdicom streams incoming datasets into, in the spool's incoming/ folder.

pynetdicom (STORE_RECV_CHUNKED_DATASET) writes each C-STORE dataset to a NamedTemporaryFile as its
fragments arrive, on the association's DUL thread. Two things go wrong with a plain temporary file:
a full disk raises inside pynetdicom's decoder, which aborts the association with a traceback
instead of answering A700 (Out of Resources); and a transfer cut off mid-way leaves its partial file
behind until the next start. `IncomingFiles` replaces the temporary file for associations of our SCP
only: a failed write is remembered (the rest of the dataset is read and dropped, the partial file is
removed at once) and answered by the C-STORE handler, and whatever an association leaves unfinished
is removed when its connection closes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom import dimse_messages

from dicom_ai.crashpoints import crash_point

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

_ORIGINAL_FACTORY = dimse_messages.NamedTemporaryFile
_ATTRIBUTE = "_dicom_ai_incoming"  # set on an AE whose associations write into our spool


class IncomingFile:
    """The file object pynetdicom writes one dataset to; it never raises into pynetdicom."""

    def __init__(self, path: Path, owner: Association | None) -> None:
        self.path = path
        self.name = str(path)
        self.owner = owner
        self.error: OSError | None = None
        self.bytes_written = 0
        self._handle: Any = None
        try:
            self._handle = open(path, "wb")
        except OSError as exc:
            self.error = exc

    @property
    def file(self) -> IncomingFile:  # pynetdicom calls `.file.flush()`, as on a NamedTemporaryFile
        return self

    def write(self, data: bytes) -> int:
        if self.error is not None:
            return len(data)  # drop the rest: the handler answers A700
        try:
            written = self._handle.write(data)
            self._handle.flush()
        except OSError as exc:
            self.error = exc
            self._abandon()
            return len(data)
        self.bytes_written += written
        crash_point("receive.mid_transfer")
        return written

    def flush(self) -> None:
        pass  # written through in write()

    def close(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError as exc:
                if self.error is None:
                    self.error = exc
            self._handle = None

    def _abandon(self) -> None:
        """Free the space of a file that cannot be completed, now rather than at the next start."""
        self.close()
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass


class IncomingFiles:
    """The incoming files of one SCP's associations: which failed, and which to remove when a connection ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._files: dict[str, IncomingFile] = {}

    def create(self, owner: Association | None) -> IncomingFile:
        handle, name = tempfile.mkstemp(dir=self.folder, suffix=".dcm")
        os.close(handle)
        incoming = IncomingFile(Path(name), owner)
        with self._lock:
            self._files[incoming.name] = incoming
        return incoming

    def error_for(self, path: Path) -> OSError | None:
        """The write error of the dataset stored at `path`, if any (the handler answers A700)."""
        with self._lock:
            incoming = self._files.get(str(path))
        return incoming.error if incoming is not None else None

    def release(self, path: Path) -> None:
        """The handler is done with `path` (kept under a final name, or refused)."""
        with self._lock:
            incoming = self._files.pop(str(path), None)
        if incoming is not None:
            incoming.close()

    def discard_unfinished(self, owner: Association) -> int:
        """Remove the files an ended association left: transfers cut off before their last fragment."""
        with self._lock:
            left = [f for f in self._files.values() if f.owner is owner]
            for incoming in left:
                del self._files[incoming.name]
        for incoming in left:
            incoming._abandon()
        return len(left)


def _factory(*args: Any, **kwargs: Any) -> Any:
    """Stands in for NamedTemporaryFile inside pynetdicom's DIMSE decoder."""
    association = getattr(threading.current_thread(), "assoc", None)  # the DUL thread knows its association
    files: IncomingFiles | None = getattr(getattr(association, "ae", None), _ATTRIBUTE, None)
    if files is None:  # not an association of our SCP (e.g. a C-GET reply to an SCU): pynetdicom's own way
        return _ORIGINAL_FACTORY(*args, **kwargs)
    return files.create(association)


def attach(ae: Any, files: IncomingFiles) -> None:
    """Make the associations of `ae` write incoming datasets through `files`."""
    setattr(ae, _ATTRIBUTE, files)
    setattr(dimse_messages, "NamedTemporaryFile", _factory)  # pynetdicom's decoder looks it up there
