"""Deadlines and slots of our SCP over real loopback sockets: silent, trickling, idle and over-long peers are
dropped within their limit, connect/close cycles hold nothing, and the PACS keeps its reserved slots."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, StoragePresentationContexts
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_ai.receive.limits import ConnectionLimits
from dicom_ai.receive.scp import start_scp
from dicom_ai.receive.server import GuardedServer
from dicom_ai.store import Spool, Stores
from tests.conftest import free_port, wait_for
from tests.receive.peers import closed_by_peer, connect, echoscu, trickle

SHORT = ConnectionLimits(negotiation_timeout=2, idle_timeout=2)
BOUND = 15.0  # seconds: the generous wait for something that the limits make happen within ~2 s


class Scp:
    def __init__(self, root: Path, limits: ConnectionLimits, max_pdu: int = 16384, **kwargs: object) -> None:
        self.port = free_port()
        self.store = Stores.open(root / "db.sqlite")
        self.server: GuardedServer = start_scp("DICOM_AI", "127.0.0.1", self.port, max_pdu, Spool(root / "spool"),
                                               self.store.studies, limits=limits, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.server.shutdown()
        self.store.close()


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator[Callable[..., Scp]]:
    started: list[Scp] = []

    def factory(limits: ConnectionLimits = SHORT, **kwargs: object) -> Scp:
        started.append(Scp(tmp_path / f"scp{len(started)}", limits, **kwargs))
        return started[-1]

    yield factory
    for scp in started:
        scp.stop()


def _associate(port: int, calling: str = "TESTSCU", source: str = "127.0.0.1") -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", port, ae_title="DICOM_AI", bind_address=(source, 0))


def test_silent_and_trickling_peers_are_dropped_at_the_negotiation_deadline(scp_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    scp = scp_factory()
    silent, opened = connect(scp.port), time.monotonic()
    rq_header = struct.pack(">BBL", 0x01, 0, 300)  # an A-ASSOCIATE-RQ whose 300 bytes come one a second
    trickling = trickle(connect(scp.port), rq_header + b"\0" * 300, interval=1.0, within=BOUND)
    silence = closed_by_peer(silent, within=BOUND, since=opened)
    print(f"negotiation_timeout 2 s: a silent peer was dropped after {silence} s, a trickling one after "
          f"{trickling} s")
    assert silence is not None and trickling is not None
    wait_for("both slots given back", lambda: scp.server.admission.open_connections() == 0, timeout=5)
    assert "did not complete its A-ASSOCIATE-RQ within 2 s (negotiation_timeout)" in caplog.text
    assert "sent no A-ASSOCIATE-RQ within 2 s (negotiation_timeout)" in caplog.text


def test_the_largest_association_request_pynetdicom_builds_is_taken(scp_factory) -> None:  # type: ignore[no-untyped-def]
    scp = scp_factory()
    ae = AE(ae_title="BIGSCU")
    for context in StoragePresentationContexts:  # 128 contexts x 45 transfer syntaxes: a 148 KB A-ASSOCIATE-RQ
        ae.add_requested_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOM_AI")
    assert assoc.is_established
    assoc.release()


def test_an_idle_or_trickling_association_is_aborted_after_idle_timeout(scp_factory) -> None:  # type: ignore[no-untyped-def]
    scp = scp_factory()
    idle = _associate(scp.port)
    assert idle.is_established
    started = time.monotonic()
    wait_for("the idle association to be aborted", lambda: idle.is_aborted, timeout=BOUND)
    idle_for = time.monotonic() - started

    trickler = _associate(scp.port)
    assert trickler.is_established
    raw = trickler.dul.socket.socket  # type: ignore[union-attr]
    started = time.monotonic()
    trickled_for = None
    for byte in struct.pack(">BBL", 0x04, 0, 1000) + b"\0" * 1000:  # a P-DATA-TF one byte a second
        if trickler.is_aborted:
            trickled_for = time.monotonic() - started
            break
        if time.monotonic() - started > BOUND:
            break
        try:
            raw.sendall(bytes([byte]))
        except OSError:
            pass
        time.sleep(1.0)
    print(f"idle_timeout 2 s: an idle association was aborted after {idle_for:.1f} s, "
          f"a trickling one after {trickled_for} s")
    assert trickled_for is not None, "the trickling association was still open"
    wait_for("both slots given back", lambda: scp.server.admission.open_connections() == 0, timeout=5)


def test_an_over_long_pdu_aborts_with_one_warning_naming_peer_and_sizes(scp_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    scp = scp_factory(max_pdu=16384)
    assoc = _associate(scp.port, calling="HOSTILE")
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    raw.sendall(struct.pack(">BBL", 0x04, 0, 10 * 2**20) + b"\0" * 65536)
    wait_for("the association to be aborted", lambda: assoc.is_aborted, timeout=BOUND)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and "declared" in r.getMessage()]
    text = warning.getMessage()
    assert "127.0.0.1" in text and "calling AE HOSTILE" in text and "10485760 bytes" in text and "16390" in text
    assert warning.exc_info is None and "Traceback" not in caplog.text
    assert echoscu(scp.port).returncode == 0  # the node carries on


def test_connect_close_cycles_give_their_slots_back_at_once(scp_factory) -> None:  # type: ignore[no-untyped-def]
    # No per-address limits here: the cycles come from the address of the real sender that follows.
    scp = scp_factory(ConnectionLimits(max_connections_per_ip=64, connection_rate_per_ip=0))
    for _ in range(200):
        connect(scp.port).close()
    wait_for("every slot given back", lambda: scp.server.admission.open_connections() == 0, timeout=3, poll=0.02)
    echo = echoscu(scp.port)
    assert echo.returncode == 0, echo.stderr


def test_strangers_cannot_take_the_slots_kept_for_the_pacs(scp_factory) -> None:  # type: ignore[no-untyped-def]
    limits = ConnectionLimits(negotiation_timeout=30, max_associations=6, reserved_associations=2,
                              max_connections_per_ip=2, connection_rate_per_ip=0)
    scp = scp_factory(limits, allowed_calling=["PACS"])
    assert echoscu(scp.port, calling="PACS").returncode == 0  # the PACS associates once: its address is known
    wait_for("the PACS's slot given back", lambda: scp.server.admission.open_connections() == 0, timeout=5)
    strangers = [connect(scp.port, source=f"127.0.0.{n}") for n in (2, 2, 3, 3, 4)]
    wait_for("4 strangers in", lambda: scp.server.admission.open_connections() == 4, timeout=5)
    assert closed_by_peer(strangers[-1], within=BOUND) is not None  # the 5th is turned away at once
    assert closed_by_peer(strangers[0], within=0.5) is None  # the others are held (until negotiation_timeout)
    for _ in range(2):  # the PACS still gets in, with the reserved slots to spare
        assert echoscu(scp.port, calling="PACS").returncode == 0
    stranger = _associate(scp.port, source="127.0.0.9")
    assert not stranger.is_established
    for sock in strangers:
        sock.close()
