"""The reading worklist: most urgent first, and nothing waits forever.

A study's effective priority is the radiologist's override if there is one, else the AI's, and it
rises one level each time the study has waited longer than the turnaround target of its current
level (ROUTINE -> URGENT -> STAT). Within a level, the study most overdue against its target is
read first. Every entry carries the reasons for its place.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from dicom_ai.domain import Override, Priority, TurnaroundTargets
from dicom_ai.store.reports import Reports, StudyRow

# The worklist ranks the most recently received studies (filters run in SQL first); every state is
# listed: a study still arriving or being processed has no AI priority yet but waits to be read.
WORKLIST_WINDOW = 5000


@dataclass(frozen=True)
class WorklistEntry:
    study_instance_uid: str
    patient_id: str
    accession_number: str
    study_date: str
    state: str
    ai_priority: str | None
    priority: Priority
    waiting_minutes: float
    overdue: float  # time at the effective level / its target; > 1 is late
    reasons: tuple[str, ...]


def _duration(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min"


def effective_priority(
    base: Priority, waiting_minutes: float, targets: TurnaroundTargets
) -> tuple[Priority, tuple[str, ...], float]:
    """Promote one level per missed target; returns the level, the reasons and how overdue it is.

    Each promotion starts the clock of the new level: a ROUTINE study becomes URGENT after the
    ROUTINE target, and STAT after a further URGENT target. `overdue` is the time spent at the
    final level over its target (above 1 only at STAT, which has nowhere to go).
    """
    level, remaining, reasons = base, waiting_minutes, []
    while level < Priority.STAT and remaining > targets.minutes(level):
        reasons.append(
            f"waiting {_duration(waiting_minutes)} > {level.name} target {_duration(targets.minutes(level))}"
        )
        remaining -= targets.minutes(level)
        level = Priority(level + 1)
    return level, tuple(reasons), remaining / targets.minutes(level)


def build_worklist(rows: Iterable[StudyRow], now: float, targets: TurnaroundTargets) -> list[WorklistEntry]:
    """Entries for the given studies, in reading order."""
    entries = []
    for row in rows:
        waiting = max(0.0, (now - (row.first_received_at or row.last_received_at)) / 60)
        if row.priority_override:
            base = Priority[row.priority_override]
            reasons: tuple[str, ...] = (
                Override(base, row.priority_override_reason or "", row.priority_override_by or "").describe(),
            )
        else:
            base = Priority[row.priority] if row.priority else Priority.ROUTINE
            reasons = row.priority_reasons or (("no AI result",) if not row.priority else ())
        level, aged, overdue = effective_priority(base, waiting, targets)
        entries.append(
            WorklistEntry(
                study_instance_uid=row.study_instance_uid,
                patient_id=row.patient_id,
                accession_number=row.accession_number,
                study_date=row.study_date,
                state=row.state,
                ai_priority=row.priority,
                priority=level,
                waiting_minutes=waiting,
                overdue=overdue,
                reasons=reasons + aged,
            )
        )
    return sorted(entries, key=lambda e: (-e.priority, -e.overdue, e.study_instance_uid))


def local_midnight(now: float) -> float:
    return time.mktime(time.localtime(now)[:3] + (0, 0, 0, 0, 0, -1))


def current_worklist(
    reports: Reports, targets: TurnaroundTargets, today: bool = False, patient_id: str | None = None,
    now: float | None = None,
) -> list[WorklistEntry]:
    """The worklist of the studies in the database (today's only, one patient's only)."""
    now = time.time() if now is None else now
    rows = reports.studies(limit=WORKLIST_WINDOW, patient_id=patient_id,
                           received_since=local_midnight(now) if today else None)
    return build_worklist(rows, now, targets)
