"""The admission book on its own, with a fake clock: caps, throttle, reserved slots, learning, quiet logs."""

from __future__ import annotations

import logging

import pytest

from dicom_ai.config import ConfigError, load_settings
from dicom_ai.receive.limits import Admission, ConnectionLimits, ThrottledLog, Ticket
from dicom_ai.receive.pdu_guard import HARD_CEILING, pdu_limit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stranger_is_capped_per_address_and_gets_its_slot_back() -> None:
    book = Admission(ConnectionLimits(max_connections_per_ip=2, connection_rate_per_ip=0))
    first, second = book.admit("10.0.0.5"), book.admit("10.0.0.5")
    assert isinstance(first, Ticket) and isinstance(second, Ticket)
    assert "max_connections_per_ip 2" in str(book.admit("10.0.0.5"))
    assert isinstance(book.admit("10.0.0.6"), Ticket)  # another address is not affected
    book.release(first)
    assert isinstance(book.admit("::ffff:10.0.0.5"), Ticket)  # the same peer on a dual-stack socket


def test_the_rate_throttle_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    book = Admission(ConnectionLimits(max_connections_per_ip=1000, connection_rate_per_ip=60), clock=clock)
    admitted = [book.admit("10.0.0.5") for _ in range(20)]
    for ticket in admitted:
        if isinstance(ticket, Ticket):
            book.release(ticket)
    assert sum(isinstance(t, Ticket) for t in admitted) == 10  # 10 s worth of 1 a second
    assert "connection_rate_per_ip" in str(admitted[-1])
    clock.now += 3
    assert sum(isinstance(book.admit("10.0.0.5"), Ticket) for _ in range(5)) == 3
    assert isinstance(book.admit("10.0.0.7"), Ticket)


def test_slots_are_kept_for_known_senders_only_when_there_are_some() -> None:
    limits = ConnectionLimits(max_associations=4, reserved_associations=2, max_connections_per_ip=10,
                              connection_rate_per_ip=0)
    nobody_trusted = Admission(limits)
    assert all(isinstance(nobody_trusted.admit(f"10.0.0.{n}"), Ticket) for n in range(4))
    assert "max_associations 4" in str(nobody_trusted.admit("10.0.0.9"))

    book = Admission(limits, trusted_aets=["PACS"], known_addresses=["10.0.0.1"])
    assert all(isinstance(book.admit(f"10.0.0.{n}"), Ticket) for n in (5, 6))
    assert "reserved_associations" in str(book.admit("10.0.0.7"))
    assert isinstance(book.admit("10.0.0.1"), Ticket)  # the PACS's host
    assert not book.learn("10.0.0.8", "STRANGER")
    assert book.learn("10.0.0.8", "PACS ") and not book.learn("10.0.0.8", "PACS")
    assert book.admit("10.0.0.8") == Ticket("10.0.0.8", known=True)
    assert "max_associations 4" in str(book.admit("10.0.0.1"))  # the total holds for everyone


def test_warnings_are_throttled_per_address_and_kind(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("test.throttle"), window=60, clock=clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            throttled.warning("10.0.0.5", "refused", "refused a connection from 10.0.0.5")
        throttled.warning("10.0.0.6", "refused", "refused a connection from 10.0.0.6")
        clock.now += 61
        throttled.warning("10.0.0.5", "refused", "refused a connection from 10.0.0.5")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a connection from 10.0.0.5", "refused a connection from 10.0.0.6",
        "refused a connection from 10.0.0.5 (4 more like it in the last 61 s)"]


def test_pdu_limits() -> None:
    assert pdu_limit(16384) == 16390 and pdu_limit(0) == HARD_CEILING


def test_connection_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="reserved_associations.*less than max_associations"):
        load_settings(environ={"DICOM_AI_MAX_ASSOCIATIONS": "8", "DICOM_AI_RESERVED_ASSOCIATIONS": "8"})
    with pytest.raises(ConfigError, match="idle_timeout"):
        load_settings(environ={"DICOM_AI_IDLE_TIMEOUT": "inf"})
    limits = ConnectionLimits.from_settings(load_settings(environ={"DICOM_AI_NEGOTIATION_TIMEOUT": "4"}))
    assert limits.negotiation_timeout == 4 and limits.max_associations == 64
