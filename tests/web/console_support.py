"""Helpers for tests of the console: a context over a test database, accounts, signed-in requests."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

from dicom_ai.domain import TurnaroundTargets
from dicom_ai.store import Stores
from dicom_ai.store.accounts import Role
from dicom_ai.store.health import node_health
from dicom_ai.web.app import web_context
from dicom_ai.web.context import WebContext

PASSWORD = "correct horse battery"


def context(store: Stores, home: Path | None = None, with_status: bool = True, **parts: Any) -> WebContext:
    status = (lambda: node_health(store.reports, home or store.path.parent, None)) if with_status else None
    return web_context(store.reports, TurnaroundTargets(), status, stores=store, **parts)


def add_user(ctx: WebContext, name: str, role: Role | str, password: str = PASSWORD) -> None:
    ctx.accounts.add_user(name, Role(role), password, by="test")


def basic(name: str, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def get(url: str, user: str, password: str = PASSWORD) -> bytes:
    """GET as `user` over HTTP Basic (only /api/... takes it)."""
    return bytes(urllib.request.urlopen(urllib.request.Request(url, headers=basic(user, password)), timeout=10).read())


def get_json(url: str, user: str, password: str = PASSWORD) -> Any:
    return json.loads(get(url, user, password))


def signed_in_opener(base: str, user: str, password: str = PASSWORD) -> urllib.request.OpenerDirector:
    """A urllib 'browser' signed in to the console at `base` (its session cookie kept)."""
    import http.cookiejar
    import urllib.parse

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    body = urllib.parse.urlencode({"username": user, "password": password, "next": "/"}).encode()
    opener.open(f"{base}/login", data=body, timeout=10).read()
    return opener


def add_node_user(home: Path, name: str, role: str, password: str = PASSWORD) -> None:
    """An account in the database of a node running with DICOM_AI_HOME=home (as `dicom-ai users add` makes it)."""
    from dicom_ai.store.accounts import Accounts
    from dicom_ai.store.database import Database

    database = Database(home / "dicom-ai.sqlite")
    try:
        Accounts(database).add_user(name, Role(role), password, by="test")
    finally:
        database.close()
