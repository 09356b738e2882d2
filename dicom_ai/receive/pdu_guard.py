"""Reads the PDUs of one accepted connection for pynetdicom's DUL, within bounds a peer cannot stretch.

pynetdicom 3.0 reads whatever length a PDU header declares, before any association check, and
blocks on the socket without a deadline. For connections our SCP accepts (never for associations we
open) this reader takes the place of the DUL's `AssociationSocket.recv`, which the DUL calls once
for a PDU's 6-byte header and once for its body:

- the first PDU must be an A-ASSOCIATE-RQ of at most ASSOCIATE_RQ_LIMIT bytes, complete within
  `negotiation_timeout` of the connection opening, however slowly its bytes trickle in;
- every later PDU may be at most max_pdu bytes long (HARD_CEILING when max_pdu is 0, "unlimited"),
  and must be complete within `idle_timeout` of its first byte, plus 1 s per MIN_TRANSFER_RATE bytes
  it declares, so a trickle cannot hold the connection (pynetdicom's idle timer, set to
  idle_timeout, only restarts when a whole PDU has arrived).

A PDU over its limit or late is answered with A-ABORT; the connection is closed and one WARNING
names the peer, its calling AE title when known, and the numbers. The header is read before the
body, so nothing of an over-long PDU is buffered.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pynetdicom.pdu import A_ABORT_RQ

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from dicom_ai.receive.limits import ConnectionLimits

log = logging.getLogger(__name__)

HEADER = 6  # PDU type, reserved, 4-byte length
ASSOCIATE_RQ = 0x01
# bytes: a usual A-ASSOCIATE-RQ is a few KB (128 contexts x 3 transfer syntaxes: 13 KB); the largest one
# pynetdicom can build, 128 contexts x all its 45 transfer syntaxes, is 148 KB.
ASSOCIATE_RQ_LIMIT = 256 * 1024
HARD_CEILING = 64 * 1024 * 1024  # bytes per PDU when max_pdu is 0 ("unlimited" is advertised, not honoured)
PDU_SLACK = HEADER  # some senders count the PDU header into the negotiated maximum
MIN_TRANSFER_RATE = 65536  # bytes/s: a PDU gets idle_timeout plus 1 s per this many bytes to arrive
READ_CHUNK = 65536
ABORT_SOURCE_PROVIDER = 0x02  # A-ABORT source: DICOM UL service-provider
ABORT_UNEXPECTED_PDU = 0x02  # reason: unexpected PDU
ABORT_INVALID_PARAMETER = 0x06  # reason: invalid PDU parameter value (the length)
ABORT_NOT_SPECIFIED = 0x00  # reason: not specified (a deadline passed)


def pdu_limit(max_pdu: int) -> int:
    """The longest PDU body (the header's length field) we read once associated."""
    return max_pdu + PDU_SLACK if max_pdu > 0 else HARD_CEILING


class PduReader:
    """Replaces `assoc.dul.socket.recv` of one acceptor association (see the module docstring)."""

    def __init__(self, assoc: Association, raw: socket.socket, peer: str, limits: ConnectionLimits, max_pdu: int,
                 opened_at: float, warn: Callable[[str, str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._assoc = assoc
        self._raw = raw
        self._peer = peer
        self._limits = limits
        self._limit = pdu_limit(max_pdu)
        self._warn = warn  # (kind, message): the server's throttled WARNING
        self._clock = clock
        self._negotiation_deadline = opened_at + limits.negotiation_timeout
        self._pdus = 0  # PDUs whose header was read
        self._body_left = 0
        self._deadline = self._negotiation_deadline
        self.associate_received = False  # the whole A-ASSOCIATE-RQ has arrived
        self.ended_by: str | None = None  # "peer" (closed first), or the kind of limit that ended it
        # Sends (our responses) must not block forever on a peer that stops reading either.
        raw.settimeout(limits.idle_timeout)

    def recv(self, nr_bytes: int) -> bytearray:
        """What the DUL asked for, or fewer bytes when the connection ended (the DUL then closes it)."""
        if self.ended_by is not None or nr_bytes <= 0:
            return bytearray()
        if self._body_left == 0:
            return self._header(nr_bytes)
        data = self._read(min(nr_bytes, self._body_left), self._deadline)
        self._body_left -= len(data)
        if self._body_left > 0 and len(data) < nr_bytes:
            self._ended(len(data))
        elif self._body_left == 0 and self._pdus == 1:
            self.associate_received = True
        return data

    def _header(self, nr_bytes: int) -> bytearray:
        first = self._pdus == 0
        now = self._clock()
        deadline = self._negotiation_deadline if first else now + self._limits.idle_timeout
        header = self._read(nr_bytes, deadline)
        if len(header) < HEADER:
            self._ended(len(header))
            return bytearray()
        kind, _, length = struct.unpack(">BBL", header[:HEADER])
        if first and kind != ASSOCIATE_RQ:
            self._abort("not-dicom", ABORT_UNEXPECTED_PDU,
                        f"{self._who()} sent a PDU of type 0x{kind:02X} where an A-ASSOCIATE-RQ belongs (not DICOM?)")
            return bytearray()
        limit = ASSOCIATE_RQ_LIMIT if first else self._limit
        if length > limit:
            what = "an A-ASSOCIATE-RQ" if first else f"a PDU (type 0x{kind:02X})"
            self._abort("pdu-length", ABORT_INVALID_PARAMETER,
                        f"{self._who()} declared {what} of {length} bytes, over the limit of {limit}"
                        f"{'' if first else ' (max_pdu)'}")
            return bytearray()
        self._pdus += 1
        self._body_left = length
        self._deadline = deadline if first else deadline + length / MIN_TRANSFER_RATE
        if first and length == 0:
            self.associate_received = True
        return header

    def _read(self, nr_bytes: int, deadline: float) -> bytearray:
        """Up to nr_bytes before `deadline`; fewer when the peer closed or the deadline passed."""
        data = bytearray()
        try:
            while len(data) < nr_bytes:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._raw.settimeout(remaining)
                chunk = self._raw.recv(min(nr_bytes - len(data), READ_CHUNK))
                if not chunk:
                    self.ended_by = "peer"
                    break
                data += chunk
        except (TimeoutError, socket.timeout):
            pass
        except (OSError, ssl.SSLError):
            self.ended_by = "peer"
        finally:
            try:
                self._raw.settimeout(self._limits.idle_timeout)
            except OSError:
                pass
        return data

    def _ended(self, got: int) -> None:
        """A read came back short: the peer closed, or a deadline passed."""
        if self.ended_by == "peer":
            self._wake_acceptor()
            return
        if not self.associate_received:
            self._abort("negotiation", ABORT_NOT_SPECIFIED,
                        f"{self._who()} did not complete its A-ASSOCIATE-RQ within {self._limits.negotiation_timeout:g} s "
                        f"(negotiation_timeout)")
        else:
            self._abort("slow-pdu", ABORT_NOT_SPECIFIED,
                        f"{self._who()} did not complete a PDU in time ({got} bytes of it in the last read; "
                        f"idle_timeout {self._limits.idle_timeout:g} s, plus 1 s per {MIN_TRANSFER_RATE} bytes)")

    def _abort(self, kind: str, reason: int, message: str) -> None:
        self.ended_by = kind
        self._warn(kind, f"{message}: association aborted")
        abort = A_ABORT_RQ()
        abort.source = ABORT_SOURCE_PROVIDER
        abort.reason_diagnostic = reason
        try:
            self._raw.settimeout(1.0)
            self._raw.sendall(abort.encode())
        except OSError:
            pass
        try:
            self._raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._wake_acceptor()

    def _wake_acceptor(self) -> None:
        """Before an A-ASSOCIATE-RQ, pynetdicom's acceptor thread waits acse_timeout for one even after
        the connection is gone, holding its slot (200 connect/close cycles kept real senders out for 25 s).
        None is what it gets on a time-out: it then ends at once."""
        if not self.associate_received:
            self._assoc.dul.to_user_queue.put(None)

    def _who(self) -> str:
        calling = ""
        if self.associate_received:
            try:
                calling = self._assoc.requestor.ae_title.strip()
            except (AttributeError, ValueError):
                calling = ""
        return f"peer {self._peer}" + (f" (calling AE {calling})" if calling else "")
