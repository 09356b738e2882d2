"""The console's pages (Jinja2 templates under web/templates): sign-in, dashboard, studies, a study,
worklist, models, users, audit. Reads are plain functions (Starlette runs them on its thread pool);
changes go through auth.acting() (role + CSRF) and web/actions.py, then redirect back (303)."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from anyio import to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from dicom_ai.domain import StudyState
from dicom_ai.prioritize.worklist import current_worklist
from dicom_ai.store.accounts import AccountError, Role
from dicom_ai.store.health import human_size
from dicom_ai.web import actions, views
from dicom_ai.web.auth import SESSION_COOKIE, TOO_MANY, acting, client_address, identity_of, login_keys, require
from dicom_ai.web.context import WebContext
from dicom_ai.web.results_view import png_of, sr_lines
from dicom_ai.web.validation_view import drift_summary, judgements

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
NAV = (("/", "Dashboard", Role.VIEWER), ("/studies", "Studies", Role.VIEWER), ("/worklist", "Worklist", Role.VIEWER),
       ("/models", "Models", Role.VIEWER), ("/rules", "Rules", Role.VIEWER), ("/audit", "Audit", Role.VIEWER),
       ("/users", "Users", Role.ADMIN))
SEE_OTHER = 303
SEARCH_KEYS = ("patient_id", "accession_number", "study_date", "state", "model", "priority")


def _when(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "-"


def templates() -> Jinja2Templates:
    found = Jinja2Templates(directory=str(TEMPLATES))
    found.env.filters["when"] = _when
    found.env.filters["size"] = human_size
    return found


class Pages:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.templates = templates()

    def render(self, request: Request, template: str, title: str, here: str, **values: Any) -> Response:
        identity = identity_of(request)
        status = int(values.pop("status", 200))
        return self.templates.TemplateResponse(request, template, {
            "title": title, "here": here, "nav": NAV, "user": identity.user, "csrf_token": identity.csrf_token,
            "done": request.query_params.get("done"), "problem": request.query_params.get("problem"),
            "admin": Role.ADMIN, "radiologist": Role.RADIOLOGIST, **values}, status_code=status)

    # sign-in ---------------------------------------------------------------------------------

    def login_page(self, request: Request) -> Response:
        return self.templates.TemplateResponse(request, "login.html", {"next": _safe_next(request.query_params.get("next")),
                                                                       "problem": None})

    async def login(self, request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("username", "")).strip(), str(form.get("password", ""))
        target = _safe_next(str(form.get("next", "/")))
        address = client_address(request)
        keys = login_keys(name, address)
        wait = await to_thread.run_sync(self.ctx.accounts.wait_before_login, keys)
        if wait > 0:
            return self._login_refused(request, target, f"too many failed sign-ins: wait {wait:.0f} s and try again",
                                       TOO_MANY, {"Retry-After": str(int(wait) + 1)})
        user = await to_thread.run_sync(self.ctx.accounts.verify, name, password)
        if user is None:
            await to_thread.run_sync(self.ctx.accounts.login_failed, keys)
            log.warning("web: failed sign-in as %r from %s", name, address)
            return self._login_refused(request, target, "wrong user name or password", 401)
        await to_thread.run_sync(self.ctx.accounts.login_succeeded, keys)
        token = await to_thread.run_sync(self.ctx.accounts.open_session, user, address)
        response = RedirectResponse(target, SEE_OTHER)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=self.ctx.https, path="/")
        return response

    def _login_refused(self, request: Request, target: str, problem: str, status: int,
                       headers: dict[str, str] | None = None) -> Response:
        return self.templates.TemplateResponse(request, "login.html", {"next": target, "problem": problem},
                                               status_code=status, headers=headers)

    async def logout(self, request: Request) -> Response:
        user, _ = await acting(request, Role.VIEWER)
        token = request.cookies.get(SESSION_COOKIE, "")
        await to_thread.run_sync(lambda: self.ctx.accounts.close_session(token, by=user.name))
        response = RedirectResponse("/login", SEE_OTHER)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # reads -----------------------------------------------------------------------------------

    def dashboard(self, request: Request) -> Response:
        return self.render(request, "dashboard.html", "Dashboard", "/", **views.dashboard(self.ctx))

    def studies(self, request: Request) -> Response:
        query = {key: request.query_params.get(key) or None for key in SEARCH_KEYS}
        rows = self.ctx.reports.studies(limit=200, **query)  # type: ignore[arg-type]
        return self.render(request, "studies.html", "Studies", "/studies", rows=rows, q=query,
                           states=[s.value for s in StudyState])

    def study(self, request: Request) -> Response:
        uid = request.path_params["uid"]
        detail = self.ctx.reports.study_detail(uid)
        if detail is None:
            raise HTTPException(404, f"no study {uid} on this node")
        results = self.ctx.reports.results_of(uid)
        reports = []
        for result in results:
            if result["kind"] == "SR" and Path(result["path"]).is_file():
                try:
                    reports.append({"model": result["model"], "lines": sr_lines(Path(result["path"]))})
                except Exception as exc:  # noqa: BLE001: a damaged file is shown as such, not a 500
                    reports.append({"model": result["model"], "lines": [(0, f"cannot read {result['path']}: {exc}")]})
        images = [r for r in results if r["kind"] == "SC" and Path(r["path"]).is_file()]
        shadow = next((set(json.loads(e["detail"] or "{}").get("models", [])) for e in reversed(detail["events"])
                       if e["kind"] == "shadow_results"), set())  # the last run's shadow models: recorded, not sent
        return self.render(request, "study.html", f"Study {uid}", "/studies", detail=detail, reports=reports, images=images,
                           shadow=shadow, judgements=judgements(self.ctx, uid, detail["findings"]))

    def result_png(self, request: Request) -> Response:
        uid, sop = request.path_params["uid"], request.path_params["sop"]
        rows = [r for r in self.ctx.reports.results_of(uid) if r["sop_instance_uid"] == sop and r["kind"] == "SC"]
        if not rows or not Path(rows[0]["path"]).is_file():
            raise HTTPException(404, f"no heatmap {sop} in study {uid} (deleted after retention_days?)")
        return Response(png_of(Path(rows[0]["path"])), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    def worklist(self, request: Request) -> Response:
        today = request.query_params.get("today", "0") in ("1", "true", "yes")
        entries = current_worklist(self.ctx.reports, self.ctx.targets, today)
        return self.render(request, "worklist.html", "What to read first today" if today else "Reading worklist",
                           "/worklist", entries=entries, today=today)

    def models(self, request: Request) -> Response:
        found = views.models(self.ctx, time.time())
        problems = self.ctx.models.problems() if self.ctx.models is not None else {}
        shown = [{"name": m.name, "card": m.card, "state": m.state, "backend": m.backend, "studies": m.studies,
                  "enabled": m.enabled, "drift": drift_summary(self.ctx, m.name),
                  "latency": m.latency, "metrics": json.dumps(m.card.metrics) if m.card and m.card.metrics else ""}
                 for m in found if m.card is not None]
        return self.render(request, "models.html", "Models", "/models", models=shown, problems=problems)

    def users(self, request: Request) -> Response:
        require(request, Role.ADMIN)
        return self.render(request, "users.html", "Users", "/users", users=self.ctx.accounts.users(),
                           roles=[r.value for r in Role])

    def audit(self, request: Request) -> Response:
        query, events = self._audit(request)
        return self.render(request, "audit.html", "Audit", "/audit", events=events, q=query,
                           kinds=self.ctx.reports.event_kinds(), query=urlencode({k: v for k, v in query.items() if v}))

    def audit_csv(self, request: Request) -> Response:
        _, events = self._audit(request, limit=100_000)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["time_utc", "event", "by", "study_instance_uid", "detail"])
        for e in events:
            writer.writerow([datetime.utcfromtimestamp(e["at"]).isoformat(timespec="seconds") + "Z", e["kind"], e["by"],
                             e["study_instance_uid"] or "", e["detail"]])
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="dicom-ai-audit.csv"'})

    def _audit(self, request: Request, limit: int = 500) -> tuple[dict[str, str], list[dict[str, Any]]]:
        return audit_query(self.ctx, request, limit)

    # changes ---------------------------------------------------------------------------------

    def _change(self, needed: Role, act: Callable[[Request, Any, dict[str, Any]], str]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            user, form = await acting(request, needed)
            back = _safe_next(str(form.get("back") or request.headers.get("referer", "/")))
            try:
                done = await to_thread.run_sync(act, request, user, form)
            except (actions.ActionError, AccountError) as exc:
                return RedirectResponse(_with(back, problem=str(exc)), SEE_OTHER)
            return RedirectResponse(_with(back, done=done), SEE_OTHER)
        return endpoint

    def routes(self) -> list[Route]:
        ctx, uid = self.ctx, lambda r: r.path_params["uid"]
        return [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", self.dashboard, methods=["GET"]),
            Route("/studies", self.studies, methods=["GET"]),
            Route("/studies/{uid}", self.study, methods=["GET"]),
            Route("/studies/{uid}/results/{sop}.png", self.result_png, methods=["GET"]),
            Route("/worklist", self.worklist, methods=["GET"]),
            Route("/models", self.models, methods=["GET"]),
            Route("/users", self.users, methods=["GET"]),
            Route("/audit", self.audit, methods=["GET"]),
            Route("/audit.csv", self.audit_csv, methods=["GET"]),
            Route("/studies/{uid}/priority", self._change(Role.RADIOLOGIST, lambda r, u, f: actions.override_priority(
                ctx, u, uid(r), str(f.get("level", "")), str(f.get("reason", "")))), methods=["POST"]),
            Route("/studies/{uid}/feedback", self._change(Role.RADIOLOGIST, lambda r, u, f: actions.give_feedback(
                ctx, u, uid(r), str(f.get("model", "")), str(f.get("label", "")), str(f.get("truth", "")),
                str(f.get("comment", "")))), methods=["POST"]),
            Route("/studies/{uid}/retry", self._change(Role.ADMIN, lambda r, u, f: actions.retry_study(ctx, u, uid(r))),
                  methods=["POST"]),
            Route("/studies/{uid}/discard", self._change(Role.ADMIN, lambda r, u, f: actions.discard_study(ctx, u, uid(r))),
                  methods=["POST"]),
            Route("/studies/{uid}/resend", self._change(Role.ADMIN, lambda r, u, f: actions.resend(ctx, u, uid(r))),
                  methods=["POST"]),
            Route("/studies/{uid}/discard-sends", self._change(
                Role.ADMIN, lambda r, u, f: actions.discard_sends(ctx, u, uid(r))), methods=["POST"]),
            Route("/models/{name}/enable", self._change(Role.ADMIN, lambda r, u, f: actions.set_model_enabled(
                ctx, u, r.path_params["name"], True)), methods=["POST"]),
            Route("/models/{name}/disable", self._change(Role.ADMIN, lambda r, u, f: actions.set_model_enabled(
                ctx, u, r.path_params["name"], False)), methods=["POST"]),
            Route("/users", self._change(Role.ADMIN, lambda r, u, f: _add_user(ctx, u, f)), methods=["POST"]),
            Route("/users/{name}/role", self._change(Role.ADMIN, lambda r, u, f: _set_role(ctx, u, r.path_params["name"], f)),
                  methods=["POST"]),
            Route("/users/{name}/remove", self._change(Role.ADMIN, lambda r, u, f: _remove_user(ctx, u, r.path_params["name"])),
                  methods=["POST"]),
        ]


def audit_query(ctx: WebContext, request: Request, limit: int) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The audit filters of a request (kind, by, study, since/until as YYYY-MM-DD) and the matching events."""
    query = {key: request.query_params.get(key, "").strip() for key in ("kind", "by", "study", "since", "until")}
    bounds = {}
    for key in ("since", "until"):
        if query[key]:
            try:
                bounds[key] = datetime.strptime(query[key], "%Y-%m-%d").timestamp() + (86400 if key == "until" else 0)
            except ValueError:
                raise HTTPException(400, f"{key}={query[key]!r}: write a date as YYYY-MM-DD") from None
    events = ctx.reports.audit(kind=query["kind"] or None, by=query["by"] or None, study_uid=query["study"] or None,
                               since=bounds.get("since"), until=bounds.get("until"), limit=limit)
    for event in events:
        detail = json.loads(event["detail"] or "{}")
        event["by"] = detail.get("by") or detail.get("author") or ""
    return query, events


def _add_user(ctx: WebContext, by: Any, form: dict[str, Any]) -> str:
    role = str(form.get("role", ""))
    if role not in {r.value for r in Role}:
        raise AccountError(f"role {role!r}: choose admin, radiologist or viewer")
    user = ctx.accounts.add_user(str(form.get("name", "")), Role(role), str(form.get("password", "")), by=by.name)
    return f"added {user.name} ({user.role.value})"


def _set_role(ctx: WebContext, by: Any, name: str, form: dict[str, Any]) -> str:
    role = str(form.get("role", ""))
    if role not in {r.value for r in Role}:
        raise AccountError(f"role {role!r}: choose admin, radiologist or viewer")
    ctx.accounts.set_role(name, Role(role), by=by.name)
    return f"{name} is now a {role}"


def _remove_user(ctx: WebContext, by: Any, name: str) -> str:
    ctx.accounts.remove_user(name, by=by.name)
    return f"removed {name}"


def _safe_next(target: str | None) -> str:
    """Only a path on this server (never //host or a scheme): no open redirect after sign-in."""
    if not target:
        return "/"
    if "://" in target:  # a Referer: keep its path
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _with(target: str, **message: str) -> str:
    path, _, query = target.partition("?")
    kept = [part for part in query.split("&") if part and not part.startswith(("done=", "problem="))]
    return f"{path}?{'&'.join([*kept, urlencode(message)])}"
