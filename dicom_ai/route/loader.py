"""Load routing rules from a directory of YAML files, naming file, line and field for every error.

All files are checked and all errors collected, so an admin fixes a rules directory in one pass.
`RuleWatcher` reloads on change but keeps the last good rules when an edit is broken: a typo
must not stop a running node from routing.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dicom_ai.route.rules import (
    OPERATORS,
    Completion,
    PriorityPolicy,
    Rule,
    RuleSet,
    RuleSource,
    suggest,
)

__all__ = [
    "RULE_FILE_SUFFIXES",
    "RuleError",
    "RuleSetError",
    "RuleWatcher",
    "load_ruleset",
    "rule_files",
]

logger = logging.getLogger(__name__)

RULE_FILE_SUFFIXES = (".yaml", ".yml")
TOP_LEVEL_FIELDS = ("rules",)
_RULE_FIELDS = tuple(info.alias or name for name, info in Rule.model_fields.items())
_POLICY_FIELDS = tuple(PriorityPolicy.model_fields)
_COMPLETION_FIELDS = tuple(Completion.model_fields)

Loc = Sequence[str | int]
_PYTHON_CLASS = re.compile(r" or instance of \w+")


@dataclass(frozen=True)
class RuleError:
    """One problem in a rules file; `str()` gives the one-line `file:line: field: problem` form."""

    path: Path
    line: int | None
    field: str
    problem: str

    def __str__(self) -> str:
        where = str(self.path) if self.line is None else f"{self.path}:{self.line}"
        text = (
            f"{where}: {self.field}: {self.problem}" if self.field else f"{where}: {self.problem}"
        )
        return " ".join(text.split("\n"))


class RuleSetError(Exception):
    """The rules directory has errors; `errors` lists every one of them."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = list(errors)
        count = len(self.errors)
        lines = "\n".join(str(error) for error in self.errors)
        super().__init__(f"{count} error{'s' if count != 1 else ''} in the routing rules:\n{lines}")


def rule_files(directory: Path) -> list[Path]:
    """The rules files of a directory in name order, skipping hidden files (editor temporaries)."""
    return sorted(
        (
            path
            for path in directory.iterdir()
            if path.suffix in RULE_FILE_SUFFIXES
            and not path.name.startswith(".")
            and path.is_file()
        ),
        key=lambda path: path.name,
    )


def load_ruleset(
    directory: Path,
    known_models: Collection[str] | None = None,
    drafts: Mapping[str, str] | None = None,
) -> RuleSet:
    """Load and validate every `*.yaml`/`*.yml` file in `directory`.

    Files are read in sorted name order and rules keep their order in the file. With
    `known_models`, every model a rule names must be one of them. `drafts` maps a file name to
    a text that stands in for that file (new or edited, not yet written): a draft is checked with
    the other files as context, exactly as it would load once written. Raises `RuleSetError`
    listing every problem of every file.
    """
    drafts = dict(drafts or {})
    directory = Path(directory)
    if not directory.is_dir():
        raise RuleSetError(
            [
                RuleError(
                    directory,
                    None,
                    "",
                    "rules directory not found; create it or configure the right one",
                )
            ]
        )
    try:
        files = rule_files(directory)
    except OSError as exc:
        problem = f"cannot list the rules directory: {exc.strerror or exc}"
        raise RuleSetError([RuleError(directory, None, "", problem)]) from exc
    if drafts:
        files = sorted({*files, *(directory / name for name in drafts)}, key=lambda path: path.name)
    errors: list[RuleError] = []
    loaded: list[tuple[Rule, _Document, int]] = []
    for path in files:
        document = _Document.parse(path, errors, drafts.get(path.name))
        if document is not None:
            loaded.extend(document.rules(errors))

    first_use: dict[str, RuleSource | None] = {}
    for rule, document, index in loaded:
        if rule.name in first_use:
            errors.append(
                document.error(
                    ("rules", index, "name"),
                    f"rule name {rule.name!r} is already used at {first_use[rule.name]}",
                )
            )
        else:
            first_use[rule.name] = rule.source
        if known_models is not None:
            for position, model in enumerate(rule.models):
                if model not in known_models:
                    errors.append(
                        document.error(
                            ("rules", index, "models", position),
                            _unknown_model(model, known_models),
                        )
                    )

    if errors:
        order = {path: position for position, path in enumerate(files)}
        errors.sort(key=lambda error: (order.get(error.path, -1), error.line or 0))
        raise RuleSetError(errors)
    # `order` first (sorted() is stable: equal orders keep file-name order, then file order).
    rules = tuple(sorted((rule for rule, _, _ in loaded), key=lambda rule: rule.order))
    if not rules:
        logger.warning(
            "no routing rules in %s: every study will be stored and left unrouted", directory
        )
    else:
        enabled = sum(rule.enabled for rule in rules)
        logger.info(
            "loaded %d routing rules (%d enabled) from %d files in %s",
            len(rules),
            enabled,
            len(files),
            directory,
        )
    return RuleSet(rules=rules, files=tuple(files))


def _unknown_model(model: str, known_models: Collection[str]) -> str:
    if not known_models:
        return f"unknown model {model!r}: no models are installed"
    known = sorted(known_models)
    return f"unknown model {model!r}{suggest(model, known)}; known models: {', '.join(known)}"


class _Document:
    """One parsed YAML file: its node tree (for line numbers) and the data built from it."""

    def __init__(self, path: Path, root: Node | None, data: Any) -> None:
        self.path = path
        self.root = root
        self.data = data

    @classmethod
    def parse(cls, path: Path, errors: list[RuleError], text: str | None = None) -> _Document | None:
        """Read (unless `text` is given) and parse `path`; on failure append the error and return None."""
        try:
            text = path.read_text(encoding="utf-8") if text is None else text
        except UnicodeDecodeError as exc:
            errors.append(
                RuleError(path, None, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")
            )
            return None
        except OSError as exc:
            errors.append(RuleError(path, None, "", f"cannot read the file: {exc.strerror or exc}"))
            return None
        try:
            # The reader checks every character when it is built: a control character raises here.
            loader = yaml.SafeLoader(text)
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - text.rfind("\n", 0, exc.position)
            errors.append(RuleError(path, line, "", f"YAML syntax error: character {exc.character:#06x} "
                                                    f"is not allowed in YAML (column {column})"))
            return None
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "invalid YAML"
            if exc.context and exc.problem:
                problem = f"{problem} ({exc.context})"
            errors.append(
                RuleError(
                    path, mark.line + 1 if mark else None, "", f"YAML syntax error: {problem}"
                )
            )
            return None
        except yaml.YAMLError as exc:
            errors.append(RuleError(path, None, "", f"YAML error: {exc}"))
            return None
        finally:
            loader.dispose()
        document = cls(path, root, data)
        errors.extend(document._duplicate_keys())
        return document

    def rules(self, errors: list[RuleError]) -> list[tuple[Rule, _Document, int]]:
        """Validate each rule on its own, so one bad rule does not hide the others' errors."""
        if self.data is None:
            logger.warning("%s is empty: it defines no rules", self.path)
            return []
        if not isinstance(self.data, dict):
            errors.append(
                self.error((), "a rules file must be a mapping with a 'rules' list (rules: ...)")
            )
            return []
        for key in self.data:
            if key not in TOP_LEVEL_FIELDS:
                errors.append(
                    self.error(
                        (str(key),),
                        f"unknown top-level field {key!r}{suggest(str(key), TOP_LEVEL_FIELDS)}; "
                        "a rules file holds only 'rules'",
                    )
                )
        if "rules" not in self.data:
            errors.append(self.error(("rules",), "missing the 'rules' list"))
            return []
        items = self.data["rules"]
        if items is None:
            logger.warning("%s has an empty 'rules' list", self.path)
            return []
        if not isinstance(items, list):
            errors.append(
                self.error(("rules",), "'rules' must be a list; start each rule with '- name: ...'")
            )
            return []
        loaded = []
        for index, item in enumerate(items):
            try:
                rule = Rule.model_validate(item)
            except ValidationError as exc:
                errors.extend(self._validation_errors(("rules", index), exc))
                continue
            line, _ = self.locate(("rules", index))
            loaded.append((rule.with_source(self.path, line or 1), self, index))
        return loaded

    def error(self, loc: Loc, problem: str) -> RuleError:
        line, field = self.locate(loc)
        return RuleError(self.path, line, field or _format_loc(loc), problem)

    def locate(self, loc: Loc) -> tuple[int | None, str]:
        """Map a validation location to (line, field) by walking the YAML node tree.

        Walks as deep as the location exists in the file; a mapping key gives the line of the
        key. Shorthand conditions (a list for `in`, a scalar for `equals`) are walked through.
        """
        node = self.root
        if node is None:
            return None, ""
        line = node.start_mark.line + 1
        found: list[str | int] = []
        for segment in loc:
            if segment == "[key]":
                continue
            if isinstance(node, MappingNode) and isinstance(segment, str):
                pair = _find_key(node, segment)
                if pair is None:
                    break
                key_node, node = pair
                line = key_node.start_mark.line + 1
                found.append(segment)
            elif (
                isinstance(node, SequenceNode)
                and isinstance(segment, int)
                and 0 <= segment < len(node.value)
            ):
                node = node.value[segment]
                line = node.start_mark.line + 1
                found.append(segment)
            elif (isinstance(node, SequenceNode) and segment == "in") or (
                isinstance(node, ScalarNode) and segment == "equals"
            ):
                continue  # the shorthand form: the list or scalar *is* the operand
            else:
                break
        return line, _format_loc(found)

    def _validation_errors(self, prefix: Loc, exc: ValidationError) -> list[RuleError]:
        errors = []
        for detail in exc.errors(include_url=False):
            loc = (*prefix, *detail["loc"])
            line, field = self.locate(loc)
            kind = detail["type"]
            if kind == "missing":
                field = _format_loc(loc)
                problem = f"missing required field {str(loc[-1])!r}"
            elif kind == "extra_forbidden":
                problem = _unknown_field(loc)
            else:
                problem = _clean_message(detail["msg"])
                value = detail.get("input")
                if kind.endswith(("_type", "_parsing")) and isinstance(
                    value, (str, int, float, bool)
                ):
                    problem = f"{problem}, got {value!r}"
            errors.append(RuleError(self.path, line, field, problem))
        return errors

    def _duplicate_keys(self) -> list[RuleError]:
        """YAML silently keeps the last of two equal keys; an admin almost never means that."""
        errors: list[RuleError] = []
        seen_nodes: set[int] = set()
        stack: list[tuple[Node, tuple[str | int, ...]]] = [(self.root, ())] if self.root else []
        while stack:
            node, loc = stack.pop()
            if id(node) in seen_nodes:
                continue  # an alias: already checked where it was defined
            seen_nodes.add(id(node))
            if isinstance(node, MappingNode):
                first_line: dict[str, int] = {}
                for key_node, value_node in node.value:
                    key = key_node.value if isinstance(key_node, ScalarNode) else None
                    if key is not None and key != "<<":
                        line = key_node.start_mark.line + 1
                        if key in first_line:
                            errors.append(
                                RuleError(
                                    self.path,
                                    line,
                                    _format_loc((*loc, key)),
                                    f"duplicate key {key!r} (first at line {first_line[key]}); "
                                    "YAML would keep only the last",
                                )
                            )
                        else:
                            first_line[key] = line
                    stack.append((value_node, (*loc, key if key is not None else "?")))
            elif isinstance(node, SequenceNode):
                stack.extend((item, (*loc, index)) for index, item in enumerate(node.value))
        return errors


def _find_key(node: MappingNode, key: str) -> tuple[Node, Node] | None:
    """The last pair with this key: the one YAML keeps when a key is repeated."""
    for key_node, value_node in reversed(node.value):
        if isinstance(key_node, ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def _strip_key(loc: Loc) -> list[str | int]:
    return [segment for segment in loc if segment != "[key]"]


def _format_loc(loc: Loc) -> str:
    text = ""
    for segment in _strip_key(loc):
        text += (
            f"[{segment}]"
            if isinstance(segment, int)
            else (f".{segment}" if text else str(segment))
        )
    return text


def _clean_message(message: str) -> str:
    """Pydantic's message without the parts that speak Python rather than YAML."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return _PYTHON_CLASS.sub("", message).replace("valid dictionary", "mapping (key: value)")


def _unknown_field(loc: Loc) -> str:
    """Name the unknown key and, from where it sits, what would have been valid there."""
    name = str(loc[-1])
    where = _schema_at(loc[:-1])
    if where == "condition":
        operators = ", ".join(OPERATORS)
        return f"unknown operator {name!r}{suggest(name, OPERATORS)}; operators are {operators}"
    candidates = {"rule": _RULE_FIELDS, "priority": _POLICY_FIELDS, "complete": _COMPLETION_FIELDS}.get(where, ())
    allowed = f"; allowed: {', '.join(candidates)}" if candidates else ""
    return f"unknown field {name!r}{suggest(name, candidates)}{allowed}"


def _schema_at(loc: Loc) -> str:
    """Which part of the rules schema a location points into."""
    state = "file"
    for segment in loc:
        if state == "file" and segment == "rules":
            state = "rules"
        elif state == "rules" and isinstance(segment, int):
            state = "rule"
        elif state == "rule" and segment in ("study", "series"):
            state = "conditions"
        elif state == "rule" and segment in ("priority", "complete"):
            state = str(segment)
        elif state == "conditions" or (state == "condition" and segment == "not"):
            state = "condition"
        else:
            state = "other"
    return state


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime_ns, size) of every rules file: cheap to take on every scheduler tick."""
    try:
        paths = rule_files(directory)
    except OSError:
        return ()
    entries = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue  # removed between listing and stat: the next tick sees the new state
        entries.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


class RuleWatcher:
    """The current rules of a directory, reloaded by `refresh()` when a file changes.

    The constructor raises `RuleSetError` on bad rules (start-up fails loudly); later bad edits
    are logged and the last good `RuleSet` stays in use.
    """

    def __init__(self, directory: Path, known_models: Collection[str] | None = None) -> None:
        self.directory = Path(directory)
        self.known_models = known_models
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._fingerprint = _fingerprint(self.directory)
        self._ruleset = load_ruleset(self.directory, known_models)
        self.reloads = 0  # reloads that took effect, and edits refused as invalid (for /metrics)
        self.reload_errors = 0

    @property
    def ruleset(self) -> RuleSet:
        """The rules in force now."""
        with self._lock:
            return self._ruleset

    def refresh(self) -> bool:
        """Reload if a rules file changed, was added or removed; True when new rules took effect."""
        with self._refresh_lock:
            fingerprint = _fingerprint(self.directory)
            if fingerprint == self._fingerprint:
                return False
            # Remember the broken state too, so a bad edit is reported once and not on every tick.
            self._fingerprint = fingerprint
            try:
                ruleset = load_ruleset(self.directory, self.known_models)
            except RuleSetError as exc:
                self.reload_errors += 1
                for error in exc.errors:
                    logger.error("%s", error)
                logger.error(
                    "routing rules in %s have %d errors; still using the previous %d rules",
                    self.directory,
                    len(exc.errors),
                    len(self.ruleset.rules),
                )
                return False
            with self._lock:
                self._ruleset = ruleset
            self.reloads += 1
            logger.info(
                "routing rules in %s reloaded: %d rules", self.directory, len(ruleset.rules)
            )
            return True
