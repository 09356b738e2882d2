"""The small vocabulary every stage speaks, so stages depend on it and not on each other.

Data flows receive -> assemble -> route -> infer -> encode -> send -> prioritize; each stage takes
and returns these frozen records. DICOM attribute values keep their DICOM keyword spelling.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from pydicom import Dataset


class StudyState(enum.StrEnum):
    """Where a study is in its life; stored as text in the database."""

    RECEIVING = "receiving"  # instances arriving; not yet quiet for stable_after seconds
    COMPLETE = "complete"  # quiet long enough: waiting for the pipeline
    PROCESSING = "processing"  # the pipeline has it (a crash here re-runs it on start-up)
    WAITING = "waiting"  # routed to a model outside its rule's time window: complete again at waiting_until
    DONE = "done"  # results encoded and queued for sending
    NO_MATCH = "no_match"  # no rule matched: stored, no results
    FAILED = "failed"  # the pipeline raised; the error is kept on the study


class Carrier(enum.StrEnum):
    """How a result or a priority leaves the node; each has one module in dicom_ai/send/carriers/.

    The values are what the outbox stores, so they never change.
    """

    DICOM = "dicom"  # result objects (SR, SC...) by C-STORE to the PACS
    STOW = "stow"  # result objects by DICOMweb STOW-RS to an archive
    ORTHANC_METADATA = "orthanc_metadata"  # priority and findings as Orthanc study metadata
    MWL = "mwl"  # a Modality Worklist entry (.wl file) with the Requested Procedure Priority
    HL7 = "hl7"  # an HL7 v2.5 ORU^R01 over MLLP
    WEBHOOK = "webhook"  # a JSON notice POSTed to a URL
    EMAIL = "email"  # an e-mail notice over SMTP


# The carriers of result objects (one outbox entry per file, keyed by its SOP Instance UID): a result
# sent by any of them is held by an archive, and a superseded result is not sent by any of them.
RESULT_CARRIERS: frozenset[Carrier] = frozenset({Carrier.DICOM, Carrier.STOW})


class Priority(enum.IntEnum):
    """Reading priority; a larger value is read first."""

    ROUTINE = 0
    URGENT = 1
    STAT = 2


@dataclass(frozen=True)
class Code:
    """A coded concept (value, scheme designator, meaning), e.g. SNOMED CT 95436008."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Instance:
    """One stored SOP instance: where its file is and which study/series it belongs to."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    path: Path


@dataclass(frozen=True, eq=False)
class Series:
    """A series as routing sees it: its instances and one representative header (no pixels)."""

    series_instance_uid: str
    instances: tuple[Instance, ...]
    header: Dataset


@dataclass(frozen=True, eq=False)
class Study:
    """A complete study handed from assemble to route."""

    study_instance_uid: str
    series: tuple[Series, ...]

    @property
    def header(self) -> Dataset:
        """Study-level attributes (patient, study) as carried by the first series."""
        return self.series[0].header


@dataclass(frozen=True)
class ModelInfo:
    """Who produced a result: goes into the SR's device observer and Contributing Equipment."""

    name: str
    version: str
    device_uid: str
    manufacturer: str
    display_name: str
    not_for_clinical_use: bool
    intended_use: str


@dataclass(frozen=True)
class Finding:
    """One label's outcome on one image."""

    label: str
    code: Code
    probability: float
    threshold: float

    @property
    def present(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True)
class LabelSummary:
    """One label over a whole study: what a worklist, RIS or notice reports.

    A volume model reports its finding on each salient slice and a mammography study has four
    views; the reader wants "Mass 92%, present on 1 of 4 images", not four entries.
    """

    label: str
    code: Code
    probability: float
    images: int
    images_present: int

    @property
    def present(self) -> bool:
        return self.images_present > 0

    def describe(self) -> str:
        if self.images == 1:
            state = "present" if self.present else "absent"
        elif self.present:
            state = f"present on {self.images_present} of {self.images} images"
        else:
            state = f"absent on {self.images} images"
        return f"{self.label} {self.probability:.0%} ({state})"


def summarize_findings(findings: Sequence[Finding]) -> list[LabelSummary]:
    """Per-image findings folded per label (highest probability kept), most probable first."""
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in findings:
        groups.setdefault((finding.label, finding.code.scheme, finding.code.value), []).append(finding)
    summaries = [
        LabelSummary(group[0].label, group[0].code, max(f.probability for f in group), len(group),
                     sum(f.present for f in group))
        for group in groups.values()
    ]
    return sorted(summaries, key=lambda summary: (-summary.probability, summary.label))


@dataclass(frozen=True, eq=False)
class ImageResult:
    """A model's output for one source image, with what encode needs to draw the heatmap.

    `display` is the image as a radiologist would see it (uint8, Rows x Columns, after modality
    LUT, VOI/windowing and MONOCHROME1 inversion; Rows x Columns x 3 RGB for colour models such as
    endoscopy); `heatmap` is float32 in [0, 1] of its Rows x Columns, or None when heatmaps were
    not asked for.
    """

    source: Instance
    findings: tuple[Finding, ...]
    display: np.ndarray
    heatmap: np.ndarray | None


@dataclass(frozen=True)
class PriorityDecision:
    """A priority and the reasons for it, in words a radiologist can read."""

    level: Priority
    score: float
    reasons: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Override:
    """A radiologist's priority for a study, which outranks the AI's everywhere it is shown; with
    `level` None, the removal of one (the AI's priority applies again)."""

    level: Priority | None
    reason: str
    by: str

    def describe(self) -> str:
        """The one sentence every carrier, page and list shows for an override (or its removal)."""
        if self.level is None:
            return f"override removed by {self.by}" + (f": {self.reason}" if self.reason else "")
        return f"set to {self.level.name} by {self.by}: {self.reason}"


@dataclass(frozen=True)
class PriorFinding:
    """One label's outcome on an earlier study of the same patient (its highest probability)."""

    study_instance_uid: str
    received_at: float
    label: str
    probability: float
    present: bool


@dataclass(frozen=True)
class TurnaroundTargets:
    """Minutes within which a study of each level should be read (a site's service levels)."""

    stat_minutes: float = 60
    urgent_minutes: float = 240
    routine_minutes: float = 1440

    def minutes(self, level: Priority) -> float:
        return {Priority.STAT: self.stat_minutes, Priority.URGENT: self.urgent_minutes,
                Priority.ROUTINE: self.routine_minutes}[level]


@dataclass(frozen=True)
class ReceivedInstance:
    """What the SCP learnt about an instance it has just made durable in the spool."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    transfer_syntax_uid: str
    path: Path
    size: int
    calling_aet: str
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""


@dataclass(frozen=True)
class ResultFile:
    """An encoded result written to disk, to be recorded and queued for sending."""

    sop_instance_uid: str
    series_instance_uid: str
    kind: str  # SR, SC, PM; AS for an assessment of an SR (the validation loop)
    model: str
    model_version: str
    path: Path


@dataclass(frozen=True)
class FindingRow:
    """One label's outcome on one analysed image, as the store records it."""

    source_sop_instance_uid: str
    model: str
    model_version: str
    finding: Finding


@dataclass(frozen=True)
class OutboxEntry:
    """Something to deliver, as a pipeline run or an override queues it."""

    carrier: Carrier
    key: str  # the result's SOP Instance UID, or the study UID for priority carriers
    destination: str
    payload: str  # a file path (DICOM) or the message as text


@dataclass(frozen=True)
class OutboxItem:
    """A queued delivery as the outbox holds it."""

    id: int
    kind: str  # a Carrier value (kept as text: a row written by a newer node may name an unknown one)
    key: str
    study_instance_uid: str
    destination: str
    payload: str
    attempts: int


# --- the validation loop: ground truth, what the models saw, how they did -------------------------


class Truth(enum.StrEnum):
    """A finding as a radiologist reads the study; stored as text, so the values never change."""

    PRESENT = "present"
    ABSENT = "absent"
    UNCERTAIN = "uncertain"  # kept and shown, but neither a positive nor a negative case


class TruthSource(enum.StrEnum):
    """Where a judgement came from; an explicit radiologist judgement outranks one derived from a report."""

    RADIOLOGIST = "radiologist"  # `dicom-ai feedback`, or the console's study page
    REPORT = "report"  # derived from the final report (HL7 ORU^R01) by the card's report_terms


@dataclass(frozen=True)
class Judgement:
    """One judgement of one label of one model's result on a study; revisable: the latest of a source counts."""

    study_instance_uid: str
    model: str
    label: str
    truth: Truth
    source: TruthSource
    by: str
    comment: str = ""
    report_id: int | None = None  # the inbound report it was derived from (source report)


@dataclass(frozen=True)
class ReportRule:
    """How a final report says one label is present or absent (a model card's `labels[].report_terms`)."""

    model: str
    label: str
    codes: tuple[str, ...] = ()  # OBX-3 identifiers whose OBX-5 / OBX-8 gives the finding directly
    keywords: tuple[str, ...] = ()  # phrases looked for in the report text, with negation handling


@dataclass(frozen=True)
class ImageProperties:
    """What a model saw of one analysed image, kept for drift and subgroup analysis (no pixels).

    Empty strings and None mean the header did not say.
    """

    sop_instance_uid: str
    model: str
    manufacturer: str = ""
    station_name: str = ""
    body_part: str = ""
    modality: str = ""
    photometric: str = ""
    rows: int | None = None
    columns: int | None = None
    pixel_spacing: float | None = None  # mm, the row spacing (PixelSpacing, else ImagerPixelSpacing)
    kvp: float | None = None
    field_strength: float | None = None  # MR, tesla
    patient_sex: str = ""
    patient_age: float | None = None  # years at the study (PatientAge, else birth and study date)


@dataclass(frozen=True)
class Prediction:
    """One model's study-level score for one label, with its truth when judged: a row of every evaluation."""

    study_instance_uid: str
    model: str
    model_version: str
    label: str
    score: float  # the highest probability over the study's analysed images
    threshold: float
    predicted_at: float  # when the node processed the study (epoch seconds)
    truth: Truth | None = None
    truth_source: TruthSource | None = None
    patient_id: str = ""
    accession_number: str = ""
    subgroups: tuple[tuple[str, str], ...] = ()  # (name, value): sex, age band, manufacturer, station...

    @property
    def called(self) -> bool:
        """The AI said present (the score reached the label's operating threshold)."""
        return self.score >= self.threshold

    def subgroup(self, name: str) -> str:
        for key, value in self.subgroups:  # a handful of pairs: a scan beats building a dict (called per row)
            if key == name:
                return value
        return ""


@dataclass(frozen=True)
class NumericReference:
    """A numeric variable's distribution at validation time: bins (for PSI) and quantiles (for KS)."""

    n: int
    edges: tuple[float, ...]  # interior bin edges: bins are (-inf, e0), [e0, e1), ..., [e_last, inf)
    proportions: tuple[float, ...]  # share of the reference in each bin (len(edges) + 1)
    quantiles: tuple[float, ...]  # evenly spaced quantiles from 0 to 1 (inclusive)


@dataclass(frozen=True)
class CategoricalReference:
    """A categorical variable's distribution at validation time."""

    n: int
    proportions: tuple[tuple[str, float], ...]


Reference = NumericReference | CategoricalReference


# Input properties whose distribution is watched for drift (names of ImageProperties fields).
NUMERIC_PROPERTIES = ("rows", "columns", "pixel_spacing", "kvp", "field_strength")
CATEGORICAL_PROPERTIES = ("manufacturer", "photometric")


@dataclass(frozen=True, eq=False)
class ImageColumns:
    """The drift-watched properties of many analysed images as columns (one entry per image, oldest first):
    what a drift check over 100,000 images reads, without an ImageProperties per image."""

    when: np.ndarray  # analysed at, epoch seconds (float64)
    numeric: dict[str, tuple[np.ndarray, np.ndarray]]  # NUMERIC_PROPERTIES name -> (float64 values, known mask)
    categorical: dict[str, list[str]]  # CATEGORICAL_PROPERTIES name -> values ("" when the header did not say)
SCORE_PREFIX = "score:"  # drift variable of a label's score: "score:Consolidation"


@dataclass(frozen=True)
class DriftCheck:
    """One variable of one model in one ISO week, against the model card's reference."""

    model: str
    week: str  # ISO week, e.g. "2026-W48"
    variable: str  # "score:<label>" or an input property (rows, manufacturer...)
    cases: int
    psi: float
    ks_p: float | None  # None for a categorical variable
    flagged: bool  # PSI at or above the threshold and, for a numeric variable, KS p below DRIFT_KS_ALPHA
