"""GET / (the reading worklist page), GET /?today=1 (what to read first today), GET /api/worklist (JSON),
GET /api/status (the node's health: queues, failures, disk; see store/health.py).

Read-only and small on purpose: the page is a view of the database that admins and radiologists
keep open; overrides go through `dicom-ai priority`, which audits them.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from dicom_ai.prioritize.worklist import WorklistEntry
from dicom_ai.store.health import NodeHealth

log = logging.getLogger(__name__)
COLOURS = {"STAT": "#c62828", "URGENT": "#ef6c00", "ROUTINE": "#2e7d32"}


def status_line(health: NodeHealth | None) -> str:
    """One line over the worklist for the admin who keeps the page open: queues, and any problem in red."""
    if health is None:
        return ""
    counts = ", ".join(f"{n} {html.escape(state)}" for state, n in sorted(health.studies.items())) or "no studies"
    pending = sum(row["n"] for row in health.sends if row["state"] == "pending")
    line = f"<p><b>Node {'OK' if health.ok else 'needs attention'}</b>: {counts}; {pending} send(s) pending."
    problems = "".join(f"<li>{html.escape(problem)}</li>" for problem in health.attention)
    return line + (f'</p><ul style="color:#c62828">{problems}</ul>' if problems else "</p>")


def render(entries: list[WorklistEntry], today: bool, health: NodeHealth | None = None) -> str:
    rows = []
    for rank, e in enumerate(entries, 1):
        level = e.priority.name
        late = ' <b style="color:#c62828">LATE</b>' if e.overdue > 1 else ""
        rows.append(
            f"<tr><td>{rank}</td><td style='color:{COLOURS[level]};font-weight:bold'>{level}</td>"
            f"<td>{e.waiting_minutes:.0f} min{late}</td><td>{html.escape(e.patient_id)}</td>"
            f"<td>{html.escape(e.accession_number)}</td><td>{html.escape(e.study_date)}</td>"
            f"<td>{html.escape(e.state)}</td><td><small>{html.escape('; '.join(e.reasons))}</small></td>"
            f"<td><small>{html.escape(e.study_instance_uid)}</small></td></tr>"
        )
    title = "What to read first today" if today else "Reading worklist"
    switch = '<a href="/">all studies</a>' if today else '<a href="/?today=1">today only</a>'
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<title>dicom-ai: {title}</title><style>body{{font-family:sans-serif;margin:1em}}
table{{border-collapse:collapse}} td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}}</style>
</head><body><h1>{title}</h1><p>Most urgent first (override, else AI priority, raised by waiting time), then
most overdue. {switch} &middot; <a href="/api/worklist">JSON</a>. AI results of demo models are not for clinical use.</p>
{status_line(health)}<table><tr><th>#</th><th>Priority</th><th>Waiting</th><th>Patient</th><th>Accession</th><th>Date</th><th>State</th>
<th>Why</th><th>Study</th></tr>{''.join(rows) or '<tr><td colspan="9">nothing to read</td></tr>'}</table></body></html>"""


def routes(worklist: Callable[[bool], list[WorklistEntry]], status: Callable[[], NodeHealth] | None = None) -> list[Route]:
    """The page and its JSON, as Starlette routes; plain functions, so Starlette runs their database
    reads on its thread pool, never on the event loop."""

    def today(request: Request) -> bool:
        return request.query_params.get("today", "0") in ("1", "true", "yes")

    def page(request: Request) -> Response:
        return HTMLResponse(render(worklist(today(request)), today(request), status() if status is not None else None))

    def api_worklist(request: Request) -> Response:
        return _json([asdict(e) | {"priority": e.priority.name} for e in worklist(today(request))])

    found = [Route("/", page, methods=["GET"]), Route("/api/worklist", api_worklist, methods=["GET"])]
    if status is not None:
        found.append(Route("/api/status", lambda _request: _json(asdict(status())), methods=["GET"]))
    return found


def _json(value: object) -> Response:
    return Response(json.dumps(value), media_type="application/json")
