"""A normalised copy of a source image's header, so that ordinary input never breaks encoding.

highdicom builds the SR and the Secondary Capture from the source header: it reads PatientID,
PatientName, PatientBirthDate, PatientSex, AccessionNumber, StudyID, StudyDate and StudyTime as
attributes (AttributeError when a de-identified or minimal sender left them out), parses dates
and times (ValueError when malformed), accepts only M, F and O as sex, and the SR copies every
Patient and Study module attribute as it is (so a malformed value ends up in our output, where
dciodvfy rejects it). Type 2 attributes may legally be empty or absent, and the results must
still be made. Encoding therefore works on a copy in which:

- the Type 2 attributes highdicom reads are present (empty when the source has none);
- a value that breaks its value representation (a date that is no date, a time of 25 h, a
  code string over 16 characters, a person name with four component groups) is emptied
  when the attribute is Type 2 in the Patient or Study modules, and left out otherwise; text
  (LO, SH, ...) that is merely too long is cut to its maximum length instead;
- a multi-valued attribute whose dictionary VM is 1 keeps its first value;
- a Specific Character Set pydicom cannot decode is replaced (its values are decoded already).

Each change is logged with the file and the tag. The stored file is never touched.
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import TYPE_CHECKING

from highdicom._standard_utils import get_module_attribute_map
from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicom_ai.dicom_values import check
from dicom_ai.encode.charset import UTF8

if TYPE_CHECKING:
    from pydicom.tag import BaseTag

log = logging.getLogger(__name__)

# Patient and Study modules whose root attributes highdicom's SR copies from its first evidence item.
COPIED_MODULES = ("patient", "general-study", "patient-study", "clinical-trial-subject", "clinical-trial-study")
# Read as `dataset.Keyword` by highdicom (SR and SC constructors): absent means AttributeError.
READ_BY_HIGHDICOM = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                     "StudyDate", "StudyTime", "ReferringPhysicianName")
PIXEL_GROUP = 0x7FE0


def _module_keywords(types: str) -> tuple[str, ...]:
    """Root keywords of COPIED_MODULES whose Type starts with one of `types` (e.g. "2")."""
    modules = get_module_attribute_map()
    return tuple(dict.fromkeys(
        str(item["keyword"]) for module in COPIED_MODULES for item in modules.get(module, [])
        if not item["path"] and str(item["type"])[:1] in types
    ))


@functools.cache
def type2() -> frozenset[str]:
    """Root keywords that are Type 2 in COPIED_MODULES (present, possibly empty), and those highdicom reads.

    Computed on first use, as patient_and_study(): highdicom's module table holds ~100 MB once read, which a
    process that imports the pipeline but never encodes (the receiver, for its console) should not pay."""
    return frozenset(_module_keywords("2")) | frozenset(READ_BY_HIGHDICOM)


@functools.cache
def patient_and_study() -> tuple[str, ...]:
    """Every Patient and Study attribute an SR carries over from its source (whatever the source's IOD)."""
    return _module_keywords("123")


class _Normaliser:
    """Walks one header; `where` names the file in every log line."""

    def __init__(self, where: str) -> None:
        self.where = where

    def note(self, tag: BaseTag, keyword: str, value: object, what: str) -> None:
        log.warning("%s: %s %s %.80r %s", self.where, tag, keyword or "(unknown)", value, what)

    def walk(self, source: Dataset, root: bool) -> Dataset:
        target = Dataset()
        for tag in list(source.keys()):
            if tag.is_private or tag.group == PIXEL_GROUP or tag.group == 0x0002:
                continue
            keyword = keyword_for_tag(tag)
            try:
                element = source[tag]
            except Exception as exc:  # a raw value pydicom cannot even convert (e.g. IS 'abc')
                raw = source.get_item(tag)
                self._unusable(target, tag, keyword, getattr(raw, "value", None), f"cannot be read ({exc})", root)
                continue
            if element.VR == "SQ":
                if root and keyword not in patient_and_study():
                    target.add(element)  # never copied into our outputs (e.g. per-frame groups): as it is
                elif element.value:
                    target.add(DataElement(tag, "SQ", Sequence([self.walk(item, root=False) for item in element.value])))
                elif root and keyword in type2():
                    target.add(DataElement(tag, "SQ", Sequence()))
                else:  # an empty sequence is valid only where the attribute is Type 2
                    self.note(tag, keyword, "", "is an empty sequence; left out of the results")
                continue
            problem, value = check(element)
            if problem is None:
                target.add(DataElement(tag, element.VR, copy.deepcopy(element.value)))
            elif value is not None:
                self.note(tag, keyword, element.value, f"{problem}; encoded as {value!r}")
                target.add(DataElement(tag, element.VR, value))
            else:
                self._unusable(target, tag, keyword, element.value, problem, root)
        if root:
            for keyword in READ_BY_HIGHDICOM:
                if keyword not in target:
                    setattr(target, keyword, None)  # Type 2: present and empty
        return target

    def _unusable(self, target: Dataset, tag: BaseTag, keyword: str, value: object, problem: str,
                  root: bool) -> None:
        if root and keyword in type2():
            self.note(tag, keyword, value, f"{problem}; the results have it empty")
            target.add(DataElement(tag, str(dictionary_VR(tag)), None))
        else:
            self.note(tag, keyword, value, f"{problem}; left out of the results")


def _character_set(target: Dataset, where: str) -> None:
    value = target.get("SpecificCharacterSet")
    if "SpecificCharacterSet" in target and not value:
        del target.SpecificCharacterSet  # empty means the default repertoire, as when absent
        return
    if not value:
        return
    terms = list(value) if isinstance(value, MultiValue | list) else [value]
    unknown = [t for t in terms if str(t).strip() and str(t).strip() not in python_encoding]
    if unknown:
        log.warning("%s: (0008,0005) SpecificCharacterSet %r is not one pydicom can decode; the results use %s",
                    where, value, UTF8)
        target.SpecificCharacterSet = UTF8


def normalised_source(source: Dataset, where: str) -> Dataset:
    """A copy of `source`'s header that highdicom can always build an SR and an SC from."""
    normaliser = _Normaliser(where)
    target = normaliser.walk(source, root=True)
    _character_set(target, where)
    return target
