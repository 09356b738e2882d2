"""Match a complete study against the routing rules: which series go to which models.

`route` is what the pipeline calls; `explain` is the same evaluation with its reasons kept, for
`dicom-ai rules test`, so what an admin reads is exactly what the node decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

from dicom_ai.route.rules import Condition, PriorityPolicy, Rule, RuleSet

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicom_ai.domain import Series, Study

__all__ = [
    "NON_IMAGE_MODALITIES",
    "PRESENTATION_STATE_SOP_CLASS_ROOT",
    "STRUCTURED_REPORT_SOP_CLASS_ROOT",
    "RouteDecision",
    "RuleVerdict",
    "explain",
    "image_series_problem",
    "route",
    "routing_view",
    "rule_tags",
]

# Modalities of series that hold no image for a model: reports, presentation states, key
# object selections, segmentations, RT structure sets and encapsulated documents.
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "SEG", "RTSTRUCT", "DOC"})
# Every Structured Report storage SOP class (Basic Text, Enhanced, Comprehensive (3D), Key Object
# Selection, CAD and dose SRs, ...) lies under this UID root (PS3.4 Annex B.5).
STRUCTURED_REPORT_SOP_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.88."
# Every Softcopy (and Volumetric) Presentation State storage SOP class lies under this root.
PRESENTATION_STATE_SOP_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.11."

_FILE_META_GROUP = 0x0002


@dataclass(frozen=True)
class RouteDecision:
    """A matched rule: these series of the study go to these models."""

    rule: Rule
    series: tuple[Series, ...]
    models: tuple[str, ...]
    priority: PriorityPolicy | None

    @property
    def shadow(self) -> bool:
        """The models run and their results are kept, but nothing is sent or published."""
        return self.rule.shadow

    def __str__(self) -> str:
        uids = ", ".join(series.series_instance_uid for series in self.series)
        return f"{self.rule.name} -> {', '.join(self.models)}: series {uids}"


@dataclass(frozen=True)
class RuleVerdict:
    """Whether one rule matched a study, and why, in lines an admin can read."""

    rule: Rule
    matched: bool
    reasons: tuple[str, ...]
    decision: RouteDecision | None = None

    def __str__(self) -> str:
        head = f"{self.rule.name}{rule_tags(self.rule)}: {'MATCH' if self.matched else 'no match'}"
        if self.decision is not None:
            head += f" -> {', '.join(self.decision.models)} ({len(self.decision.series)} series)"
        return "\n".join([head, *(f"  {reason}" for reason in self.reasons)])


def rule_tags(rule: Rule) -> str:
    """What an admin must know about how a rule acts besides its conditions, e.g. ' [shadow, fallback]'."""
    tags = [f"order {rule.order}"] if rule.order else []
    tags += ["fallback"] if rule.fallback else []
    tags += ["shadow: results kept, not sent"] if rule.shadow else []
    tags += [f"window {rule.window}"] if rule.window is not None else []
    if rule.complete is not None:
        expected = [f"{rule.complete.series} series"] if rule.complete.series else []
        expected += [f"series {', '.join(rule.complete.series_descriptions)}"] if rule.complete.series_descriptions \
            else []
        expected += [f"at most {rule.complete.max_wait:g} s"] if rule.complete.max_wait else []
        tags.append(f"complete: {'; '.join(expected)}")
    return f" [{', '.join(tags)}]" if tags else ""


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    reason: str


def route(study: Study, ruleset: RuleSet) -> list[RouteDecision]:
    """One decision per matching rule, in rule order; empty when no rule matches."""
    return [verdict.decision for verdict in explain(study, ruleset) if verdict.decision is not None]


def explain(study: Study, ruleset: RuleSet) -> list[RuleVerdict]:
    """Evaluate every rule on the study and keep the reasons.

    Study conditions stop at the first that fails. Each image series lists its conditions up to
    and including the first that fails; non-image series say why they were skipped. A fallback
    rule counts only when no other rule (but a shadow one) matched, and only the first that
    matches does.
    """
    verdicts = [_evaluate(rule, study) for rule in ruleset.rules]
    routed = [v.rule.name for v in verdicts if v.matched and not v.rule.fallback and not v.rule.shadow]
    caught: str | None = None
    for position, verdict in enumerate(verdicts):
        if not (verdict.rule.fallback and verdict.matched):
            continue
        if routed:
            why = f"fallback not needed: rule {', '.join(routed)} matched"
        elif caught is not None:
            why = f"fallback not needed: fallback rule {caught} caught the study first"
        else:
            caught = verdict.rule.name
            verdicts[position] = RuleVerdict(verdict.rule, True, (*verdict.reasons, "fallback: no other rule matched"),
                                             verdict.decision)
            continue
        verdicts[position] = RuleVerdict(verdict.rule, False, (*verdict.reasons, why))
    return verdicts


def image_series_problem(series: Series) -> str | None:
    """Why a series holds no image for a model (None when it does): it is stored, not routed."""
    header = series.header
    modality = str(header.get("Modality", "") or "").strip()
    if modality in NON_IMAGE_MODALITIES:
        return f"Modality {modality} is not an image"
    sop_class = str(header.get("SOPClassUID", "") or "")
    if sop_class.startswith(STRUCTURED_REPORT_SOP_CLASS_ROOT):
        return f"SOPClassUID {sop_class} is a structured report"
    if sop_class.startswith(PRESENTATION_STATE_SOP_CLASS_ROOT):
        return f"SOPClassUID {sop_class} is a presentation state"
    if not header.get("Rows") or not header.get("Columns"):
        return "no Rows/Columns: not an image"
    return None


def routing_view(study: Study, rulesets: Iterable[RuleSet]) -> Hashable:
    """All that `route` reads of the study for these rule sets: series by series, why it holds no
    image (or None) and the values of every keyword their rules name, and Modality (from which
    ModalitiesInStudy is derived). Two studies with equal views route alike under these rule sets,
    so a replay over thousands of studies routes each distinct view once. Keep in step with
    `_evaluate`: a header read there that is not here would make unequal studies look equal."""
    keywords = {"Modality"}
    for ruleset in rulesets:
        for rule in ruleset.rules:
            keywords.update(rule.study, rule.series)
    ordered = sorted(keywords)
    return tuple((image_series_problem(series), tuple(_values(series.header, keyword) for keyword in ordered))
                 for series in study.series)


def _evaluate(rule: Rule, study: Study) -> RuleVerdict:
    if not rule.enabled:
        return RuleVerdict(rule, False, ("disabled (enabled: false)",))
    if not study.series:
        return RuleVerdict(rule, False, ("the study has no series",))
    reasons: list[str] = []
    study_values = _StudyValues(study)
    for keyword, condition in rule.study.items():
        outcome = _check(condition, keyword, study_values.get(keyword))
        reasons.append(f"study: {outcome.reason}")
        if not outcome.ok:
            return RuleVerdict(rule, False, tuple(reasons))

    selected: list[Series] = []
    for series in study.series:
        label = _series_label(series)
        problem = image_series_problem(series)
        if problem is not None:
            reasons.append(f"{label}: skipped, {problem}")
            continue
        ok = True
        for keyword, condition in rule.series.items():
            outcome = _check(condition, keyword, _values(series.header, keyword))
            reasons.append(f"{label}: {outcome.reason}")
            if not outcome.ok:
                ok = False
                break
        if ok:
            if not rule.series:
                reasons.append(f"{label}: selected (the rule has no series conditions)")
            selected.append(series)

    if not selected:
        reasons.append("no image series satisfies every series condition")
        return RuleVerdict(rule, False, tuple(reasons))
    decision = RouteDecision(rule, tuple(selected), tuple(rule.models), rule.priority)
    return RuleVerdict(rule, True, tuple(reasons), decision)


class _StudyValues:
    """Study-level values: the study header plus values derived from all series."""

    def __init__(self, study: Study) -> None:
        self._header = study.header
        modalities: set[str] = set()
        for series in study.series:
            values = _values(series.header, "Modality")
            modalities.update(str(value) for value in values or ())
        self._derived: Mapping[str, tuple[Any, ...] | None] = {
            "ModalitiesInStudy": tuple(sorted(modalities)) or None,
        }

    def get(self, keyword: str) -> tuple[Any, ...] | None:
        if keyword in self._derived:
            return self._derived[keyword]
        return _values(self._header, keyword)


def _values(dataset: Dataset, keyword: str) -> tuple[Any, ...] | None:
    """The attribute's values (strings stripped), or None when absent or empty."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    source = getattr(dataset, "file_meta", None) if tag >> 16 == _FILE_META_GROUP else dataset
    if source is None or tag not in source:
        return None
    value = source[tag].value
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    values: list[str | int | float] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, bytes):
            item = item.decode("latin-1")
        if isinstance(item, (int, float)):
            values.append(item)
            continue
        text = str(item).strip()
        if text:
            values.append(text)
    return tuple(values) or None


def _series_label(series: Series) -> str:
    header = series.header
    parts = [
        " ".join(str(v) for v in values)
        for keyword in ("Modality", "BodyPartExamined", "ViewPosition")
        if (values := _values(header, keyword))
    ]
    return f"series {series.series_instance_uid} [{' '.join(parts)}]"


def _check(condition: Condition, keyword: str, values: tuple[Any, ...] | None) -> _Outcome:
    """All operators of the condition must hold; report the first that fails, else the last."""
    outcome = _Outcome(True, keyword)
    for name, operand in condition.operators():
        outcome = _OPERATORS[name](operand, keyword, values)
        if not outcome.ok:
            return outcome
    return outcome


def _show(values: tuple[Any, ...]) -> str:
    shown = [repr(value) if isinstance(value, str) else str(value) for value in values]
    return shown[0] if len(shown) == 1 else f"[{', '.join(shown)}]"


def _show_operand(operand: Any) -> str:
    if isinstance(operand, list):
        return f"[{', '.join(str(item) for item in operand)}]"
    return repr(operand) if isinstance(operand, str) else str(operand)


def _missing(keyword: str) -> _Outcome:
    return _Outcome(False, f"{keyword} is missing")


def _equal(actual: Any, expected: str | int | float) -> bool:
    """Numbers compare as numbers; text exactly, after stripping DICOM's padding."""
    if isinstance(actual, (int, float)):
        try:
            return float(actual) == float(expected)
        except ValueError:
            return False
    return str(actual).strip() == str(expected).strip()


def _as_number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _op_exists(operand: bool, keyword: str, values: tuple[Any, ...] | None) -> _Outcome:
    present = values is not None
    state = f"{keyword} is present" if present else f"{keyword} is missing"
    return _Outcome(present == operand, state)


def _op_equals(
    operand: str | int | float, keyword: str, values: tuple[Any, ...] | None
) -> _Outcome:
    if values is None:
        return _missing(keyword)
    ok = any(_equal(value, operand) for value in values)
    verb = "equals" if ok else "does not equal"
    if len(values) > 1:
        verb = "has" if ok else "does not have"
    return _Outcome(ok, f"{keyword} {_show(values)} {verb} {_show_operand(operand)}")


def _op_in(
    operand: list[str | int | float], keyword: str, values: tuple[Any, ...] | None
) -> _Outcome:
    if values is None:
        return _missing(keyword)
    ok = any(_equal(value, expected) for value in values for expected in operand)
    if len(values) > 1:
        verb = "has a value in" if ok else "has no value in"
    else:
        verb = "is in" if ok else "is not in"
    return _Outcome(ok, f"{keyword} {_show(values)} {verb} {_show_operand(operand)}")


def _op_regex(operand: re.Pattern[str], keyword: str, values: tuple[Any, ...] | None) -> _Outcome:
    if values is None:
        return _missing(keyword)
    ok = any(operand.search(str(value)) for value in values)
    verb = "matches" if ok else "does not match"
    return _Outcome(ok, f"{keyword} {_show(values)} {verb} /{operand.pattern}/")


def _op_range(
    operand: tuple[int | float | None, int | float | None],
    keyword: str,
    values: tuple[Any, ...] | None,
) -> _Outcome:
    if values is None:
        return _missing(keyword)
    low, high = operand
    if low is not None and high is not None:
        bounds = f"between {low} and {high}"
    elif low is not None:
        bounds = f">= {low}"
    else:
        bounds = f"<= {high}"
    numbers = [number for value in values if (number := _as_number(value)) is not None]
    if not numbers:
        return _Outcome(False, f"{keyword} {_show(values)} is not a number")
    ok = any(
        (low is None or number >= low) and (high is None or number <= high) for number in numbers
    )
    return _Outcome(ok, f"{keyword} {_show(values)} is {'' if ok else 'not '}{bounds}")


def _op_not(operand: Condition, keyword: str, values: tuple[Any, ...] | None) -> _Outcome:
    inner = _check(operand, keyword, values)
    if inner.ok:
        return _Outcome(False, f"{inner.reason}, which the rule excludes (not)")
    return _Outcome(True, inner.reason)


_OPERATORS: dict[str, Callable[[Any, str, tuple[Any, ...] | None], _Outcome]] = {
    "exists": _op_exists,
    "equals": _op_equals,
    "in": _op_in,
    "regex": _op_regex,
    "range": _op_range,
    "not": _op_not,
}
