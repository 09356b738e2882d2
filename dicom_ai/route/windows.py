"""When a study's models may run, from the time windows of the rules that route them.

A model is free to run when any rule that names it for the study has no window, or an open one.
When a model is not free, the whole study waits for the first moment at which every model it
needs is free together, so all its results are decided (and its priority published) at once.
Windows that never overlap cannot hold a study forever: it then waits for the first opening and
the models still closed at that moment are left out, each with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dicom_ai.route.rules import TimeWindow

__all__ = ["LOOKAHEAD", "WindowPlan", "is_free", "plan_windows"]

LOOKAHEAD = timedelta(days=8)  # every weekly window opens within this


@dataclass(frozen=True)
class WindowPlan:
    """Run `run` now, or (with `wait_until`) let the study wait; `left_out`: model -> why it is not run."""

    run: tuple[str, ...]
    wait_until: datetime | None = None
    waiting_for: tuple[str, ...] = ()
    left_out: Mapping[str, str] = field(default_factory=dict)


def is_free(windows: Sequence[TimeWindow | None], when: datetime) -> bool:
    """A model named by rules with these windows may run at `when` (None: a rule without a window)."""
    return any(window is None or window.is_open(when) for window in windows)


def _describe(windows: Sequence[TimeWindow | None]) -> str:
    return " or ".join(str(window) for window in windows if window is not None)


def plan_windows(models: Mapping[str, Sequence[TimeWindow | None]], now: datetime) -> WindowPlan:
    """What to do with a study now, given each model's windows (local, naive datetimes)."""
    closed = [name for name, windows in models.items() if not is_free(windows, now)]
    if not closed:
        return WindowPlan(run=tuple(models))
    starts = sorted({start for windows in models.values() for window in windows if window is not None
                     for start in _starts(window, now)})
    for start in starts:
        if all(is_free(windows, start) for windows in models.values()):
            return WindowPlan(run=(), wait_until=start, waiting_for=tuple(closed))
    free_now = [name for name in models if name not in closed]
    if free_now:
        return WindowPlan(run=tuple(free_now), left_out={
            name: f"its window {_describe(models[name])} is closed and never open together with the other "
                  "models' windows for this study" for name in closed})
    first = min(window.next_open(now) for name in closed for window in models[name] if window is not None)
    return WindowPlan(run=(), wait_until=first, waiting_for=tuple(closed))


def _starts(window: TimeWindow, now: datetime) -> list[datetime]:
    """Every opening of the window after `now` within the lookahead (a window belongs to the day it starts)."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    openings = (midnight + timedelta(days=offset, minutes=window.start) for offset in range(LOOKAHEAD.days + 1))
    return [opening for opening in openings if opening > now and opening.weekday() in window.days]
