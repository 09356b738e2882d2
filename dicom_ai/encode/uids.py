"""Deterministic UIDs for our results, so running the same inputs again never makes duplicates.

A PACS that receives an instance whose SOP Instance UID it already holds keeps one copy; fresh
random UIDs on every re-run would pile up identical SRs and heatmaps in the study instead.

The UIDs are 2.25.<name-based UUID> (ISO/IEC 9834-8, RFC 4122 version 5). pydicom's
generate_uid(prefix=None, entropy_srcs=...) cannot do this: with prefix None it ignores the
entropy sources and returns a random UUID (pydicom 3.0).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicom_ai.domain import ModelInfo

# Our own UUID namespace: the same names give the same UUIDs only within dicom-ai.
NAMESPACE = uuid.UUID("c201c04b-d45e-46b1-8830-1dddbc3d97cf")

# Object kinds that name what a derived UID is for; per-image kinds get ":<source UID>" appended.
SR_SERIES = "SR-series"
SR_INSTANCE = "SR-instance"
SC_SERIES = "SC-series"
SC_INSTANCE = "SC-instance"
PM_SERIES = "PM-series"
PM_INSTANCE = "PM-instance"
TRACKING = "tracking"


def derive_uid(*parts: str) -> str:
    """Return a 2.25 UID that depends only on `parts` (in order).

    The parts are serialised as a JSON list before hashing, so ("ab", "c") and ("a", "bc")
    give different UIDs.
    """
    if not parts:
        raise ValueError("derive_uid needs at least one part to derive a UID from")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"derive_uid parts must be str, got {type(part).__name__}: {part!r}")
    return f"2.25.{uuid.uuid5(NAMESPACE, json.dumps(list(parts))).int}"


def result_uid(kind: str, study_instance_uid: str, model: ModelInfo, source_uids: Iterable[str],
               revision: int = 0) -> str:
    """The UID of one result object: same study, model name+version, sources, revision and kind -> same UID.

    Source SOP Instance UIDs are sorted so the order in which images were analysed does not
    matter; a new model version or one more image in the study gives new UIDs. `revision` counts
    the times the study's instances were replaced with other content under the same UIDs: results
    on the new content need new UIDs too (revision 0 derives exactly as before revisions existed).
    """
    parts = [study_instance_uid, model.name, model.version, kind]
    if revision:
        parts.append(f"revision {revision}")
    return derive_uid(*parts, *sorted(set(source_uids)))

# The assessment of an AI SR by a radiologist or a report (encode/assessment.py).
ASSESSMENT_SERIES = "assessment-series"
ASSESSMENT_INSTANCE = "assessment-instance"


def assessment_uid(kind: str, study_instance_uid: str, assessed_sop_instance_uid: str, content: str = "") -> str:
    """The UID of an assessment SR or its series: the same judgements of the same AI SR give the same UID,
    a revised judgement a new one (`content` is a digest of what the assessment says; the series has none)."""
    return derive_uid(study_instance_uid, assessed_sop_instance_uid, kind, *([content] if content else []))
