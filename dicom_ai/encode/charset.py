"""Pick a Specific Character Set that can hold every text value we write.

Our text (model names, finding labels) may be non-ASCII while the reference image says
ISO_IR 100 or nothing at all (ASCII): a reader then decodes our bytes as the wrong characters.
UTF-8 (ISO_IR 192) holds them all, so it is used whenever anything is non-ASCII.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.multival import MultiValue

if TYPE_CHECKING:
    from pydicom import Dataset

UTF8 = "ISO_IR 192"  # Specific Character Set (0008,0005) for UTF-8
# Value representations whose values are affected by Specific Character Set (PS3.5 6.1.2.3).
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})


def has_non_ascii_text(dataset: Dataset) -> bool:
    """True when any text value, at any depth of sequences, has a non-ASCII character."""
    for element in dataset.iterall():
        if element.VR not in TEXT_VRS or element.value is None:
            continue
        values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
        if any(not str(value).isascii() for value in values):
            return True
    return False


def ensure_character_set(dataset: Dataset) -> None:
    """Set Specific Character Set to UTF-8 when needed; leave an ASCII-only dataset as it is."""
    if has_non_ascii_text(dataset):
        dataset.SpecificCharacterSet = UTF8
