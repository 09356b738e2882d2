"""Rule features: order, fallback, shadow, time windows and completion, as loaded, checked and explained."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import Dataset

from dicom_ai.domain import Study
from dicom_ai.route.loader import RuleSetError, load_ruleset
from dicom_ai.route.matcher import explain, route
from dicom_ai.route.rules import TimeWindow

Write = Callable[[str, str], Path]


def messages(directory: Path) -> list[str]:
    with pytest.raises(RuleSetError) as caught:
        load_ruleset(directory)
    return [str(error).replace(str(directory.parent) + "/", "") for error in caught.value.errors]


def test_order_sorts_rules_and_equal_orders_keep_file_order(rules_dir: Path, write: Write) -> None:
    write("a.yaml", "rules:\n  - {name: first, models: [m]}\n  - {name: late, order: 5, models: [m]}\n"
                    "  - {name: second, models: [m]}\n")
    write("b.yaml", "rules:\n  - {name: early, order: -1, models: [m]}\n  - {name: third, models: [m]}\n")
    assert [rule.name for rule in load_ruleset(rules_dir).rules] == ["early", "first", "second", "third", "late"]


def test_fallback_only_when_no_other_rule_matched(rules_dir: Path, write: Write, make_study: Callable[..., Study],
                                                  chest_header: Dataset, ct_header: Dataset) -> None:
    write("a.yaml", """rules:
  - name: catch-all
    fallback: true
    models: [generic]
  - name: second-fallback
    fallback: true
    models: [other]
  - name: chest
    series: {Modality: CR}
    models: [chest-model]
  - name: try-ct
    shadow: true
    series: {Modality: CT}
    models: [ct-candidate]
""")
    ruleset = load_ruleset(rules_dir)
    chest = make_study(chest_header)
    assert [d.rule.name for d in route(chest, ruleset)] == ["chest"]
    verdicts = {v.rule.name: v for v in explain(chest, ruleset)}
    assert "fallback not needed: rule chest matched" in verdicts["catch-all"].reasons
    assert "[fallback]" in str(verdicts["catch-all"])

    ct = make_study(ct_header)  # only a shadow rule matches: the fallback still catches it
    decisions = route(ct, ruleset)
    assert [(d.rule.name, d.shadow) for d in decisions] == [("catch-all", False), ("try-ct", True)]
    verdicts = {v.rule.name: v for v in explain(ct, ruleset)}
    assert verdicts["catch-all"].reasons[-1] == "fallback: no other rule matched"
    assert verdicts["second-fallback"].reasons[-1] == \
        "fallback not needed: fallback rule catch-all caught the study first"
    assert "[shadow: results kept, not sent]" in str(verdicts["try-ct"])


def test_explain_shows_window_order_and_completion(rules_dir: Path, write: Write,
                                                   make_study: Callable[..., Study], chest_header: Dataset) -> None:
    write("a.yaml", """rules:
  - name: night
    order: 3
    window: "Mon-Fri 22:00-06:00"
    complete: {series: 2, series_descriptions: [PA], max_wait: 600}
    models: [m]
""")
    [verdict] = explain(make_study(chest_header), load_ruleset(rules_dir))
    assert str(verdict).splitlines()[0] == ("night [order 3, window Mon-Fri 22:00-06:00, complete: 2 series; "
                                            "series PA; at most 600 s]: MATCH -> m (1 series)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("    shadow: yes please\n", "rules/x.yaml:4: rules[0].shadow: Input should be a valid boolean, "
                                   "got 'yes please'"),
        ("    fallback: 1\n", "rules/x.yaml:4: rules[0].fallback: Input should be a valid boolean, got 1"),
        ("    order: first\n", "rules/x.yaml:4: rules[0].order: Input should be a valid integer, got 'first'"),
        ("    window: '22:00-6'\n", "rules/x.yaml:4: rules[0].window: window '22:00-6' is not [DAYS] HH:MM-HH:MM, "
                                    "e.g. '22:00-06:00' or 'Mon-Fri 22:00-06:00' or 'Sat,Sun 00:00-24:00'"),
        ("    window: 'Mo-Fr 22:00-06:00'\n", "rules/x.yaml:4: rules[0].window: unknown day 'Mo' (did you mean 'Mon'?); days are "
                                              "Mon, Tue, Wed, Thu, Fri, Sat, Sun"),
        ("    window: '10:00-10:00'\n", "rules/x.yaml:4: rules[0].window: window '10:00-10:00' is empty (it starts "
                                        "when it ends); for all day write 00:00-24:00"),
        ("    complete: {}\n", "rules/x.yaml:4: rules[0].complete: complete needs series, series_descriptions, "
                               "max_wait or several of them"),
        ("    complete: {series: 0}\n", "rules/x.yaml:4: rules[0].complete.series: Input should be greater than "
                                        "or equal to 1"),
        ("    complete: {max_wait: -5}\n", "rules/x.yaml:4: rules[0].complete.max_wait: Input should be greater "
                                           "than 0"),
        ("    complete: {seres: 2}\n", "rules/x.yaml:4: rules[0].complete.seres: unknown field 'seres' (did you "
                                       "mean 'series'?); allowed: series, series_descriptions, max_wait, series_quiet"),
    ],
)
def test_each_new_field_is_checked_with_file_line_and_field(rules_dir: Path, write: Write, text: str,
                                                            expected: str) -> None:
    write("x.yaml", "rules:\n  - name: a\n    models: [m]\n" + text)
    assert messages(rules_dir) == [expected]


@pytest.mark.parametrize(
    ("window", "when", "is_open", "opens"),
    [
        ("22:00-06:00", datetime(2026, 12, 1, 23, 0), True, datetime(2026, 12, 1, 23, 0)),
        ("22:00-06:00", datetime(2026, 12, 2, 5, 59), True, datetime(2026, 12, 2, 5, 59)),
        ("22:00-06:00", datetime(2026, 12, 2, 6, 0), False, datetime(2026, 12, 2, 22, 0)),
        ("Fri 22:00-06:00", datetime(2026, 12, 5, 3, 0), True, datetime(2026, 12, 5, 3, 0)),  # Saturday night
        ("Fri 22:00-06:00", datetime(2026, 12, 6, 3, 0), False, datetime(2026, 12, 11, 22, 0)),
        ("Sat,Sun 00:00-24:00", datetime(2026, 12, 1, 10, 0), False, datetime(2026, 12, 5, 0, 0)),
        ("Fri-Mon 08:00-09:00", datetime(2026, 12, 7, 8, 30), True, datetime(2026, 12, 7, 8, 30)),  # Monday
        ("Fri-Mon 08:00-09:00", datetime(2026, 12, 8, 8, 30), False, datetime(2026, 12, 11, 8, 0)),
    ],
)
def test_window_open_and_next_opening(window: str, when: datetime, is_open: bool, opens: datetime) -> None:
    parsed = TimeWindow.model_validate(window)
    assert parsed.is_open(when) is is_open
    assert parsed.next_open(when) == opens


def test_shipped_rules_keep_their_behaviour(shipped_rules: Path) -> None:
    rules = load_ruleset(shipped_rules).rules
    assert all(not r.shadow and not r.fallback and r.window is None and r.complete is None for r in rules)
    assert [r.name for r in rules] == [r.name for r in sorted(rules, key=lambda r: (r.source.file.name,  # type: ignore[union-attr]
                                                                                      r.source.line))]  # type: ignore[union-attr]


def test_rules_check_and_test_show_shadow_window_and_fallback(rules_dir: Path, write: Write) -> None:
    from datetime import timedelta

    from click.testing import CliRunner

    from dicom_ai.cli import main
    from tests.conftest import sample

    opens = datetime.now().replace(second=0, microsecond=0) + timedelta(hours=2)
    write("a.yaml", f"""rules:
  - name: chest-candidate
    shadow: true
    series: {{Modality: CR}}
    models: [mammography-demo]
  - name: chest-at-night
    window: '{opens:%H:%M}-{opens + timedelta(hours=1):%H:%M}'
    series: {{Modality: CR}}
    models: [chest-xray-demo]
  - name: catch-all
    fallback: true
    models: [brain-mr-demo]
""")
    env = {"DICOM_AI_RULES_DIR": str(rules_dir)}
    checked = CliRunner().invoke(main, ["rules", "check"], env=env)
    assert checked.exit_code == 0, checked.output
    assert "ok  chest-candidate [shadow: results kept, not sent]: models mammography-demo" in checked.output
    assert "ok  catch-all [fallback]: models brain-mr-demo" in checked.output

    tested = CliRunner().invoke(main, ["rules", "test", str(sample("RG1_UNCR.dcm"))], env=env)
    assert tested.exit_code == 0, tested.output
    assert "catch-all [fallback]: no match" in tested.output
    assert "fallback not needed: rule chest-at-night matched" in tested.output
    assert f"the study would wait until {opens:%a %Y-%m-%d %H:%M} for the time window of chest-xray-demo" \
        in tested.output
    assert "-> shadow: mammography-demo would run with results kept here, nothing sent" in tested.output
