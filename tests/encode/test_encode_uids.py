from __future__ import annotations

import pytest
from pydicom.uid import UID

from dicom_ai.encode.uids import SR_INSTANCE, SR_SERIES, derive_uid, result_uid
from tests.encode.encode_support import model_info

STUDY = "1.2.826.0.1.3680043.8.498.1"


def test_derive_uid_is_a_valid_deterministic_2_25_uid() -> None:
    first = derive_uid(STUDY, "chest-xray-demo", "1.0.0", "SR-instance", "1.2.3")
    assert first == derive_uid(STUDY, "chest-xray-demo", "1.0.0", "SR-instance", "1.2.3")
    assert first.startswith("2.25.")
    assert UID(first).is_valid
    assert len(first) <= 64


def test_derive_uid_keeps_part_boundaries() -> None:
    # pydicom alone concatenates its entropy sources, which would make these two equal.
    assert derive_uid("ab", "c") != derive_uid("a", "bc")


def test_derive_uid_needs_string_parts() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        derive_uid()
    with pytest.raises(TypeError, match="must be str"):
        derive_uid(STUDY, 3)  # type: ignore[arg-type]


def test_result_uid_ignores_source_order_but_not_inputs() -> None:
    model = model_info()
    base = result_uid(SR_INSTANCE, STUDY, model, ["1.2.3", "1.2.4"])
    assert base == result_uid(SR_INSTANCE, STUDY, model, ["1.2.4", "1.2.3"])
    others = {
        result_uid(SR_INSTANCE, STUDY, model_info(version="1.0.1"), ["1.2.3", "1.2.4"]),
        result_uid(SR_INSTANCE, STUDY, model_info(name="other-model"), ["1.2.3", "1.2.4"]),
        result_uid(SR_SERIES, STUDY, model, ["1.2.3", "1.2.4"]),
        result_uid(SR_INSTANCE, STUDY + ".9", model, ["1.2.3", "1.2.4"]),
        result_uid(SR_INSTANCE, STUDY, model, ["1.2.3"]),
    }
    assert base not in others
    assert len(others) == 5


def test_derive_uid_is_stable_across_processes_and_releases() -> None:
    # A changed value here would give every re-run after an upgrade duplicates in the PACS.
    expected = "2.25.83734862083499456676165486510412600338"
    assert derive_uid("1.2.3", "chest-xray-demo", "1.0.0", "SR-instance") == expected
