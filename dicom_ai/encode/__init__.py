"""Encode a model's results on one study as DICOM objects that go back into that study.

One call per model and study gives one Comprehensive 3D SR (TID 1500) for all analysed images,
one RGB Secondary Capture per image that has a heatmap and, when asked for, the same heatmaps as
Parametric Maps a viewer can lay over the images. UIDs are derived from the study,
the model name and version and the sources, so re-running the same inputs replaces rather than
duplicates what the PACS holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from dicom_ai.encode.describe import series_description
from dicom_ai.encode.equipment import check_model, contributing_equipment
from dicom_ai.encode.pm import build_parametric_map, unmappable
from dicom_ai.encode.sc import build_secondary_capture
from dicom_ai.encode.source import normalised_source
from dicom_ai.encode.sr import build_sr
from dicom_ai.encode.uids import (
    PM_INSTANCE,
    PM_SERIES,
    SC_INSTANCE,
    SC_SERIES,
    SR_INSTANCE,
    SR_SERIES,
    TRACKING,
    result_uid,
)

if TYPE_CHECKING:
    import highdicom as hd
    from pydicom import Dataset

    from dicom_ai.domain import Finding, ImageResult, ModelInfo, PriorityDecision

__all__ = ["EncodedResults", "encode_results"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class EncodedResults:
    """What goes back to the PACS for one model on one study."""

    sr: Dataset
    secondary_captures: tuple[Dataset, ...]
    parametric_maps: tuple[Dataset, ...] = ()

    def objects(self) -> list[tuple[str, Dataset]]:
        """Every object to store and send, with its kind ("SR", "SC", "PM"), the SR first."""
        return [("SR", self.sr), *(("SC", sc) for sc in self.secondary_captures),
                *(("PM", pm) for pm in self.parametric_maps)]


def _check_sources(results: Sequence[ImageResult], sources: Mapping[str, Dataset]) -> str:
    """Check every result has its source header, all in one study; return that study's UID."""
    seen: set[str] = set()
    study_uids: set[str] = set()
    for result in results:
        uid = result.source.sop_instance_uid
        if uid in seen:
            raise ValueError(f"SOPInstanceUID {uid} has more than one image result; expected one per image")
        seen.add(uid)
        if uid not in sources:
            raise ValueError(f"no source dataset for SOPInstanceUID {uid} (file {result.source.path})")
        source = sources[uid]
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not source.get(keyword):
                raise ValueError(f"source dataset for {uid} (file {result.source.path}) has no {keyword}")
        if str(source.SOPInstanceUID) != uid:
            raise ValueError(f"sources[{uid!r}] holds SOPInstanceUID {source.SOPInstanceUID} instead")
        study_uids.add(str(source.StudyInstanceUID))
    if len(study_uids) != 1:
        raise ValueError(f"results must come from one study per call, got StudyInstanceUIDs {sorted(study_uids)}")
    return study_uids.pop()


def _order_key(result: ImageResult, sources: Mapping[str, Dataset]) -> tuple[str, int, str]:
    source = sources[result.source.sop_instance_uid]
    number = source.get("InstanceNumber")
    return str(source.SeriesInstanceUID), int(number) if number not in (None, "") else 0, str(source.SOPInstanceUID)


def _parametric_maps(
    with_heatmap: Sequence[ImageResult],
    sources: Mapping[str, Dataset],
    model: ModelInfo,
    priority: PriorityDecision,
    findings: Sequence[Finding],
    equipment: hd.ContributingEquipment,
    uid: Callable[[str], str],
    study_uid: str,
) -> tuple[Dataset, ...]:
    """One Parametric Map per source series with heatmaps, over every image of it in `sources`."""
    by_series: dict[str, dict[str, ImageResult]] = {}
    for result in with_heatmap:
        by_series.setdefault(result.source.series_instance_uid, {})[result.source.sop_instance_uid] = result
    description = series_description("PM", model, priority, findings)
    maps: list[Dataset] = []
    for series_uid, results in by_series.items():
        series = sorted((normalised_source(source, f"SOPInstanceUID {uid_}") for uid_, source in sources.items()
                         if str(source.get("SeriesInstanceUID")) == series_uid),
                        key=lambda s: (int(s.get("InstanceNumber") or 0), str(s.SOPInstanceUID)))
        problem = unmappable(series)
        if problem:
            log.info("study %s: no Parametric Map for series %s: %s (its heatmap SCs are made)",
                     study_uid, series_uid, problem)
            continue
        maps.append(build_parametric_map(
            results, series, model,
            series_instance_uid=uid(PM_SERIES),
            sop_instance_uid=uid(f"{PM_INSTANCE}:{series_uid}"),
            instance_number=len(maps) + 1,
            series_description=description,
            equipment=equipment,
        ))
    return tuple(maps)


def encode_results(
    results: Sequence[ImageResult],
    sources: Mapping[str, Dataset],
    model: ModelInfo,
    priority: PriorityDecision,
    *,
    revision: int = 0,
    predecessors: Sequence[Dataset] = (),
    parametric_maps: bool = False,
) -> EncodedResults:
    """Build the SR for all `results` and a Secondary Capture for each result that has a heatmap.

    With `parametric_maps`, the heatmaps of each source series also become one Parametric Map over
    that series' images in `sources`, when they have the geometry one needs (encode/pm.py; setting
    heatmap_objects = sc,pm).

    `predecessors` are earlier SRs of this model on the study that the PACS holds; the new SR names
    them in its Predecessor Documents Sequence (those with its own UID are left out: a re-run of the
    same inputs is the same document, not a successor). `revision` see encode/uids.py.

    `sources` maps SOP Instance UID to the source dataset (a header read with
    stop_before_pixels=True is enough). Results are put in series / Instance Number order, so
    the same images in another order give identical objects.
    """
    if not results:
        raise ValueError("encode_results needs at least one image result")
    check_model(model)
    study_uid = _check_sources(results, sources)
    given = sources
    sources = {r.source.sop_instance_uid: normalised_source(sources[r.source.sop_instance_uid], str(r.source.path))
               for r in results}
    ordered = sorted(results, key=lambda r: _order_key(r, sources))
    source_uids = [r.source.sop_instance_uid for r in ordered]
    findings = [f for r in ordered for f in r.findings]
    equipment = contributing_equipment(model, datetime.now().astimezone())

    def uid(kind: str) -> str:
        return result_uid(kind, study_uid, model, source_uids, revision)

    sr = build_sr(
        ordered,
        sources,
        model,
        series_instance_uid=uid(SR_SERIES),
        sop_instance_uid=uid(SR_INSTANCE),
        tracking_uids={s: uid(f"{TRACKING}:{s}") for s in source_uids},
        series_description=series_description("SR", model, priority, findings),
        equipment=equipment,
        predecessors=[p for p in predecessors if str(p.SOPInstanceUID) != uid(SR_INSTANCE)],
    )
    with_heatmap = [r for r in ordered if r.heatmap is not None]
    sc_series_uid = uid(SC_SERIES)
    sc_description = series_description("SC", model, priority, findings)
    captures = tuple(
        build_secondary_capture(
            result,
            sources[result.source.sop_instance_uid],
            model,
            priority,
            series_instance_uid=sc_series_uid,
            sop_instance_uid=uid(f"{SC_INSTANCE}:{result.source.sop_instance_uid}"),
            instance_number=number,
            series_description=sc_description,
            equipment=equipment,
        )
        for number, result in enumerate(with_heatmap, start=1)
    )
    maps: tuple[Dataset, ...] = ()
    if parametric_maps:
        maps = _parametric_maps(with_heatmap, given, model, priority, findings, equipment, uid, study_uid)
    log.info(
        "study %s: encoded %s %s as 1 SR (%d image(s)), %d Secondary Capture(s) and %d Parametric Map(s): %s",
        study_uid, model.name, model.version, len(ordered), len(captures), len(maps), sr.SeriesDescription,
    )
    return EncodedResults(sr=sr, secondary_captures=captures, parametric_maps=maps)
