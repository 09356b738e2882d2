"""The database: one SQLite file in WAL mode, shared by the store's parts, each with its own connections.

The database is the source of truth after a crash: every state change is one transaction, and a
study's state moves only by compare-and-set, so two workers (or a restart) never process or send
the same thing twice. Commits are durable (WAL with synchronous=FULL).

Each part of the store (studies.py: receive to outcome; outbox.py: deliveries; reports.py: what
people and monitors read) writes through a connection and lock of its own, and reads through a
connection per thread: the SCP's threads, the scheduler and the web server never queue behind one
lock, and a reader never waits for a writer (WAL). Every write transaction starts with BEGIN
IMMEDIATE: it takes the write lock up front and so waits up to `busy_timeout` seconds for another
writer (another part, a CLI command) instead of failing at once, as a deferred transaction
upgrading from a read does.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import sqlite_utils

from dicom_ai.domain import StudyState
from dicom_ai.store.migrations import migrations

# A study in one of these states waits for nothing: it may be retried, or its files purged.
FINISHED_STATES = (StudyState.DONE, StudyState.NO_MATCH, StudyState.FAILED)


class Database:
    """The node's SQLite file: opened (and migrated) once, then hands out connections."""

    def __init__(self, path: Path, busy_timeout: float = 30.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.busy_timeout = busy_timeout
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()
        self._idle_readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        setup = self.connect()
        setup.execute("PRAGMA journal_mode=WAL")  # persistent: every later connection is in WAL mode
        migrations.apply(sqlite_utils.Database(setup))

    def connect(self) -> sqlite3.Connection:
        """A new connection with the node's settings (closed by close())."""
        conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=self.busy_timeout,
                               isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the SCP answers Success
        conn.execute("PRAGMA foreign_keys=ON")
        with self._opened_lock:
            self._opened.append(conn)
        return conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads, borrowed from a pool (as many as reads run at once; WAL: a reader
        never waits for a writer). Not one per thread: the SCP starts a thread per association."""
        try:
            conn = self._idle_readers.get_nowait()
        except queue.Empty:
            conn = self.connect()
            conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            self._idle_readers.put(conn)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.reading() as conn:
            return [dict(row) for row in conn.execute(sql, params).fetchall()]

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Plain tuples in the select's column order: for reads of 100,000 rows, where dicts cost more than the SQL."""
        with self.reading() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None
            return cursor.execute(sql, params).fetchall()

    def pragma(self, name: str) -> Any:
        """A PRAGMA's value on a connection as the node opens them (for checks and tests)."""
        with self.reading() as conn:
            return conn.execute(f"PRAGMA {name}").fetchone()[0]

    def close(self) -> None:
        with self._opened_lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()
        self._idle_readers = queue.SimpleQueue()


class Reader:
    """A part of the store that only reads (through the database's pool of read connections)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.database.query(sql, params)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.database.rows(sql, params)


T = TypeVar("T")


class _Ticket(Generic[T]):
    """One thread's work in a group commit, and what came of it once the group was committed."""

    def __init__(self, work: Callable[[sqlite_utils.Database], T]) -> None:
        self.work = work
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class Part(Reader):
    """A part of the store that writes: a write connection of its own (one lock), reads from the pool."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self._conn = database.connect()
        self._db = sqlite_utils.Database(self._conn)
        self._lock = threading.RLock()
        self._pending: list[_Ticket[Any]] = []  # works waiting for a group commit (see _grouped)
        self._pending_lock = threading.Lock()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite_utils.Database]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _grouped(self, work: Callable[[sqlite_utils.Database], T]) -> T:
        """Run `work` in a write transaction that may be shared with other threads' (group commit).

        Each commit with synchronous=FULL waits for the disk (an fsync); with several associations
        storing at once, the threads that queue while one commits are committed together by the next
        one to get the lock: one fsync for all, each caller still returning only once its own work is
        committed. Each work runs in a savepoint of its own, so one that fails (its exception is raised
        to its caller) leaves the others in; a failed COMMIT fails every work of the group.
        """
        ticket = _Ticket(work)
        with self._pending_lock:
            self._pending.append(ticket)
        with self._lock:
            if not ticket.done:
                with self._pending_lock:
                    group, self._pending = self._pending, []
                self._commit_group(group)
        return ticket.outcome()

    def _commit_group(self, group: list[_Ticket[Any]]) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for ticket in group:
                self._conn.execute("SAVEPOINT one")
                try:
                    ticket.result = ticket.work(self._db)
                except Exception as exc:
                    self._conn.execute("ROLLBACK TO one")
                    ticket.error = exc
                self._conn.execute("RELEASE one")
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            for ticket in group:
                if ticket.error is None:
                    ticket.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for ticket in group:
                ticket.done = True

    @staticmethod
    def _event(db: sqlite_utils.Database, kind: str, study_uid: str | None, **detail: Any) -> None:
        """An audit event, in the transaction of the change it records."""
        db.table("events").insert(
            {"at": time.time(), "kind": kind, "study_instance_uid": study_uid, "detail": json.dumps(detail)}
        )
