"""Where a study's priority goes: one outbox entry per enabled carrier, all from one decision.

A radiologist's override outranks the AI's level everywhere (its sentence first, the AI's after;
see prioritize/override.py), so Orthanc's flags, the worklist entry, the HL7 result and the
notices never disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dicom_ai.domain import Carrier, OutboxEntry, PriorityDecision
from dicom_ai.errors import one_line
from dicom_ai.send.carriers import PRIORITY_CARRIERS, Publication

if TYPE_CHECKING:
    from dicom_ai.config import Settings

log = logging.getLogger(__name__)


def publications(publication: Publication, settings: Settings) -> tuple[list[OutboxEntry], list[str]]:
    """An entry for every carrier the settings enable (notices only at their levels), and the
    carriers skipped because their message could not be built.

    A carrier that cannot be built (a bug, or a value no format anticipated) is skipped and named,
    so the SR, the heatmaps and the other carriers still reach the radiologist; the pipeline
    records the skip and `dicom-ai status` shows it.
    """
    entries: list[OutboxEntry] = []
    skipped: list[str] = []
    for carrier in PRIORITY_CARRIERS:
        try:
            entry = carrier.build(publication, settings)
        except Exception as exc:  # noqa: BLE001: one carrier must not hold back the others
            log.exception("study %s: the %s result could not be built and is skipped",
                          publication.study_instance_uid, carrier.CARRIER)
            skipped.append(f"{carrier.CARRIER}: {one_line(exc)}")
            continue
        if entry is not None:
            entries.append(entry)
    return entries, skipped


def priority_change(study_uid: str, priority: PriorityDecision, previous: Mapping[Carrier, str],
                    settings: Settings) -> list[OutboxEntry]:
    """Entries that carry a changed priority (an override) to the carriers whose message can follow it:
    Orthanc's flags and the worklist entry; results and notices already sent stay as they were."""
    entries = []
    for carrier in PRIORITY_CARRIERS:
        rebuild = getattr(carrier, "rebuild", None)
        if rebuild is not None and (entry := rebuild(previous.get(carrier.CARRIER), study_uid, priority, settings)):
            entries.append(entry)
    return entries
