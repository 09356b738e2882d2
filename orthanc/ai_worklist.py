"""A reading worklist inside Orthanc: studies sorted by AI priority, then by how long they have waited.

Orthanc 1.10.1 has no labels and its tools/find ignores OrderBy and MetadataQuery, so the plugin
sorts itself: GET /dicom-ai/worklist (JSON) and GET /dicom-ai/worklist.html (a page linked from
Orthanc Explorer's home page). The router writes AiPriority, AiScore, AiFindings and AiReasons;
this plugin stamps AiArrived on each new study so waiting time survives results arriving later.
Runs on the system Python inside Orthanc: standard library only, imported by forward_to_router.py.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

META_ARRIVED = "AiArrived"  # study level, written here on NEW_STUDY (UTC, ISO 8601 with microseconds)
STUDY_METADATA = ("AiPriority", "AiScore", "AiFindings", "AiReasons", "AiModel", META_ARRIVED)
PRIORITY_RANK = {"STAT": 0, "URGENT": 1, "ROUTINE": 2}  # no AI priority yet: after ROUTINE
WORKLIST_ROUTE = "/dicom-ai/worklist"
PAGE_ROUTE = "/dicom-ai/worklist.html"
EXPLORER_JS = """
$('#lookup').live('pagebeforeshow', function() {
  if ($('#dicom-ai-worklist').length == 0) {
    $('#lookup').find('div[data-role=content]').first().prepend(
      '<p id="dicom-ai-worklist"><a href="../dicom-ai/worklist.html" data-ajax="false" target="_blank">' +
      'AI reading worklist (most urgent first)</a></p>');
  }
});
"""


def utc_now() -> datetime:
    return datetime.now(UTC)


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    for layout in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, layout).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def orthanc_time(text: str | None) -> datetime | None:
    """Orthanc's own timestamps (LastUpdate) look like 20261128T125501."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def worklist_entries(
    studies: Sequence[Mapping[str, Any]], metadata: Mapping[str, Mapping[str, str]], now: datetime
) -> list[dict[str, Any]]:
    """One entry per study, in reading order: priority, then longest waiting first."""
    entries = []
    arrival: dict[str, datetime] = {}
    for study in studies:
        meta = metadata.get(study["ID"], {})
        tags = study.get("MainDicomTags", {})
        patient = study.get("PatientMainDicomTags", {})
        arrived = parse_time(meta.get(META_ARRIVED)) or orthanc_time(study.get("LastUpdate")) or now
        priority = meta.get("AiPriority", "")
        arrival[study["ID"]] = arrived
        entries.append({
            "ID": study["ID"],
            "StudyInstanceUID": tags.get("StudyInstanceUID", ""),
            "PatientID": patient.get("PatientID", ""),
            "PatientName": patient.get("PatientName", ""),
            "AccessionNumber": tags.get("AccessionNumber", ""),
            "StudyDate": tags.get("StudyDate", ""),
            "StudyDescription": tags.get("StudyDescription", ""),
            "AiPriority": priority,
            "AiScore": meta.get("AiScore", ""),
            "AiFindings": meta.get("AiFindings", ""),
            "AiReasons": meta.get("AiReasons", ""),
            "AiModel": meta.get("AiModel", ""),
            "WaitingMinutes": round(max(0.0, (now - arrived).total_seconds() / 60), 1),
        })
    entries.sort(key=lambda e: (PRIORITY_RANK.get(e["AiPriority"], len(PRIORITY_RANK)), arrival[e["ID"]],
                                e["StudyInstanceUID"]))
    return entries


def render_page(entries: Sequence[Mapping[str, Any]]) -> str:
    """A plain page a radiologist can keep open: one row per study, a link into Orthanc Explorer."""
    colours = {"STAT": "#c62828", "URGENT": "#ef6c00", "ROUTINE": "#2e7d32"}
    rows = []
    for rank, entry in enumerate(entries, 1):
        level = entry["AiPriority"] or "-"
        esc = {k: html.escape(str(v)) for k, v in entry.items()}
        rows.append(
            f'<tr><td>{rank}</td><td style="color:{colours.get(level, "#555")};font-weight:bold">{html.escape(level)}'
            f'</td><td>{esc["WaitingMinutes"]} min</td><td>{esc["PatientName"]}<br><small>{esc["PatientID"]}'
            f'</small></td><td>{esc["AccessionNumber"]}</td><td>{esc["StudyDate"]}</td><td>{esc["StudyDescription"]}'
            f'</td><td>{esc["AiFindings"]}</td><td><small>{esc["AiReasons"]}</small></td>'
            f'<td><a href="../app/explorer.html#study?uuid={esc["ID"]}">open</a></td></tr>'
        )
    body = "\n".join(rows) or '<tr><td colspan="10">no studies</td></tr>'
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<title>AI reading worklist</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}</style></head>
<body><h1>AI reading worklist</h1>
<p>Most urgent first, then longest waiting. AI priorities come from dicom-ai; demo models are not for
clinical use. Refreshes every 30 s.</p>
<table><tr><th>#</th><th>Priority</th><th>Waiting</th><th>Patient</th><th>Accession</th><th>Date</th>
<th>Description</th><th>AI findings</th><th>Why</th><th></th></tr>
{body}
</table></body></html>
"""


def collect(get_json: Callable[[str], Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """Studies (expanded) and each one's user metadata, over Orthanc's REST API."""
    studies = get_json("/studies?expand")
    metadata = {}
    for study in studies:
        metadata[study["ID"]] = {
            key: value for key, value in get_json(f"/studies/{study['ID']}/metadata?expand").items()
            if key in STUDY_METADATA
        }
    return studies, metadata


def install(
    orthanc: Any, rest_get: Callable[[str], Any], rest_put: Callable[[str, str], Any], log: Any
) -> Callable[[str], None]:
    """Register the routes and the Explorer link; returns the AiArrived stamp to call on NEW_STUDY."""

    def get_json(uri: str) -> Any:
        return json.loads(rest_get(uri))

    def answer(output: Any, uri: str, **request: Any) -> None:
        if request["method"] != "GET":
            output.SendMethodNotAllowed("GET")
            return
        entries = worklist_entries(*collect(get_json), now=utc_now())
        if uri.endswith(".html"):
            output.AnswerBuffer(render_page(entries), "text/html; charset=utf-8")
        else:
            output.AnswerBuffer(json.dumps(entries), "application/json")

    def stamp_arrival(study_id: str) -> None:
        try:
            rest_put(f"/studies/{study_id}/metadata/{META_ARRIVED}", utc_now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        except Exception as exc:  # never let bookkeeping break reception
            log.warning(f"dicom-ai worklist: cannot set {META_ARRIVED} on study {study_id}: {exc}")

    orthanc.RegisterRestCallback(WORKLIST_ROUTE, answer)
    orthanc.RegisterRestCallback(PAGE_ROUTE, answer)
    orthanc.ExtendOrthancExplorer(EXPLORER_JS)
    return stamp_arrival
