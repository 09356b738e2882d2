"""Planning a study's models around their rules' time windows: wait for a common opening, never forever."""

from __future__ import annotations

from datetime import datetime

from dicom_ai.route.rules import TimeWindow
from dicom_ai.route.windows import WindowPlan, is_free, plan_windows

NIGHT = TimeWindow.model_validate("22:00-06:00")
MORNING = TimeWindow.model_validate("08:00-09:00")
EVENING = TimeWindow.model_validate("20:00-23:00")
NOON = datetime(2026, 12, 1, 12, 0)  # a Tuesday


def test_a_model_is_free_when_any_of_its_rules_allows_it() -> None:
    assert is_free([None], NOON)
    assert not is_free([NIGHT], NOON)
    assert is_free([NIGHT, None], NOON)
    assert is_free([NIGHT, TimeWindow.model_validate("11:00-13:00")], NOON)


def test_all_free_runs_everything() -> None:
    assert plan_windows({"a": [None], "b": [NIGHT]}, datetime(2026, 12, 1, 23, 0)) == WindowPlan(run=("a", "b"))


def test_a_closed_model_makes_the_study_wait_for_its_opening() -> None:
    plan = plan_windows({"light": [None], "heavy": [NIGHT]}, NOON)
    assert plan == WindowPlan(run=(), wait_until=datetime(2026, 12, 1, 22, 0), waiting_for=("heavy",))


def test_the_study_waits_for_a_moment_when_every_model_is_free() -> None:
    plan = plan_windows({"heavy": [NIGHT], "evening": [EVENING]}, NOON)
    assert plan.wait_until == datetime(2026, 12, 1, 22, 0)  # 20:00 opens EVENING, but NIGHT is still closed


def test_windows_that_never_meet_cannot_hold_a_study_forever() -> None:
    waiting = plan_windows({"night": [NIGHT], "morning": [MORNING]}, NOON)
    assert waiting.wait_until == datetime(2026, 12, 1, 22, 0) and waiting.run == ()
    at_night = plan_windows({"night": [NIGHT], "morning": [MORNING]}, datetime(2026, 12, 1, 22, 0))
    assert at_night.run == ("night",) and at_night.wait_until is None
    assert "never open together" in at_night.left_out["morning"]


def test_a_weekend_window_is_waited_for_across_days() -> None:
    weekend = TimeWindow.model_validate("Sat,Sun 00:00-24:00")
    assert plan_windows({"m": [weekend]}, NOON).wait_until == datetime(2026, 12, 5, 0, 0)
