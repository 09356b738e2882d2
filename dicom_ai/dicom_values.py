"""Is a received DICOM value usable as it is? Shared by the stages that copy source values into
what they write (encode's SR and SC, prioritize's worklist entry and HL7 message).

Senders write dates that are no dates, times of 25 h, sex as 'male', names with a backslash or
four component groups, accession numbers longer than SH allows. Written back unchanged, those
values break our outputs (highdicom raises, dciodvfy rejects, a worklist SCP chokes). `check`
says what is wrong and offers a replacement where one is safe: text merely too long is cut, and
a single-valued attribute holding several values keeps its first; otherwise the value is unusable.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VM, keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM, VALIDATORS

if TYPE_CHECKING:
    from pydicom import Dataset
    from pydicom.dataelem import DataElement
    from pydicom.tag import BaseTag

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_safe_uid(uid: str) -> bool:
    """A UID we also use as a path component: digits and dots only, at most 64 characters."""
    return bool(_UID.match(uid)) and len(uid) <= 64

# Maximum characters of the text VRs that are cut rather than dropped (PS3.5 table 6.2-1).
TEXT_MAX_CHARS: dict[str, int] = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240}
DATE_TIME_TYPES: dict[str, type] = {"DA": DA, "TM": TM, "DT": DT}
# Value representations whose values are checked; binary and UID values are left as they are
# (a UID is identity: SOP, series and study references must stay exactly the source's).
CHECKED_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"})
SEX_VALUES = frozenset({"M", "F", "O"})  # Patient's Sex (0010,0040) enumerated values
PN_MAX_COMPONENTS = 5  # family, given, middle, prefix, suffix


def why_invalid(vr: str, value: object, keyword: str = "") -> str | None:
    """Why one value (not a multi-value) is invalid for its VR, or None when it is fine."""
    if value is None or value == "":
        return None
    if vr in DATE_TIME_TYPES:
        try:
            DATE_TIME_TYPES[vr](value)
        except (ValueError, TypeError, OverflowError) as exc:
            return f"is not a valid {vr} ({exc})"
    if vr in ("DS", "IS"):  # pydicom's DSfloat/IS are numbers: check the text they were read from
        value = getattr(value, "original_string", None) or str(value)
    if vr == "PN":
        value = str(value)  # pydicom's validator accepts any PersonName object without looking
        if any(ord(c) < 0x20 and c != "\x1b" for c in value):
            return "is not a valid PN (control characters)"
        if any(group.count("^") >= PN_MAX_COMPONENTS for group in value.split("=")):
            return f"is not a valid PN (more than {PN_MAX_COMPONENTS} components)"
    if keyword == "PatientSex" and str(value) not in SEX_VALUES:
        return f"is not one of {', '.join(sorted(SEX_VALUES))}"
    validator = VALIDATORS.get(vr)
    if validator is not None:
        valid, message = validator(vr, value)
        if not valid:
            return f"is not a valid {vr} ({message.split(' Please see')[0].strip()})"
    return None


def single_valued(tag: BaseTag) -> bool:
    """True when the data dictionary allows one value only (VM 1)."""
    try:
        return dictionary_VM(tag) == "1"
    except KeyError:  # not in pydicom's dictionary: nothing to say
        return False


def check(element: DataElement) -> tuple[str | None, Any]:
    """(problem, replacement) for one element: (None, None) when usable as it is, (problem,
    replacement) when a safe replacement exists, (problem, None) when the value is unusable."""
    vr, value = element.VR, element.value
    if vr not in CHECKED_VRS or value is None or value == "":
        return None, None
    keyword = keyword_for_tag(element.tag)
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if len(values) > 1 and single_valued(element.tag):
        first = why_invalid(vr, values[0], keyword)
        if first is not None:
            return f"has {len(values)} values where one is allowed, and the first {first}", None
        return f"has {len(values)} values where one is allowed", values[0]
    problems = [p for p in (why_invalid(vr, v, keyword) for v in values) if p is not None]
    if not problems:
        return None, None
    limit = TEXT_MAX_CHARS.get(vr)
    if limit is not None and len(values) == 1 and len(str(values[0])) > limit:
        cut = str(values[0])[:limit].rstrip()
        if why_invalid(vr, cut, keyword) is None:
            return f"is longer than {limit} characters", cut
    return problems[0], None


def usable_text(header: Dataset, keyword: str, where: str) -> str:
    """A top-level value as text ready to copy, '' when absent or unusable (logged naming `where` and the tag)."""
    element = header.get(keyword)
    if element is None:
        return ""
    try:
        element = header[keyword]  # a DataElement (get() above gives the value)
    except Exception as exc:  # a raw value pydicom cannot even convert (e.g. IS 'abc')
        log.warning("%s: %s cannot be read (%s); left empty", where, keyword, exc)
        return ""
    problem, replacement = check(element)
    if problem is None:
        return "" if element.value is None else str(element.value)
    shown = f"{replacement!r}" if replacement is not None else "empty"
    log.warning("%s: %s %s %.80r %s; written as %s", where, element.tag, keyword, element.value, problem, shown)
    return "" if replacement is None else str(replacement)
