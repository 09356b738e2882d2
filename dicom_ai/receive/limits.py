"""Who may open a DICOM connection now, and for how long: the limits, and the book of open connections.

Admission decides by address, because the calling AE title only arrives with the A-ASSOCIATE-RQ,
after the TCP connection was taken. An address is *known* when it is the configured PACS's host or
when a trusted calling AE title (allowed_calling_aets, the PACS's) has associated from it; everyone
else is a *stranger*. Strangers are capped per address (max_connections_per_ip), throttled per
address (connection_rate_per_ip) and never get the last `reserved_associations` slots, so a flood
of strangers cannot keep the PACS out. Known senders are capped by `max_associations` only.
Without TLS a calling AE title is not authenticated: a stranger that forges the PACS's title and
associates makes its address known (and is logged when it does).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicom_ai.config import Settings

log = logging.getLogger(__name__)

RATE_BURST_SECONDS = 10.0  # a stranger may spend this many seconds' worth of connection_rate_per_ip at once
MAX_TRACKED_ADDRESSES = 4096  # addresses whose rate we remember / known senders we keep, oldest dropped first


@dataclass(frozen=True)
class ConnectionLimits:
    """The SCP's connection limits; README.md, section Configuration, says what each means."""

    negotiation_timeout: float = 10.0
    idle_timeout: float = 30.0
    max_associations: int = 64
    reserved_associations: int = 16
    max_connections_per_ip: int = 8
    connection_rate_per_ip: int = 600  # new connections per minute; 0: no throttle

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            negotiation_timeout=settings.negotiation_timeout,
            idle_timeout=settings.idle_timeout,
            max_associations=settings.max_associations,
            reserved_associations=settings.reserved_associations,
            max_connections_per_ip=settings.max_connections_per_ip,
            connection_rate_per_ip=settings.connection_rate_per_ip,
        )


@dataclass(frozen=True)
class Ticket:
    """One admitted connection; give it back with Admission.release when the connection ends."""

    address: str
    known: bool


def normalise_address(address: str) -> str:
    """An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d: count it as a.b.c.d."""
    return address.removeprefix("::ffff:")


def resolve_hosts(hosts: Iterable[str]) -> list[str]:
    """The addresses of configured peers (e.g. the PACS), so they are known before they first associate."""
    addresses: list[str] = []
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot resolve %s (%s): it gets the reserved DICOM slots only once it has associated",
                        host, exc)
            continue
        addresses += [normalise_address(str(info[4][0])) for info in infos]
    return addresses


class Admission:
    """The book of open connections per address; thread-safe (the accept loop and connection threads share it)."""

    def __init__(self, limits: ConnectionLimits, trusted_aets: Iterable[str] = (),
                 known_addresses: Iterable[str] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.trusted_aets = frozenset(title.strip() for title in trusted_aets if title.strip())
        self._clock = clock
        self._lock = threading.Lock()
        self._known: OrderedDict[str, None] = OrderedDict((normalise_address(a), None) for a in known_addresses)
        self._open: Counter[str] = Counter()
        self._open_total = 0
        self._open_strangers = 0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, when)
        # Slots are kept back only when someone can use them.
        reserved = limits.reserved_associations if (self.trusted_aets or self._known) else 0
        self.stranger_slots = max(limits.max_associations - reserved, 1)

    def is_known(self, address: str) -> bool:
        with self._lock:
            return normalise_address(address) in self._known

    def admit(self, address: str) -> Ticket | str:
        """A ticket for a new connection from `address`, or why it is refused (a phrase naming the setting)."""
        address = normalise_address(address)
        limits = self.limits
        with self._lock:
            known = address in self._known
            if self._open_total >= limits.max_associations:
                return f"{self._open_total} connections are open (max_associations {limits.max_associations})"
            if not known:
                if self._open_strangers >= self.stranger_slots:
                    return (f"{self._open_strangers} connections from unknown senders are open; the other "
                            f"{limits.max_associations - self.stranger_slots} are kept for known senders "
                            f"(reserved_associations)")
                if self._open[address] >= limits.max_connections_per_ip:
                    return (f"{self._open[address]} connections from this address are open "
                            f"(max_connections_per_ip {limits.max_connections_per_ip})")
                if not self._take_token(address):
                    return (f"more than {limits.connection_rate_per_ip} new connections a minute from this "
                            f"address (connection_rate_per_ip)")
                self._open_strangers += 1
            self._open[address] += 1
            self._open_total += 1
            return Ticket(address, known)

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            self._open[ticket.address] -= 1
            if self._open[ticket.address] <= 0:
                del self._open[ticket.address]
            self._open_total -= 1
            if not ticket.known:
                self._open_strangers -= 1

    def learn(self, address: str, calling_aet: str) -> bool:
        """Remember `address` as a known sender once a trusted AE title associated from it; True if new."""
        address = normalise_address(address)
        if calling_aet.strip() not in self.trusted_aets:
            return False
        with self._lock:
            if address in self._known:
                self._known.move_to_end(address)
                return False
            self._known[address] = None
            while len(self._known) > MAX_TRACKED_ADDRESSES:
                self._known.popitem(last=False)
            return True

    def open_connections(self, address: str | None = None) -> int:
        with self._lock:
            return self._open_total if address is None else self._open[normalise_address(address)]

    def _take_token(self, address: str) -> bool:
        """Token bucket per address: connection_rate_per_ip a minute, bursts of RATE_BURST_SECONDS' worth."""
        per_second = self.limits.connection_rate_per_ip / 60.0
        if per_second <= 0:
            return True
        depth = max(per_second * RATE_BURST_SECONDS, 1.0)
        now = self._clock()
        tokens, when = self._buckets.pop(address, (depth, now))
        tokens = min(depth, tokens + (now - when) * per_second)
        self._buckets[address] = (tokens - 1 if tokens >= 1 else tokens, now)
        while len(self._buckets) > MAX_TRACKED_ADDRESSES:
            self._buckets.popitem(last=False)
        return tokens >= 1


class ThrottledLog:
    """A warning per (address, kind) at most once a window, with how many were left out: a flood
    of hostile connections must not flood the log too."""

    def __init__(self, logger: logging.Logger, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._last: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def warning(self, address: str, kind: str, message: str) -> None:
        now = self._clock()
        key = (address, kind)
        with self._lock:
            last, skipped = self._last.pop(key, (-self._window, 0))
            if now - last < self._window:
                self._last[key] = (last, skipped + 1)
                return
            self._last[key] = (now, 0)
            while len(self._last) > MAX_TRACKED_ADDRESSES:
                self._last.popitem(last=False)
        suffix = f" ({skipped} more like it in the last {now - last:.0f} s)" if skipped else ""
        self._logger.warning("%s%s", message, suffix)
