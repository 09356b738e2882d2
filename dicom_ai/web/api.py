"""The console's JSON API, one route per page (scripts sign in with HTTP Basic; see auth.py).

GET /api/studies (search: patient_id, accession_number, study_date, state, model, priority, limit),
/api/studies/{uid}, /api/worklist, /api/status, /api/models, /api/audit, /api/users (admin),
/api/schema (this list as OpenAPI); /api/models/{name}/performance is in validation_view.py.
POST /api/studies/{uid}/priority {"level", "reason"} (radiologist),
/api/studies/{uid}/feedback {"model", "label", "truth", "comment"} (radiologist),
/api/studies/{uid}/retry, /discard, /resend, /discard-sends (admin), /api/users {"name", "role", "password"} (admin).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from anyio import to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from dicom_ai.prioritize.worklist import current_worklist
from dicom_ai.store.accounts import AccountError, Role, User
from dicom_ai.web import actions, views
from dicom_ai.web.auth import acting, require
from dicom_ai.web.context import WebContext
from dicom_ai.web.pages import SEARCH_KEYS, audit_query
from dicom_ai.web.validation_view import judgements

MAX_LIMIT = 1000
SCHEMA = SchemaGenerator({"openapi": "3.0.0", "info": {"title": "dicom-ai console API", "version": "1"}})


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, default=str), status, media_type="application/json")


def routes(ctx: WebContext) -> list[Route]:
    def studies(request: Request) -> Response:
        """Search studies, newest first.
        ---
        summary: Search studies, newest first.
        """
        query = {key: request.query_params.get(key) or None for key in SEARCH_KEYS}
        try:
            limit = min(int(request.query_params.get("limit", "100")), MAX_LIMIT)
        except ValueError:
            raise HTTPException(400, "limit: a whole number") from None
        return _json([asdict(row) for row in ctx.reports.studies(limit=limit, **query)])  # type: ignore[arg-type]

    def study(request: Request) -> Response:
        """One study: findings, sends, audit trail.
        ---
        summary: One study - findings, sends, audit trail.
        """
        detail = ctx.reports.study_detail(request.path_params["uid"])
        if detail is None:
            raise HTTPException(404, f"no study {request.path_params['uid']} on this node")
        detail["results"] = [{k: v for k, v in r.items() if k != "path"} for r in ctx.reports.results_of(request.path_params["uid"])]
        detail["judgements"] = [j.public() for j in judgements(ctx, request.path_params["uid"], detail["findings"])]
        return _json(detail)

    def worklist(request: Request) -> Response:
        """The reading order.
        ---
        summary: The reading order.
        """
        today = request.query_params.get("today", "0") in ("1", "true", "yes")
        return _json([asdict(e) | {"priority": e.priority.name} for e in current_worklist(ctx.reports, ctx.targets, today)])

    def status(_request: Request) -> Response:
        """The node's health (as `dicom-ai status --json`) with turnaround and sends per carrier.
        ---
        summary: The node's health (as `dicom-ai status --json`) with turnaround and sends per carrier.
        """
        health = asdict(ctx.status()) if ctx.status is not None else None
        now = time.time()
        return _json({**(health or {}), "turnaround_24h": views.turnaround(ctx, now), "carriers": views.carriers(ctx)})

    def models(_request: Request) -> Response:
        """Model cards, load state, studies and latency over 24 h.
        ---
        summary: Model cards, load state, studies and latency over 24 h.
        """
        return _json([m.public() for m in views.models(ctx, time.time())])

    def audit(request: Request) -> Response:
        """Audit events: kind, by, study, since, until (YYYY-MM-DD).
        ---
        summary: Audit events - kind, by, study, since, until (YYYY-MM-DD).
        """
        _, events = audit_query(ctx, request, limit=1000)
        return _json(events)

    def users(request: Request) -> Response:
        """Accounts (admin).
        ---
        summary: Accounts (admin).
        """
        require(request, Role.ADMIN)
        return _json([{"name": u.name, "role": u.role.value, "created_at": u.created_at,
                       "password_changed_at": u.password_changed_at} for u in ctx.accounts.users()])

    def change(needed: Role, act: Callable[[Request, User, dict[str, Any]], str]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            user, body = await acting(request, needed)
            try:
                done = await to_thread.run_sync(act, request, user, body)
            except actions.ActionError as exc:
                return _json({"error": str(exc)}, exc.status)
            except AccountError as exc:
                return _json({"error": str(exc)}, 400)
            return _json({"ok": True, "message": done})
        return endpoint

    def add_user(_request: Request, by: User, body: dict[str, Any]) -> str:
        role = str(body.get("role", ""))
        if role not in {r.value for r in Role}:
            raise AccountError(f"role {role!r}: choose admin, radiologist or viewer")
        return f"added {ctx.accounts.add_user(str(body.get('name', '')), Role(role), str(body.get('password', '')), by.name).name}"

    def uid(request: Request) -> str:
        return str(request.path_params["uid"])

    def schema(request: Request) -> Response:
        """This API as OpenAPI 3.
        ---
        summary: This API as OpenAPI 3.
        """
        return JSONResponse(SCHEMA.get_schema(routes=[r for r in request.app.routes if getattr(r, "path", "").startswith("/api/")]))

    return [
        Route("/api/studies", studies, methods=["GET"]),
        Route("/api/studies/{uid}", study, methods=["GET"]),
        Route("/api/worklist", worklist, methods=["GET"]),
        Route("/api/status", status, methods=["GET"]),
        Route("/api/models", models, methods=["GET"]),
        Route("/api/audit", audit, methods=["GET"]),
        Route("/api/users", users, methods=["GET"]),
        Route("/api/schema", schema, methods=["GET"], include_in_schema=False),
        Route("/api/studies/{uid}/priority", change(Role.RADIOLOGIST, lambda r, u, b: actions.override_priority(
            ctx, u, uid(r), str(b.get("level", "")), str(b.get("reason", "")))), methods=["POST"]),
        Route("/api/studies/{uid}/feedback", change(Role.RADIOLOGIST, lambda r, u, b: actions.give_feedback(
            ctx, u, uid(r), str(b.get("model", "")), str(b.get("label", "")), str(b.get("truth", "")),
            str(b.get("comment", "")))), methods=["POST"]),
        Route("/api/studies/{uid}/retry", change(Role.ADMIN, lambda r, u, b: actions.retry_study(ctx, u, uid(r))),
              methods=["POST"]),
        Route("/api/studies/{uid}/discard", change(Role.ADMIN, lambda r, u, b: actions.discard_study(ctx, u, uid(r))),
              methods=["POST"]),
        Route("/api/studies/{uid}/resend", change(Role.ADMIN, lambda r, u, b: actions.resend(ctx, u, uid(r))),
              methods=["POST"]),
        Route("/api/studies/{uid}/discard-sends", change(Role.ADMIN, lambda r, u, b: actions.discard_sends(ctx, u, uid(r))),
              methods=["POST"]),
        Route("/api/users", change(Role.ADMIN, add_user), methods=["POST"]),
        Route("/api/models/{name}", change(Role.ADMIN, lambda r, u, b: actions.set_model_enabled(
            ctx, u, str(r.path_params["name"]), bool(b.get("enabled", True)))), methods=["POST"]),
    ]
