"""Who is asking: a signed-in browser (session cookie) or a script (HTTP Basic on /api/...), and what
they may do.

`SignIn` is an ASGI middleware in front of the whole app: only `/healthz`, `/metrics`, the sign-in
page and STOW-RS (which keeps its own credentials, web/stow.py) answer anonymously; anonymous
`/api/...` requests get 401, pages a redirect to `/login`. A state change goes through `acting()`:
the role must allow it (403), and a browser's request must carry its session's CSRF token (form
field `csrf_token` or header `X-CSRF-Token`); a script's must be JSON (a cross-site form cannot send
that without the browser asking first).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from anyio import to_thread
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from dicom_ai.store.accounts import Accounts, Role, Session, User

log = logging.getLogger(__name__)

SESSION_COOKIE = "dicom_ai_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
ANONYMOUS_PATHS = ("/healthz", "/metrics", "/login")
ANONYMOUS_PREFIXES = ("/dicom-web/", "/static/")
REALM = 'Basic realm="dicom-ai", charset="UTF-8"'
FORBIDDEN = 403
UNAUTHORIZED = 401
TOO_MANY = 429


@dataclass(frozen=True)
class Identity:
    """The person behind a request; `session` is None for HTTP Basic (a script)."""

    user: User
    session: Session | None

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token if self.session else ""


def client_address(scope: Scope | Request) -> str:
    client = scope.client if isinstance(scope, Request) else scope.get("client")
    return str(client[0]) if client else "?"


def login_keys(name: str, address: str) -> list[str]:
    """Failed sign-ins are counted per user name and per address."""
    return [f"user:{name}", f"address:{address}"]


class SignIn:
    """ASGI middleware: puts the Identity on `request.state.identity`, or refuses the request."""

    def __init__(self, app: ASGIApp, accounts: Accounts, idle_s: float) -> None:
        self.app = app
        self.accounts = accounts
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in ANONYMOUS_PATHS or path.startswith(ANONYMOUS_PREFIXES):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        identity: Identity | None = None
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            session = await to_thread.run_sync(self.accounts.session, token, self.idle_s)
            identity = Identity(session.user, session) if session else None
        basic = request.headers.get("authorization", "")
        if identity is None and basic.lower().startswith("basic ") and path.startswith("/api/"):
            identity, refusal = await to_thread.run_sync(self._basic, basic, client_address(scope))
            if refusal is not None:
                await _plain(refusal[0], refusal[1], send, {"retry-after": refusal[2]} if refusal[2] else {})
                return
        if identity is None:
            if path.startswith("/api/"):
                await _plain(UNAUTHORIZED, "sign in: HTTP Basic with a console account (dicom-ai users add)", send,
                             {"www-authenticate": REALM})
            else:
                target = path + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
                await _redirect(f"/login?next={quote(target, safe='')}", send)
            return
        scope.setdefault("state", {})["identity"] = identity
        await self.app(scope, receive, send)

    def _basic(self, header: str, address: str) -> tuple[Identity | None, tuple[int, str, str] | None]:
        try:
            name, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, (UNAUTHORIZED, "malformed HTTP Basic credentials", "")
        keys = login_keys(name, address)
        wait = self.accounts.wait_before_login(keys)
        if wait > 0:
            return None, (TOO_MANY, f"too many failed sign-ins: try again in {wait:.0f} s", str(int(wait) + 1))
        user = self.accounts.verify(name, password)
        if user is None:
            self.accounts.login_failed(keys)
            log.warning("web: failed HTTP Basic sign-in as %r from %s", name, address)
            return None, (UNAUTHORIZED, "wrong user name or password", "")
        self.accounts.login_succeeded(keys)
        return Identity(user, None), None


def identity_of(request: Request) -> Identity:
    identity = request.state.identity
    assert isinstance(identity, Identity)  # SignIn put it there, or refused the request
    return identity


def require(request: Request, needed: Role) -> User:
    """The user, when their role allows `needed`; else 403 naming the role it takes."""
    user = identity_of(request).user
    if not user.role.may(needed):
        raise HTTPException(FORBIDDEN, f"{user.name} is a {user.role.value}: this takes the {needed.value} role")
    return user


async def acting(request: Request, needed: Role) -> tuple[User, dict[str, Any]]:
    """A state-changing request: the role check, the CSRF check (browsers) and its fields (form or JSON)."""
    user = require(request, needed)
    identity = identity_of(request)
    is_json = request.headers.get("content-type", "").split(";")[0].strip() == "application/json"
    data: dict[str, Any]
    if is_json:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPException(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "send a JSON object")
        data = body
    elif identity.session is None:
        raise HTTPException(415, "send JSON (Content-Type: application/json)")
    else:
        form = await request.form()
        data = {key: value for key, value in form.multi_items() if isinstance(value, (str, UploadFile))}
    if identity.session is not None:
        token = request.headers.get(CSRF_HEADER) or (data.get(CSRF_FIELD) if isinstance(data.get(CSRF_FIELD), str) else "")
        if not hmac.compare_digest(str(token or ""), identity.session.csrf_token):
            log.warning("web: refused a %s to %s by %s: no or a wrong CSRF token", request.method, request.url.path,
                        user.name)
            raise HTTPException(FORBIDDEN, "the form is out of date or from another site: reload the page and try again")
    return user, data


async def _plain(status: int, text: str, send: Send, headers: dict[str, str] | None = None) -> None:
    body = f"{text}\n".encode()
    raw = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _redirect(location: str, send: Send) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode()), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
