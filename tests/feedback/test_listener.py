"""The MLLP listener over real loopback sockets: a real MLLP client (the hl7 package's) gets one ACK per
message; oversized, unframed and crowded connections get a bounded answer, never a hung server."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from hl7.client import MLLPClient

from dicom_ai.feedback.hl7_report import ack, control_id_of
from dicom_ai.feedback.listener import Hl7Listener

START, END = b"\x0b", b"\x1c\r"


@pytest.fixture
def listener() -> Iterator[Hl7Listener]:
    seen: list[str] = []
    server = Hl7Listener("127.0.0.1", 0, lambda text: (seen.append(text), ack(control_id_of(text), "AA", "ok"))[1],
                         max_connections=2, idle_timeout=2.0, max_message_bytes=4096)
    server.seen = seen  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()


def message(control_id: str, body: str = "PID|1\r") -> str:
    return f"MSH|^~\\&|RIS||||2024||ORU^R01|{control_id}|P|2.5\r{body}"


def test_each_message_gets_its_ack_on_one_connection(listener: Hl7Listener) -> None:
    host, port = listener.address
    with MLLPClient(host, port) as client:
        first = client.send_message(message("M1")).decode()
        second = client.send_message(message("M2", "PID|1||Müller\r")).decode()
    assert "MSA|AA|M1|ok" in first and "MSA|AA|M2|ok" in second
    assert "Müller" in listener.seen[1]  # UTF-8, as MSH-18 UNICODE UTF-8 senders write


def test_oversized_and_unframed_messages_are_answered_ar(listener: Hl7Listener) -> None:
    host, port = listener.address
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(START + message("BIG", "OBX|1|TX|A||" + "x" * 5000 + "\r").encode() + END)
        assert b"MSA|AR||message over 4096 bytes" in sock.recv(4096)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(message("RAW").encode() + END)  # no start block character
        assert b"MSA|AR||not an MLLP frame" in sock.recv(4096)


def test_connections_beyond_the_limit_are_closed_and_idle_ones_dropped(listener: Hl7Listener) -> None:
    host, port = listener.address
    held = [socket.create_connection((host, port), timeout=5) for _ in range(2)]
    time.sleep(0.2)
    with socket.create_connection((host, port), timeout=5) as third:
        assert third.recv(16) == b""  # closed at once: two are open already
    for sock in held:  # silent for idle_timeout (2 s): dropped
        assert sock.recv(16) == b""
        sock.close()
    with MLLPClient(host, port) as client:  # and the listener still serves
        assert b"MSA|AA|M3" in client.send_message(message("M3"))


def test_a_taken_port_is_an_oserror(listener: Hl7Listener) -> None:
    host, port = listener.address
    with pytest.raises(OSError):
        Hl7Listener(host, port, lambda text: "").start()
