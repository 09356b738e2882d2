"""Routing rules as typed, validated models: a rule that constructs is a rule that can run.

Admins write rules in YAML (see docs/rules.md); the loader turns each YAML rule into a `Rule`.
Conditions are keyed by DICOM keyword and use a handful of declarative operators (no eval), so a
typo is caught when the file is loaded, not when a study arrives.
"""

from __future__ import annotations

import datetime
import difflib
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydicom.datadict import dictionary_VR, keyword_dict

__all__ = [
    "DERIVED_STUDY_KEYWORDS",
    "OPERATORS",
    "Completion",
    "Condition",
    "PriorityPolicy",
    "Rule",
    "RuleSet",
    "RuleSource",
    "TimeWindow",
    "suggest",
]

# Study-level values the matcher computes from the study's series rather than reading a header.
# ModalitiesInStudy (0008,0061) is a real DICOM keyword, but stored images rarely carry it.
DERIVED_STUDY_KEYWORDS = frozenset({"ModalitiesInStudy"})

# Condition operators in evaluation order (the YAML spelling).
OPERATORS = ("exists", "equals", "in", "regex", "range", "not")

# Rule names appear on the command line and in logs, so keep them shell- and log-friendly.
RULE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

_KEYWORDS_BY_LOWER = {k.lower(): k for k in keyword_dict}


def suggest(word: str, candidates: list[str] | tuple[str, ...] | frozenset[str]) -> str:
    """Return ' (did you mean 'X'?)' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _keyword_suggestion(word: str) -> str:
    exact_case = _KEYWORDS_BY_LOWER.get(word.lower())
    if exact_case is not None:
        return f" (did you mean {exact_case!r}?)"
    return suggest(word, tuple(keyword_dict))


def _check_keyword(keyword: str, *, level: str) -> str:
    """Accept a DICOM keyword whose value can be compared (not a sequence)."""
    if keyword in DERIVED_STUDY_KEYWORDS:
        if level == "series":
            raise ValueError(
                f"{keyword} is a study-level value computed from all series; put it under 'study'"
            )
        return keyword
    if keyword not in keyword_dict:
        raise ValueError(f"unknown DICOM keyword {keyword!r}{_keyword_suggestion(keyword)}")
    if dictionary_VR(keyword) == "SQ":
        raise ValueError(
            f"{keyword} is a sequence (VR SQ); sequences cannot be matched, "
            "use an attribute that holds a value"
        )
    return keyword


def _study_keyword(keyword: str) -> str:
    return _check_keyword(keyword, level="study")


def _series_keyword(keyword: str) -> str:
    return _check_keyword(keyword, level="series")


StudyKeyword = Annotated[str, AfterValidator(_study_keyword)]
SeriesKeyword = Annotated[str, AfterValidator(_series_keyword)]


def _scalar(value: Any) -> Any:
    """Reject values that YAML produced by surprise (yes/no -> bool, 2024-01-01 -> date)."""
    if isinstance(value, bool):
        raise ValueError(
            "YAML read an unquoted yes/no/true/false/on/off as a boolean; "
            "quote it (e.g. 'YES') to compare text"
        )
    if isinstance(value, datetime.date):
        raise ValueError(
            f"YAML read {value} as a date; write DICOM dates as quoted text, e.g. "
            f"'{value.strftime('%Y%m%d')}'"
        )
    if value is None:
        raise ValueError(
            "a value is missing (null); to require a missing attribute use exists: false"
        )
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"expected text or a number, got {type(value).__name__} {value!r}")
    return value


def _bound(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"range bounds must be numbers or null, got {value!r}")
    return value


def _compile(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    if isinstance(value, re.Pattern):
        return value
    raise ValueError(f"regex must be text (a Python regular expression), got {value!r}")


Scalar = Annotated[str | int | float, BeforeValidator(_scalar)]
Bound = Annotated[int | float | None, BeforeValidator(_bound)]
Pattern = Annotated[re.Pattern[str], BeforeValidator(_compile)]


class Condition(BaseModel):
    """A test on one attribute; several operators in one condition must all hold.

    YAML shorthand: a scalar means `equals`, a list means `in`. Python callers pass the YAML
    spelling: `Condition.model_validate({"in": ["CR", "DX"]})` or `Condition.model_validate("CR")`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    exists: bool | None = Field(default=None, strict=True)
    equals: Scalar | None = None
    in_: Annotated[list[Scalar], Field(min_length=1)] | None = Field(default=None, alias="in")
    regex: Pattern | None = None
    range: tuple[Bound, Bound] | None = None
    not_: Condition | None = Field(default=None, alias="not")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            return {"in": list(data)}
        if isinstance(data, dict):
            if not data:
                raise ValueError(f"a condition needs an operator: one of {', '.join(OPERATORS)}")
            for key, value in data.items():
                if key in OPERATORS and value is None:
                    raise ValueError(f"{key} has no value (null)")
            return data
        if isinstance(data, Condition):
            return data
        if data is None:
            raise ValueError(
                "the condition is empty; to require a missing attribute use exists: false"
            )
        return {"equals": data}

    @field_validator("range", mode="before")
    @classmethod
    def _range_shape(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"range takes [min, max] (null for an open end), got {value!r}")
        return value

    @model_validator(mode="after")
    def _range_order(self) -> Self:
        if self.range is not None:
            low, high = self.range
            if low is None and high is None:
                raise ValueError("range [null, null] allows everything; give at least one bound")
            if low is not None and high is not None and low > high:
                raise ValueError(f"range minimum {low} is greater than maximum {high}")
        return self

    def operators(self) -> list[tuple[str, Any]]:
        """The operators this condition uses, as (YAML name, value), in evaluation order."""
        values = {
            "exists": self.exists,
            "equals": self.equals,
            "in": self.in_,
            "regex": self.regex,
            "range": self.range,
            "not": self.not_,
        }
        return [(name, values[name]) for name in OPERATORS if values[name] is not None]


class PriorityPolicy(BaseModel):
    """How a rule's findings raise reading priority; the prioritize stage applies it.

    `findings` names the model labels that count (None: every label the model reports); a
    counted finding with probability above `stat_above` makes the study STAT, above
    `urgent_above` URGENT.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    findings: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = (
        None
    )
    stat_above: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    urgent_above: Annotated[float, Field(ge=0.0, le=1.0)] | None = None

    @model_validator(mode="after")
    def _thresholds(self) -> Self:
        if self.stat_above is None and self.urgent_above is None:
            raise ValueError("a priority policy needs stat_above, urgent_above or both")
        if (
            self.stat_above is not None
            and self.urgent_above is not None
            and self.stat_above < self.urgent_above
        ):
            raise ValueError(
                f"stat_above ({self.stat_above}) must be >= urgent_above ({self.urgent_above})"
            )
        return self


DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MINUTES_PER_DAY = 24 * 60
_WINDOW_PATTERN = re.compile(r"^(?:(?P<days>[A-Za-z,\- ]+?)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$")
_WINDOW_EXAMPLE = "e.g. '22:00-06:00' or 'Mon-Fri 22:00-06:00' or 'Sat,Sun 00:00-24:00'"


def _minutes(text: str, *, end: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise ValueError(f"{text!r} is not a time of day (HH:MM, 00:00 to 24:00); {_WINDOW_EXAMPLE}")
    return hours * 60 + minutes


def _day(token: str) -> int:
    name = token.strip()[:1].upper() + token.strip()[1:3].lower()
    if len(token.strip()) != 3 or name not in DAY_NAMES:
        raise ValueError(f"unknown day {token.strip()!r}{suggest(name, DAY_NAMES)}; days are {', '.join(DAY_NAMES)}")
    return DAY_NAMES.index(name)


def _days(text: str) -> tuple[int, ...]:
    days: set[int] = set()
    for item in text.split(","):
        if "-" in item:
            first, last = (_day(part) for part in item.split("-", 1))
            days.update((first + step) % 7 for step in range((last - first) % 7 + 1))
        else:
            days.add(_day(item))
    return tuple(sorted(days))


class TimeWindow(BaseModel):
    """When a rule's models may run, in the node's local time: `[DAYS] HH:MM-HH:MM`.

    A window that ends before it starts runs past midnight and belongs to the day it starts
    ('Fri 22:00-06:00' is open on Saturday at 03:00). Without days it is open every day.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    days: tuple[int, ...]
    start: int  # minutes after midnight
    length: int  # minutes

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if isinstance(data, (TimeWindow, dict)):
            return data
        if not isinstance(data, str):
            raise ValueError(f"window takes text, {_WINDOW_EXAMPLE}; got {data!r}")
        match = _WINDOW_PATTERN.match(data.strip())
        if match is None:
            raise ValueError(f"window {data!r} is not [DAYS] HH:MM-HH:MM, {_WINDOW_EXAMPLE}")
        start, end = _minutes(match["start"], end=False), _minutes(match["end"], end=True)
        if start == end:
            raise ValueError(f"window {data!r} is empty (it starts when it ends); for all day write 00:00-24:00")
        days = _days(match["days"]) if match["days"] else tuple(range(7))
        return {"text": data.strip(), "days": days, "start": start, "length": (end - start) % MINUTES_PER_DAY
                or MINUTES_PER_DAY}

    def _starts_near(self, when: datetime.datetime) -> list[datetime.datetime]:
        midnight = when.replace(hour=0, minute=0, second=0, microsecond=0)
        return [midnight + timedelta(days=offset, minutes=self.start) for offset in range(-1, 9)
                if (midnight + timedelta(days=offset)).weekday() in self.days]

    def is_open(self, when: datetime.datetime) -> bool:
        """True when `when` (a local time) lies inside the window."""
        return any(start <= when < start + timedelta(minutes=self.length) for start in self._starts_near(when))

    def next_open(self, when: datetime.datetime) -> datetime.datetime:
        """`when` itself when open, else the next moment the window opens (within a week)."""
        if self.is_open(when):
            return when
        return min(start for start in self._starts_near(when) if start > when)

    def __str__(self) -> str:
        return self.text


class Completion(BaseModel):
    """When a study matched by the rule is complete before (or despite) the quiet time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    series: Annotated[int, Field(ge=1, strict=True)] | None = None
    series_descriptions: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    max_wait: Annotated[float, Field(gt=0)] | None = None
    series_quiet: Annotated[float, Field(ge=0)] = 2.0  # a series counts once no instance of it came this long

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.series is None and self.series_descriptions is None and self.max_wait is None:
            raise ValueError("complete needs series, series_descriptions, max_wait or several of them")
        return self


@dataclass(frozen=True)
class RuleSource:
    """Where a rule was written, so messages can send an admin to the right line."""

    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def _rule_name(name: str) -> str:
    if not RULE_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"rule name {name!r} must start with a letter or digit and use only letters, "
            "digits, '.', '_' and '-'"
        )
    return name


def _unique_models(models: list[str]) -> list[str]:
    seen: set[str] = set()
    for model in models:
        if model in seen:
            raise ValueError(f"model {model!r} is listed twice")
        seen.add(model)
    return models


class Rule(BaseModel):
    """One routing rule: which studies and series go to which models, with what priority."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, AfterValidator(_rule_name)]
    description: str = ""
    enabled: bool = True
    study: dict[StudyKeyword, Condition] = Field(default_factory=dict)
    series: dict[SeriesKeyword, Condition] = Field(default_factory=dict)
    models: Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(min_length=1),
        AfterValidator(_unique_models),
    ]
    priority: PriorityPolicy | None = None
    order: Annotated[int, Field(strict=True)] = 0
    fallback: Annotated[bool, Field(strict=True)] = False
    shadow: Annotated[bool, Field(strict=True)] = False
    window: TimeWindow | None = None
    complete: Completion | None = None

    _source: RuleSource | None = PrivateAttr(default=None)

    @property
    def source(self) -> RuleSource | None:
        """The file and line the rule came from (None for rules built in code)."""
        return self._source

    def with_source(self, file: Path, line: int) -> Rule:
        """A copy of this rule that remembers where it was written."""
        copy = self.model_copy()
        copy._source = RuleSource(Path(file), line)
        return copy

    def __str__(self) -> str:
        return f"{self.name} ({self.source})" if self.source else self.name


class RuleSet(BaseModel):
    """All rules loaded from a rules directory, by `order`, then file-name order, then file order."""

    model_config = ConfigDict(frozen=True)

    rules: tuple[Rule, ...] = ()
    files: tuple[Path, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        first: dict[str, Rule] = {}
        for rule in self.rules:
            if rule.name in first:
                where = (
                    f" (first defined at {first[rule.name].source})"
                    if first[rule.name].source
                    else ""
                )
                raise ValueError(f"rule name {rule.name!r} is used twice{where}")
            first[rule.name] = rule
        return self

    def get(self, name: str) -> Rule | None:
        """The rule with this name, or None."""
        return next((rule for rule in self.rules if rule.name == name), None)
