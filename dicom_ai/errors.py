"""Turning exceptions into what an admin reads: one line on the study, the traceback in the log only."""

from __future__ import annotations

import errno
import logging
import sqlite3

MAX_LINE = 300  # characters of an error kept on a study (the log has the rest)
_RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
_RESOURCE_SQLITE = ("database or disk is full", "database is locked", "disk i/o error", "unable to open database")


def one_line(exc: BaseException) -> str:
    """The exception as one line: its message without traceback lines (some libraries, MONAI's image
    loader for one, put whole tracebacks of nested attempts into their messages), at most MAX_LINE long."""
    kept: list[str] = []
    in_traceback = False
    for line in str(exc).splitlines():
        stripped = line.strip()
        if stripped.startswith("Traceback (most recent call last)"):
            in_traceback = True
            continue
        if in_traceback and line[:1] in (" ", "\t"):
            continue  # a frame of the traceback: the log has it
        in_traceback = False
        if stripped and stripped not in kept:
            kept.append(stripped)
    message = " | ".join(kept) or type(exc).__name__
    if not isinstance(exc, (ValueError, RuntimeError)) and type(exc).__name__ not in message:
        message = f"{type(exc).__name__}: {message}"
    return message if len(message) <= MAX_LINE else message[: MAX_LINE - 3] + "..."


def out_of_resources(exc: BaseException) -> bool:
    """A failure that frees itself (disk full, database busy): retry later instead of failing the study."""
    for current in _chain(exc):
        if isinstance(current, OSError) and current.errno in _RESOURCE_ERRNOS:
            return True
        if isinstance(current, sqlite3.OperationalError) and any(
                phrase in str(current).lower() for phrase in _RESOURCE_SQLITE):
            return True
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


class PeerErrorsOnOneLine(logging.Filter):
    """pynetdicom logs a peer that resets its connection (a PACS restarting mid-association) with the whole
    stack; the line says what happened, and the node's log must never show a traceback for a peer's doing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pynetdicom") and record.exc_info:
            error, message = record.exc_info[1], record.getMessage()
            if error is not None and str(error) not in message:
                message = f"{message} ({type(error).__name__}: {error})"
            record.msg, record.args = message, None
            record.exc_info = None
            record.exc_text = None
        return True
