"""pynetdicom's transport alone: an SCP with the node's knobs (PDU size, chunked receive, DUL poll, TCP_NODELAY)
that answers Success and stores nothing. Its rate is the ceiling of any SCP built on pynetdicom, durable or not.

    python -m bench.ack_only_scp PORT COUNT_FILE   # on SIGTERM writes how many C-STOREs it answered
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_ai.receive.server import DUL_POLL_S

MAX_PDU = 131072  # the node's default max_pdu (config.py)


def main(port: int, count_file: Path) -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    answered = 0
    lock = threading.Lock()

    def on_store(_event: Event) -> int:
        nonlocal answered
        with lock:
            answered += 1
        return 0x0000

    def on_open(event: Event) -> None:
        event.assoc.dul._run_loop_delay = DUL_POLL_S
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]

    ae = AE(ae_title="ACKONLY")
    ae.maximum_pdu_size = MAX_PDU
    ae.maximum_associations = 16
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)])

    def stop(_signum: int, _frame: FrameType | None) -> None:
        if server is not None:
            server.shutdown()
        count_file.write_text(str(answered))
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.pause()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
