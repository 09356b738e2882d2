"""The node's web app: the worklist page and its JSON (worklist_page.py), and with stow_receive the
STOW-RS endpoint (stow.py), in one Starlette app served by web/server.py."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from dicom_ai.domain import TurnaroundTargets
from dicom_ai.prioritize.worklist import current_worklist
from dicom_ai.store import Reports
from dicom_ai.store.health import NodeHealth
from dicom_ai.web import stow, worklist_page
from dicom_ai.web.server import IDLE_TIMEOUT, WebServer

log = logging.getLogger(__name__)


def build_app(reports: Reports, targets: TurnaroundTargets, status: Callable[[], NodeHealth] | None = None,
              stow_receive: stow.StowReceive | None = None) -> Starlette:
    routes = worklist_page.routes(lambda today: current_worklist(reports, targets, today), status)
    hint = "try /, /api/worklist or /api/status"
    if stow_receive is not None:
        routes += stow.routes(stow_receive)
        hint += f", or POST STOW-RS to {stow.PREFIX}/studies"

    async def http_error(_request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        text = f"not found: {hint}" if code == 404 else (exc.detail if isinstance(exc, HTTPException) else "error")
        return PlainTextResponse(f"{text}\n", code)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def start_web(host: str, port: int, reports: Reports, targets: TurnaroundTargets,
              status: Callable[[], NodeHealth] | None = None, idle_timeout: float = IDLE_TIMEOUT,
              stow_receive: stow.StowReceive | None = None) -> WebServer:
    """Serve the page (and STOW-RS) on host:port (0: any free port, see `.port`); `.stop()` ends it."""
    server = WebServer(build_app(reports, targets, status, stow_receive), host, port, idle_timeout).start()
    log.info("worklist page on http://%s:%d/%s", host, server.port,
             f"; STOW-RS on http://{host}:{server.port}{stow.PREFIX}/studies" if stow_receive else "")
    return server
