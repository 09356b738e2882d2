"""GET / (the reading worklist page), GET /?today=1 (what to read first today), GET /api/worklist (JSON),
GET /api/status (the node's health: queues, failures, disk; see store/health.py).

Read-only and small on purpose: the page is a view of the database that admins and radiologists
keep open; overrides go through `dicom-ai priority`, which audits them.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from dicom_ai.domain import TurnaroundTargets
from dicom_ai.prioritize.worklist import WorklistEntry, current_worklist
from dicom_ai.store import Reports
from dicom_ai.store.health import NodeHealth
from dicom_ai.web.server import IDLE_TIMEOUT, BoundedHTTPServer

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


def make_handler(worklist: Callable[[bool], list[WorklistEntry]],
                 status: Callable[[], NodeHealth] | None = None,
                 idle_timeout: float = IDLE_TIMEOUT) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = idle_timeout  # per read and write: an idle connection is closed, its thread ends

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            today = parse_qs(url.query).get("today", ["0"])[0] in ("1", "true", "yes")
            if url.path == "/api/worklist":
                body = json.dumps([asdict(e) | {"priority": e.priority.name} for e in worklist(today)]).encode()
                kind = "application/json"
            elif url.path == "/api/status" and status is not None:
                body = json.dumps(asdict(status())).encode()
                kind = "application/json"
            elif url.path == "/":
                body = render(worklist(today), today, status() if status is not None else None).encode()
                kind = "text/html; charset=utf-8"
            else:
                self.send_error(404, "not found: try /, /api/worklist or /api/status")
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("web: " + format, *args)

    return Handler


def start_web(host: str, port: int, reports: Reports, targets: TurnaroundTargets,
              status: Callable[[], NodeHealth] | None = None, idle_timeout: float = IDLE_TIMEOUT) -> BoundedHTTPServer:
    server = BoundedHTTPServer((host, port), make_handler(lambda today: current_worklist(reports, targets, today),
                                                          status, idle_timeout))
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    log.info("worklist page on http://%s:%d/", host, server.server_address[1])
    return server
