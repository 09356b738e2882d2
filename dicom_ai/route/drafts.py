"""Rules drafts: check, replay over recent studies, activate with a kept version, restore.

An admin edits a rules file as a draft (a text not yet on disk). `check_draft` validates it with
the other files of the rules directory as context (the checks of `dicom-ai rules check`);
`replay_draft` routes the studies received in the last days with the active rules and with the
draft and says what would change; `activate_draft` writes the file atomically under the rules
directory (still the source of truth, hot-reloaded by the node's watcher) and keeps the version
(author, time, unified diff) with an audit event; `restore_version` activates an old text again.
"""

from __future__ import annotations

import difflib
import logging
import os
import time
from collections import Counter
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_ai.domain import Instance, Series, Study
from dicom_ai.route.loader import RULE_FILE_SUFFIXES, RuleSetError, load_ruleset
from dicom_ai.route.matcher import route, routing_view
from dicom_ai.store.rule_versions import RuleVersion
from dicom_ai.store.spool import fsync_directory

if TYPE_CHECKING:
    from dicom_ai.route.rules import RuleSet
    from dicom_ai.store import Spool, Stores

__all__ = [
    "ON_DISK_AUTHOR",
    "DraftError",
    "DraftProblem",
    "ReplayDiff",
    "RoutingChange",
    "RuleVersion",
    "activate_draft",
    "check_draft",
    "replay_draft",
    "restore_version",
    "rule_versions",
]

log = logging.getLogger(__name__)

# The author of a version recorded because the file on disk differed from the last kept version
# (edited by hand, or never activated through here): so that what it replaced can be restored.
ON_DISK_AUTHOR = "(file on disk)"
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class DraftProblem:
    """One problem of a draft (or of another rules file it is checked with)."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class DraftError(ValueError):
    """A draft that cannot be activated or replayed; `problems` lists why, the message names the first."""

    def __init__(self, problems: list[DraftProblem]) -> None:
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}" if problems else "the draft is invalid")


@dataclass(frozen=True)
class RoutingChange:
    """A study whose models differ between the active rules (`before`) and the draft (`after`)."""

    study_uid: str
    before: tuple[str, ...]
    after: tuple[str, ...]


@dataclass(frozen=True)
class ReplayDiff:
    """What a draft would change over the replayed studies (`skipped`: studies whose files are gone)."""

    studies: int
    changes: list[RoutingChange]
    skipped: int = 0

    def summary(self) -> str:
        """e.g. "12 more studies to chest-xray-demo, 0 fewer; 3 studies change model"."""
        if not self.changes:
            return f"no study changes routing ({_count(self.studies)} replayed)"
        more: Counter[str] = Counter()
        fewer: Counter[str] = Counter()
        for change in self.changes:
            more.update(set(change.after) - set(change.before))
            fewer.update(set(change.before) - set(change.after))
        parts = [f"{more[model]} more {_studies(more[model])} to {model}, {fewer[model]} fewer"
                 for model in sorted(set(more) | set(fewer))]
        switched = sum(1 for change in self.changes if change.before and change.after)
        parts.append(f"{switched} {_studies(switched)} {'changes' if switched == 1 else 'change'} model")
        return "; ".join(parts)


def _studies(count: int) -> str:
    return "study" if count == 1 else "studies"


def _count(count: int) -> str:
    return f"{count} {_studies(count)}"


def file_name_problem(file_name: str) -> str | None:
    """Why a name cannot be a rules file directly under the rules directory (None when it can)."""
    if not file_name or "/" in file_name or "\\" in file_name or file_name in (".", ".."):
        return "a rules file name is a plain name inside the rules directory, without folders"
    if file_name.startswith("."):
        return "a rules file name must not start with '.' (hidden files are not loaded)"
    if not file_name.endswith(RULE_FILE_SUFFIXES):
        return f"a rules file name must end with {' or '.join(RULE_FILE_SUFFIXES)}"
    return None


def check_draft(rules_dir: Path, file_name: str, text: str,
                known_models: Collection[str] | None = None) -> list[DraftProblem]:
    """The problems of `text` as the rules file `file_name`, checked with the directory's other files.

    The checks are `dicom-ai rules check`'s (pass `known_models` to check model names too); a
    problem in another file, or a rule name used in both, is listed as well. Empty: valid.
    """
    return _load_draft(Path(rules_dir), file_name, text, known_models)[1]


def _load_draft(rules_dir: Path, file_name: str, text: str,
                known_models: Collection[str] | None) -> tuple[RuleSet | None, list[DraftProblem]]:
    problem = file_name_problem(file_name)
    if problem is not None:
        return None, [DraftProblem(file_name, None, "", problem)]
    try:
        return load_ruleset(rules_dir, known_models, drafts={file_name: text}), []
    except RuleSetError as exc:
        return None, [
            DraftProblem(error.path.name if error.path.parent == rules_dir else str(error.path), error.line,
                         error.field, " ".join(error.problem.split("\n")))
            for error in exc.errors
        ]


def _draft_ruleset(rules_dir: Path, file_name: str, text: str, known_models: Collection[str] | None) -> RuleSet:
    ruleset, problems = _load_draft(rules_dir, file_name, text, known_models)
    if ruleset is None:
        raise DraftError(problems)
    return ruleset


def replay_draft(stores: Stores, spool: Spool, rules_dir: Path, file_name: str, text: str, days: float,
                 known_models: Collection[str] | None = None, now: float | None = None) -> ReplayDiff:
    """Route the studies received in the last `days` days (their stored headers) with the active rules
    and with the draft; the studies whose models differ are the changes. Raises `DraftError` for a
    draft with problems and `RuleSetError` when the active rules do not load."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    rules_dir = Path(rules_dir)
    draft = _draft_ruleset(rules_dir, file_name, text, known_models)
    active = load_ruleset(rules_dir, known_models)
    now = time.time() if now is None else now
    studies = skipped = 0
    changes: list[RoutingChange] = []
    routed: dict[Hashable, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # per routing view: (before, after)
    for study_uid in stores.reports.study_uids_received_since(now - days * SECONDS_PER_DAY):
        with spool.study_lock(study_uid):  # a purge must not delete the files while their headers are read
            instances = stores.studies.instances_of(study_uid)
            try:
                study = _stored_study(study_uid, instances) if instances else None
            except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
                log.info("replay: study %s skipped: its stored headers cannot be read (%s)", study_uid, exc)
                study = None
        if study is None:
            skipped += 1
            continue
        studies += 1
        view = routing_view(study, (active, draft))
        if view not in routed:  # most studies look alike to the rules: route each look once
            routed[view] = (_models(study, active), _models(study, draft))
        before, after = routed[view]
        if before != after:
            changes.append(RoutingChange(study_uid, before, after))
    return ReplayDiff(studies, changes, skipped)


def _stored_study(study_uid: str, instances: list[Instance]) -> Study:
    """The study as the pipeline routes it: one header (the first instance's) per series."""
    by_series: dict[str, list[Instance]] = {}
    for instance in instances:
        by_series.setdefault(instance.series_instance_uid, []).append(instance)
    return Study(study_uid, tuple(
        Series(uid, tuple(members), dcmread(members[0].path, stop_before_pixels=True))
        for uid, members in by_series.items()))


def _models(study: Study, ruleset: RuleSet) -> tuple[str, ...]:
    """The models the study goes to; a model only shadow rules name shows as 'name (shadow)'."""
    decisions = route(study, ruleset)
    live = {model for decision in decisions if not decision.shadow for model in decision.models}
    shadow = {f"{model} (shadow)" for decision in decisions if decision.shadow for model in decision.models
              if model not in live}
    return tuple(sorted(live | shadow))


def activate_draft(stores: Stores, rules_dir: Path, file_name: str, text: str, author: str,
                   known_models: Collection[str] | None = None, restored_from: int | None = None) -> RuleVersion:
    """Write a valid draft as `rules_dir/file_name` (atomically) and keep it as a new version.

    Raises `DraftError` (naming file:line) for a draft with problems; nothing is written then. When
    the file on disk differs from the last kept version (edited by hand), that text is kept first
    as a version by `ON_DISK_AUTHOR`, so any text the file ever had through here can be restored.
    A draft equal to the file on disk writes nothing and returns the latest version.
    """
    rules_dir = Path(rules_dir)
    if not author.strip():
        raise ValueError("an activation needs an author")
    _draft_ruleset(rules_dir, file_name, text, known_models)
    path = rules_dir / file_name
    on_disk = _read(path)
    versions = stores.rule_versions
    latest = versions.latest(file_name)
    if on_disk is not None and (latest is None or latest.text != on_disk):
        latest = versions.add(file_name, ON_DISK_AUTHOR, on_disk, _diff(file_name, latest.text if latest else "",
                                                                        on_disk), event="rules_found_on_disk")
    if on_disk == text and latest is not None and restored_from is None:
        return latest
    _write_atomically(path, text)
    version = versions.add(file_name, author, text, _diff(file_name, on_disk or "", text), restored_from=restored_from)
    log.info("rules file %s activated by %s as version %d", path, author, version.id)
    return version


def rule_versions(stores: Stores, file_name: str | None = None) -> list[RuleVersion]:
    """The kept versions, newest first (of one file, or of all)."""
    return stores.rule_versions.history(file_name)


def restore_version(stores: Stores, rules_dir: Path, version_id: int, author: str,
                    known_models: Collection[str] | None = None) -> RuleVersion:
    """Activate an old version's text again, as a new version (checked like any draft)."""
    old = stores.rule_versions.get(version_id)
    if old is None:
        raise LookupError(f"no rules version {version_id} (see `dicom-ai rules history`)")
    return activate_draft(stores, rules_dir, old.file_name, old.text, author, known_models, restored_from=old.id)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _diff(file_name: str, before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=f"a/{file_name}", tofile=f"b/{file_name}"))


def _write_atomically(path: Path, text: str) -> None:
    """A hidden temporary (the watcher skips it) fsynced, then renamed over the file: never half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)
