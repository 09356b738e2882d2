"""The node's health in one look: queues, failures, disk. For `dicom-ai status` and GET /api/status.

Each problem comes with what to do about it, and `ok` is false while any is open, so a monitoring
check can run `dicom-ai status` (exit 1) or poll the JSON.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_ai.store.reports import Reports

STALE_SEND_S = 600.0  # a send pending this long means the destination is down or refusing
STUCK_PROCESSING_S = 900.0  # no model takes this long on one study
LOW_DISK_FRACTION = 0.05
LOW_DISK_BYTES = 5e9
SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")  # decimal, as disks are sold and `df -H` shows them


def human_size(size: float) -> str:
    """Bytes in the unit that keeps 1-3 digits before the point: '512 B', '38.2 MB', '1.9 TB'."""
    value, unit = float(size), SIZE_UNITS[0]
    for unit in SIZE_UNITS:
        if abs(value) < 999.95 or unit == SIZE_UNITS[-1]:
            break
        value /= 1000.0
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


@dataclass(frozen=True)
class NodeHealth:
    ok: bool
    attention: tuple[str, ...]
    studies: dict[str, int]
    sends: list[dict[str, Any]]
    last_received_at: float | None
    last_processed_at: float | None
    held_files: int
    held_bytes: int
    disk_free_bytes: int
    disk_total_bytes: int
    retention_days: float | None
    details: dict[str, Any] = field(default_factory=dict)
    send_retry_window_s: float | None = None  # how long a failing send is retried before it is given up


def node_health(reports: Reports, home: Path, retention_days: float | None, now: float | None = None,
                send_retry_window_s: float | None = None) -> NodeHealth:
    now = time.time() if now is None else now
    counts = reports.health_counts()
    attention: list[str] = []
    failed = counts["studies"].get("failed", 0)
    if failed:
        attention.append(f"{failed} failed study(ies): see `dicom-ai studies --state failed`, fix the cause, "
                         "then `dicom-ai retry STUDY_UID`")
    partial = counts["done_with_skips"]
    if partial:
        attention.append(f"{partial} study(ies) done with a result carrier skipped (its message could not be built): "
                         "`dicom-ai studies --state done` shows the error; fix it, then `dicom-ai retry STUDY_UID`")
    given_up = sum(row["n"] for row in counts["sends"] if row["state"] == "failed")
    if given_up:
        window = f" (about {duration(send_retry_window_s)} of retries)" if send_retry_window_s else ""
        attention.append(f"{given_up} send(s) given up after send_max_attempts{window}: the results are kept and "
                         "resume by themselves when the destination answers again (probed every send_retry_max), "
                         "or now with `dicom-ai resend --failed`; `dicom-ai studies` shows which study, the log why")
    oldest = counts["oldest_pending"]
    if oldest is not None and now - oldest["created_at"] > STALE_SEND_S:
        attention.append(f"a {oldest['kind']} send to {oldest['destination']} has waited "
                         f"{(now - oldest['created_at']) / 60:.0f} min ({oldest['attempts']} attempt(s)): "
                         f"{oldest['last_error'] or 'not tried yet'}")
    if counts["oldest_processing"] is not None and now - counts["oldest_processing"] > STUCK_PROCESSING_S:
        attention.append(f"a study has been processing for {(now - counts['oldest_processing']) / 60:.0f} min: "
                         "check the log for the model it runs")
    attention.extend(drift_problems(reports.drift_flags()))
    next_window = counts["next_window"]
    if next_window is not None and now - next_window > STUCK_PROCESSING_S:
        attention.append(f"a study waiting for a model's time window should have been queued "
                         f"{(now - next_window) / 60:.0f} min ago: is the node running?")
    disk = shutil.disk_usage(home if home.exists() else home.parent)
    if disk.free < max(LOW_DISK_BYTES, LOW_DISK_FRACTION * disk.total):
        hint = "lower retention_days" if retention_days else "set retention_days"
        attention.append(f"only {human_size(disk.free)} free on the disk of {home}: {hint} or add space "
                         "(when it is full, the node answers C-STORE with A700)")
    return NodeHealth(
        ok=not attention, attention=tuple(attention), studies=counts["studies"], sends=counts["sends"],
        last_received_at=counts["last_received"], last_processed_at=counts["last_processed"],
        held_files=counts["held_files"], held_bytes=counts["held_bytes"], disk_free_bytes=disk.free,
        disk_total_bytes=disk.total, retention_days=retention_days,
        details={"oldest_pending_send": oldest, "next_window_opens": next_window},
        send_retry_window_s=send_retry_window_s,
    )


def drift_problems(flags: list[dict[str, Any]]) -> list[str]:
    """One problem per model whose latest week drifted from its card's reference, naming each variable."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for flag in flags:
        by_model.setdefault(flag["model"], []).append(flag)
    problems = []
    for model, rows in by_model.items():
        shown = "; ".join(
            f"{row['variable']} PSI {row['psi']:.2f}" + (f", KS p {row['ks_p']:.1g}" if row["ks_p"] is not None else "")
            for row in rows[:4]) + (f" and {len(rows) - 4} more" if len(rows) > 4 else "")
        problems.append(f"model {model} drifted from its validation reference in {rows[0]['week']} "
                        f"({rows[0]['cases']} case(s)): {shown}; check what changed at the senders (scanner, protocol, "
                        f"population), then `dicom-ai evaluate {model}`")
    return problems


def duration(seconds: float) -> str:
    """A length of time as an admin says it: "45 s", "12 min", "2 h 11 min", "3 d 4 h"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours = seconds // 60, seconds // 3600
    if hours == 0:
        return f"{minutes} min"
    if hours < 48:
        return f"{hours} h {minutes % 60} min" if minutes % 60 else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h" if hours % 24 else f"{hours // 24} d"
