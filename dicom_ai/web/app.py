"""The node's web app, one Starlette app served by web/server.py: the signed-in console (pages.py,
templates/), its JSON API (api.py), `/healthz` and `/metrics` (metrics.py) for monitors, and with
stow_receive the STOW-RS endpoint (stow.py), which keeps its own credentials. auth.SignIn stands in
front of everything else."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dicom_ai.domain import TurnaroundTargets
from dicom_ai.store import Reports
from dicom_ai.store.accounts import Accounts
from dicom_ai.store.health import NodeHealth
from dicom_ai.store.model_switches import ModelSwitches
from dicom_ai.web import api, stow
from dicom_ai.web.auth import SignIn
from dicom_ai.web.context import SESSION_IDLE_S, WebContext
from dicom_ai.web.metrics import CONTENT_TYPE, NodeCollector, metrics_text
from dicom_ai.web.pages import Pages
from dicom_ai.web.rules_console import RulesConsole
from dicom_ai.web.server import IDLE_TIMEOUT, WebServer
from dicom_ai.web.validation_view import ValidationConsole

log = logging.getLogger(__name__)


def web_context(reports: Reports, targets: TurnaroundTargets, status: Callable[[], NodeHealth] | None = None,
                **parts: object) -> WebContext:
    """A context over `reports`' database, its accounts opened on the same database."""
    return WebContext(reports, targets, Accounts(reports.database), status,
                      switches=ModelSwitches(reports.database), **parts)  # type: ignore[arg-type]


def build_app(ctx: WebContext, stow_receive: stow.StowReceive | None = None, home: Path | None = None) -> Starlette:
    pages = Pages(ctx)
    collector = NodeCollector(ctx.reports, home or ctx.reports.database.path.parent, ctx.rules)

    def metrics(_request: Request) -> Response:
        return Response(metrics_text(collector), media_type=CONTENT_TYPE)

    routes = [Route("/healthz", lambda _r: PlainTextResponse("ok\n"), methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"]), *pages.routes(), *api.routes(ctx),
              *RulesConsole(ctx, pages).routes(),
              *ValidationConsole(ctx, pages, home or ctx.reports.database.path.parent).routes()]
    if stow_receive is not None:
        routes += stow.routes(stow_receive)

    async def http_error(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        if code == 500:
            log.error("web: %s %s failed: %r", request.method, request.url.path, exc)
        text = exc.detail if isinstance(exc, HTTPException) else "the server failed on this request: see the node's log"
        if code == 404 and not isinstance(exc, HTTPException) or text == "Not Found":
            text = f"not found: {request.url.path}"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": text}, code)
        if getattr(request.state, "identity", None) is not None:
            return pages.render(request, "error.html", f"{code}", "", message=text, status=code)
        return PlainTextResponse(f"{text}\n", code)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: http_error},
                     middleware=[Middleware(SignIn, accounts=ctx.accounts, idle_s=ctx.session_idle_s)])


def start_web(host: str, port: int, ctx: WebContext, idle_timeout: float = IDLE_TIMEOUT,
              stow_receive: stow.StowReceive | None = None, tls: ssl.SSLContext | None = None,
              home: Path | None = None) -> WebServer:
    """Serve the console (and STOW-RS) on host:port (0: any free port, see `.port`); `.stop()` ends it."""
    server = WebServer(build_app(ctx, stow_receive, home), host, port, idle_timeout, tls=tls).start()
    scheme = "https" if tls else "http"
    log.info("console on %s://%s:%d/%s", scheme, host, server.port,
             f"; STOW-RS on {scheme}://{host}:{server.port}{stow.PREFIX}/studies" if stow_receive else "")
    return server


__all__ = ["SESSION_IDLE_S", "WebContext", "build_app", "start_web", "web_context"]
