"""RuleWatcher: reload on change, keep the last good rules on a bad edit, fail loudly at start."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_ai.route.loader import RuleSetError, RuleWatcher

Write = Callable[[str, str], Path]

RULE = "rules:\n  - name: {name}\n    models: [chest-xray-demo]\n"


def _touch(path: Path, step: int = 1) -> None:
    """Move the mtime on by `step` seconds: an edit that keeps the size must still be seen."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + step * 1_000_000_000))


def _names(watcher: RuleWatcher) -> list[str]:
    return [rule.name for rule in watcher.ruleset.rules]


def test_bad_rules_at_start_up_raise(write: Write, rules_dir: Path) -> None:
    write("a.yaml", "rules:\n  - name: a\n    models: [nope]\n")
    with pytest.raises(
        RuleSetError, match=r"a.yaml:3: rules\[0\].models\[0\]: unknown model 'nope'"
    ):
        RuleWatcher(rules_dir, known_models={"chest-xray-demo"})


def test_refresh_reloads_only_on_change(write: Write, rules_dir: Path) -> None:
    path = write("a.yaml", RULE.format(name="one"))
    watcher = RuleWatcher(rules_dir, known_models={"chest-xray-demo"})
    assert _names(watcher) == ["one"]
    first = watcher.ruleset
    assert watcher.refresh() is False and watcher.ruleset is first

    path.write_text(RULE.format(name="two"))  # same size: only the mtime tells
    _touch(path)
    assert watcher.refresh() is True
    assert _names(watcher) == ["two"]
    assert watcher.refresh() is False


def test_added_and_removed_files_are_seen(write: Write, rules_dir: Path) -> None:
    write("a.yaml", RULE.format(name="one"))
    watcher = RuleWatcher(rules_dir)
    added = write("b.yml", RULE.format(name="two"))
    assert watcher.refresh() is True and _names(watcher) == ["one", "two"]
    added.unlink()
    assert watcher.refresh() is True and _names(watcher) == ["one"]
    write("ignored.txt", "anything")
    assert watcher.refresh() is False


def test_bad_edit_keeps_previous_rules_and_logs_each_error(
    write: Write, rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write("a.yaml", RULE.format(name="good"))
    watcher = RuleWatcher(rules_dir, known_models={"chest-xray-demo"})
    good = watcher.ruleset

    path.write_text(
        "rules:\n  - name: good\n    models: [chest-xray-demo]\n    series: {Modalty: CR, Rows: {range: [9, 1]}}\n"
    )
    _touch(path)
    with caplog.at_level(logging.ERROR, logger="dicom_ai.route"):
        assert watcher.refresh() is False
    assert watcher.ruleset is good, "a typo must not stop routing"
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert (
        f"{path}:4: rules[0].series.Modalty: unknown DICOM keyword 'Modalty' (did you mean 'Modality'?)"
        in messages
    )
    assert f"{path}:4: rules[0].series.Rows: range minimum 9 is greater than maximum 1" in messages
    assert any("still using the previous 1 rules" in message for message in messages)
    assert all("\n" not in message for message in messages)

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="dicom_ai.route"):
        assert watcher.refresh() is False
    assert caplog.records == [], "an unchanged bad edit is reported once, not on every tick"

    path.write_text(RULE.format(name="fixed"))
    _touch(path, step=2)
    assert watcher.refresh() is True and _names(watcher) == ["fixed"]


def test_concurrent_refreshes_reload_once(write: Write, rules_dir: Path) -> None:
    path = write("a.yaml", RULE.format(name="one"))
    watcher = RuleWatcher(rules_dir)
    path.write_text(RULE.format(name="two"))
    _touch(path)
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def refresh() -> None:
        barrier.wait()
        results.append(watcher.refresh())

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(results) == [False, False, False, True]
    assert _names(watcher) == ["two"]
