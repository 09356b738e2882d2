"""The console's accounts, sessions and failed sign-ins, in the node's database (migration 010).

Passwords are argon2id hashes (argon2-cffi's defaults); a session's cookie is a random token of
which only the SHA-256 is stored. Every change to an account is an audit event (who, what, before
and after) in the events table, in the transaction of the change.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import ClassVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from dicom_ai.store.database import Database, Part

MIN_PASSWORD_LENGTH = 10
FAILURES_FREE = 3  # failed sign-ins in a row before each further try must wait
MAX_WAIT_S = 300.0  # the longest wait after failed sign-ins
FAILURES_FORGOTTEN_S = 3600.0  # a failure streak this old starts over


class Role(enum.StrEnum):
    """What a person may do; each role may do what the ones before it may."""

    VIEWER = "viewer"  # reads everything
    RADIOLOGIST = "radiologist"  # also overrides priorities
    ADMIN = "admin"  # also rules, models, retries, users

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def may(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class AccountError(ValueError):
    """A refused account change; the message says what to do."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    created_at: float
    password_changed_at: float


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    created_at: float
    last_seen_at: float


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or any(c.isspace() or c in ":/\\" for c in name):
        raise AccountError(f"user name {name!r}: 1-64 characters without spaces, ':' or slashes")
    return name


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password is too short: at least {MIN_PASSWORD_LENGTH} characters")
    return password


class Accounts(Part):
    """Users, sessions and the failed sign-in counters."""

    _hasher = PasswordHasher()
    # An unknown name is verified against this hash anyway, so timing tells no names. A constant made with the
    # hasher's parameters (tests check they match) rather than hashed at start: each hash holds 64 MiB for its
    # moment, which the receiving process would otherwise show as its peak memory.
    _dummy_hash: ClassVar[str] = (
        "$argon2id$v=19$m=65536,t=3,p=4$Q+13bj7vk8FIA/hAODW8dg$wBx6B/EJcQ4KGTmP4pm3Vi3hqfGG0bhg0+zT5ERF/JE")

    # users -----------------------------------------------------------------------------------

    def users(self) -> list[User]:
        return [_user(row) for row in self._query("select * from users order by name")]

    def user(self, name: str) -> User | None:
        rows = self._query("select * from users where name = ?", [name])
        return _user(rows[0]) if rows else None

    def add_user(self, name: str, role: Role, password: str, by: str) -> User:
        name, now = _check_name(name), time.time()
        digest = self._hasher.hash(_check_password(password))
        with self._transaction() as db:
            if list(db.query("select 1 from users where name = ?", [name])):
                raise AccountError(f"user {name!r} exists already: `dicom-ai users passwd {name}` changes the password")
            db.table("users").insert({"name": name, "role": role.value, "password_hash": digest, "created_at": now,
                                      "password_changed_at": now})
            self._event(db, "user_added", None, by=by, user=name, before=None, after={"role": role.value})
        return User(name, role, now, now)

    def set_password(self, name: str, password: str, by: str) -> None:
        """A new password; the user's sessions end (a stolen cookie stops working with the old password)."""
        digest = self._hasher.hash(_check_password(password))
        with self._transaction() as db:
            cursor = db.execute("update users set password_hash = ?, password_changed_at = ? where name = ?",
                                [digest, time.time(), name])
            if cursor.rowcount != 1:
                raise AccountError(f"no user {name!r} (see `dicom-ai users list`)")
            db.execute("delete from sessions where user_name = ?", [name])
            self._event(db, "user_password_changed", None, by=by, user=name)

    def set_role(self, name: str, role: Role, by: str) -> None:
        with self._transaction() as db:
            rows = list(db.query("select role from users where name = ?", [name]))
            if not rows:
                raise AccountError(f"no user {name!r} (see `dicom-ai users list`)")
            self._refuse_last_admin(db, name, rows[0]["role"], role)
            db.execute("update users set role = ? where name = ?", [role.value, name])
            self._event(db, "user_role_changed", None, by=by, user=name, before={"role": rows[0]["role"]},
                        after={"role": role.value})

    def remove_user(self, name: str, by: str) -> None:
        with self._transaction() as db:
            rows = list(db.query("select role from users where name = ?", [name]))
            if not rows:
                raise AccountError(f"no user {name!r} (see `dicom-ai users list`)")
            self._refuse_last_admin(db, name, rows[0]["role"], None)
            db.execute("delete from sessions where user_name = ?", [name])
            db.execute("delete from users where name = ?", [name])
            self._event(db, "user_removed", None, by=by, user=name, before={"role": rows[0]["role"]}, after=None)

    @staticmethod
    def _refuse_last_admin(db: object, name: str, role: str, new_role: Role | None) -> None:
        if role != Role.ADMIN or new_role == Role.ADMIN:
            return
        admins = list(db.query("select count(*) as n from users where role = ?", [Role.ADMIN.value]))  # type: ignore[attr-defined]
        if admins[0]["n"] <= 1:
            raise AccountError(f"{name!r} is the last admin: add another admin first")

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password is right; None otherwise (a wrong name costs the same time)."""
        rows = self._query("select * from users where name = ?", [name])
        digest = rows[0]["password_hash"] if rows else self._dummy_hash
        try:
            self._hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            return None
        return _user(rows[0]) if rows else None

    # failed sign-ins -------------------------------------------------------------------------

    def wait_before_login(self, keys: list[str], now: float | None = None) -> float:
        """Seconds until one more sign-in may be tried for these keys (user name, address); 0: now."""
        now = time.time() if now is None else now
        wait = 0.0
        for row in self._query(f"select * from login_failures where key in ({', '.join('?' * len(keys))})", keys):
            if now - row["last_at"] > FAILURES_FORGOTTEN_S or row["failures"] < FAILURES_FREE:
                continue
            delay = min(2.0 ** (row["failures"] - FAILURES_FREE), MAX_WAIT_S)
            wait = max(wait, row["last_at"] + delay - now)
        return wait

    def login_failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._transaction() as db:
            for key in keys:
                rows = list(db.query("select * from login_failures where key = ?", [key]))
                fresh = not rows or now - rows[0]["last_at"] > FAILURES_FORGOTTEN_S
                db.table("login_failures").upsert(
                    {"key": key, "failures": 1 if fresh else rows[0]["failures"] + 1, "last_at": now}, pk="key")

    def login_succeeded(self, keys: list[str]) -> None:
        with self._transaction() as db:
            db.execute(f"delete from login_failures where key in ({', '.join('?' * len(keys))})", keys)

    # sessions --------------------------------------------------------------------------------

    def open_session(self, user: User, address: str) -> str:
        """A new session for `user`; returns the cookie's token (only its hash is stored)."""
        token, now = secrets.token_urlsafe(32), time.time()
        with self._transaction() as db:
            db.table("sessions").insert({"token_hash": _hash_token(token), "user_name": user.name,
                                         "csrf_token": secrets.token_urlsafe(32), "created_at": now,
                                         "last_seen_at": now})
            self._event(db, "signed_in", None, by=user.name, address=address)
        return token

    def session(self, token: str, idle_s: float, now: float | None = None) -> Session | None:
        """The live session of a cookie, marked as used now; None when unknown or idle longer than idle_s."""
        now = time.time() if now is None else now
        rows = self._query("select s.*, u.role, u.created_at as user_created_at, u.password_changed_at from sessions s"
                           " join users u on u.name = s.user_name where s.token_hash = ?", [_hash_token(token)])
        if not rows:
            return None
        row = rows[0]
        if now - row["last_seen_at"] > idle_s:
            self.close_session(token)
            return None
        if now - row["last_seen_at"] > min(60.0, idle_s / 10):  # one write a minute per session, not per request
            with self._transaction() as db:
                db.execute("update sessions set last_seen_at = ? where token_hash = ?", [now, row["token_hash"]])
        user = User(row["user_name"], Role(row["role"]), row["user_created_at"], row["password_changed_at"])
        return Session(user, row["csrf_token"], row["created_at"], now)

    def close_session(self, token: str, by: str | None = None) -> None:
        with self._transaction() as db:
            db.execute("delete from sessions where token_hash = ?", [_hash_token(token)])
            if by is not None:
                self._event(db, "signed_out", None, by=by)

    def audit(self, kind: str, by: str, study_uid: str | None = None, **detail: object) -> None:
        """An audit event for a change made elsewhere (a file, a model's switch) by a signed-in person."""
        with self._transaction() as db:
            self._event(db, kind, study_uid, by=by, **detail)


def _user(row: dict[str, object]) -> User:
    return User(str(row["name"]), Role(str(row["role"])), float(row["created_at"] or 0),  # type: ignore[arg-type]
                float(row["password_changed_at"] or 0))  # type: ignore[arg-type]
