"""The model card: `models/<name>/model.yaml`, one schema for every model the node can run.

The card is the whole contract between an admin and the node: which weights, how to build and
feed the network, which images it may see (the modality gate), what each output means (a coded
concept and an operating threshold) and what it is for. A bad card is refused with a message
that names the file and the field, so one broken folder is reported instead of guessed at.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom.datadict import tag_for_keyword
from pydicom.uid import RE_VALID_UID

from dicom_ai.domain import (
    CATEGORICAL_PROPERTIES,
    NUMERIC_PROPERTIES,
    SCORE_PREFIX,
    CategoricalReference,
    Code,
    NumericReference,
    Reference,
    ReportRule,
)

CARD_FILENAME = "model.yaml"
NAME_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
MAX_UID_LENGTH = 64  # PS3.5 9.1
MAX_PROMPT_LENGTH = 1000
# Name-based UUIDs of weight digests live in this namespace; "2.25." + the UUID's integer is a UID
# without a registered root (PS3.5 B.2).
DEVICE_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicom-ai:model-weights")

# Coding scheme designators a label's code may use (PS3.16 Section 8).
SCHEME_SNOMED_CT = "SCT"
SCHEME_RADLEX = "RADLEX"
SITE_THRESHOLD = "site"  # a label's threshold the site must choose on its own validation data
_CODE_VALUE_PATTERNS = {
    SCHEME_SNOMED_CT: re.compile(r"^\d{6,18}$"),  # SNOMED CT identifiers are digits only
    SCHEME_RADLEX: re.compile(r"^RID\d+$"),  # RadLex identifiers look like RID5350
}


# SNOMED CT identifiers end in a partition identifier and a Verhoeff check digit (SNOMED CT TIG,
# "SCTID"): partition 00 is an International concept, 10 an extension concept.
_SCT_CONCEPT_PARTITIONS = ("00", "10")
_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P1 = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)  # the position permutation; row k is it applied k times


def verhoeff_valid(digits: str) -> bool:
    """Whether a digit string ends in its Verhoeff check digit (as every SNOMED CT identifier does)."""
    check = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        for _ in range(position % 8):
            digit = _VERHOEFF_P1[digit]
        check = _VERHOEFF_D[check][digit]
    return check == 0


class ModelError(Exception):
    """A model cannot be found, loaded or run; the message says which and what to fix."""


class CardError(ModelError):
    """A model.yaml is missing or invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeSpec(_Strict):
    """A coded concept for a label: SNOMED CT (SCT) or RadLex (RADLEX)."""

    value: str
    scheme: Literal["SCT", "RADLEX"]
    meaning: str = Field(min_length=1, max_length=64)  # Code Meaning is LO: 64 characters

    @model_validator(mode="after")
    def _value_matches_scheme(self) -> CodeSpec:
        if not _CODE_VALUE_PATTERNS[self.scheme].match(self.value):
            example = "95436008" if self.scheme == SCHEME_SNOMED_CT else "RID5350"
            raise ValueError(f"{self.value!r} is not a {self.scheme} code value (e.g. {example!r})")
        if self.scheme == SCHEME_SNOMED_CT:
            if not verhoeff_valid(self.value):
                raise ValueError(f"{self.value!r} is not a SNOMED CT identifier: its check digit is wrong (a typo? "
                                 "look the concept up in a SNOMED CT browser)")
            if self.value[-3:-1] not in _SCT_CONCEPT_PARTITIONS:
                raise ValueError(f"{self.value!r} is a SNOMED CT description or relationship identifier "
                                 f"(partition {self.value[-3:-1]}), not a concept identifier")
        return self

    def to_code(self) -> Code:
        return Code(value=self.value, scheme=self.scheme, meaning=self.meaning)


_KEYWORD = re.compile(r"^[\w][\w '/-]{0,62}[\w]$|^\w$")
_REPORT_CODE = re.compile(r"^[^|^~\\&\s]{1,64}$")


class ReportTermsSpec(_Strict):
    """How a final report (HL7 ORU^R01) says this label is present or absent.

    `codes` are OBX-3 identifiers (their first component) whose OBX-5 (present/absent, yes/no,
    positive/negative, or SNOMED CT Present 52101004 / Absent 2667000) or OBX-8 abnormal flag
    (A / N) states the finding; `keywords` are phrases looked for in the report's text, case
    insensitively on word boundaries, with negation ("no consolidation", "without evidence of
    consolidation") and hedging ("possible consolidation": uncertain) handled. A coded OBX wins
    over the text; a report that names none of them says nothing about the label.
    """

    codes: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)

    @field_validator("codes")
    @classmethod
    def _codes(cls, value: list[str]) -> list[str]:
        for code in value:
            if not _REPORT_CODE.match(code):
                raise ValueError(f"code {code!r} must be 1-64 characters without spaces or HL7 delimiters (|^~\\&)")
        if len(set(value)) != len(value):
            raise ValueError("codes must differ")
        return value

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        for keyword in value:
            if not _KEYWORD.match(keyword.strip()) or keyword != keyword.strip():
                raise ValueError(f"keyword {keyword!r} must be 1-64 letters, digits, spaces, hyphens or "
                                 "apostrophes, starting and ending with a letter or digit")
        lowered = [k.lower() for k in value]
        if len(set(lowered)) != len(lowered):
            raise ValueError("keywords must differ (they are matched case-insensitively)")
        return value

    @model_validator(mode="after")
    def _something(self) -> ReportTermsSpec:
        if not self.codes and not self.keywords:
            raise ValueError("list at least one code or keyword")
        return self


class LabelSpec(_Strict):
    """One model output: its name, its code and the operating point chosen on validation data.

    `report: false` marks an output the network has but the node does not report, such as the
    "no finding" class of a softmax model: it needs no code or threshold and never appears in an
    SR, a caption or a priority.
    """

    name: str = Field(min_length=1, max_length=64)
    code: CodeSpec | None = None
    # An operating point in 0..1, or "site": the site must choose it on its own validation data
    # before the node reports this label (published weights come without the site's operating point).
    threshold: float | Literal["site"] | None = None
    report: bool = True
    prompts: list[str] | None = None  # zero_shot models: text prompts whose embeddings stand for this label
    report_terms: ReportTermsSpec | None = None  # how a final report states this label (the validation loop)

    def describe(self) -> str:
        if not self.report or self.code is None or self.threshold is None:
            return f"{self.name} (not reported)"
        if self.threshold == SITE_THRESHOLD:
            return f"{self.name} ({self.code.scheme} {self.code.value}) >= threshold for the site to set"
        return f"{self.name} ({self.code.scheme} {self.code.value}) >= {self.threshold:g}"

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold_word(cls, value: Any) -> Any:
        if isinstance(value, str) and value != SITE_THRESHOLD:
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"threshold {value!r} must be a number between 0 and 1, or {SITE_THRESHOLD!r} "
                                 "for the site to set") from None
        return value

    @field_validator("threshold")
    @classmethod
    def _threshold_range(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ValueError(f"threshold {value:g} must be between 0 and 1 (or 'site' for the site to set)")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("list at least one prompt")
        for prompt in value:
            if not prompt.strip() or len(prompt) > MAX_PROMPT_LENGTH:
                raise ValueError(f"prompt {prompt[:40]!r} must be 1 to {MAX_PROMPT_LENGTH} characters of text")
        if len(set(value)) != len(value):
            raise ValueError("prompts of a label must differ")
        return value

    @model_validator(mode="after")
    def _reported_needs_code_and_threshold(self) -> LabelSpec:
        if self.report and (self.code is None or self.threshold is None):
            missing = " and ".join(n for n, v in (("code", self.code), ("threshold", self.threshold)) if v is None)
            raise ValueError(f"label {self.name!r} is reported, so it needs a {missing} (or report: false)")
        if not self.report and self.report_terms is not None:
            raise ValueError(f"label {self.name!r} is not reported, so nothing can be judged: remove report_terms")
        return self


class NumericReferenceSpec(_Strict):
    """A numeric variable at validation time: PSI bins (interior edges, shares) and quantiles for KS."""

    kind: Literal["numeric"] = "numeric"
    n: int = Field(ge=1)
    edges: list[float]
    proportions: list[float]
    quantiles: list[float] = Field(min_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> NumericReferenceSpec:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges make {len(self.edges) + 1} bins, but {len(self.proportions)} "
                             "proportions are given")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("edges must increase")
        if any(b < a for a, b in zip(self.quantiles, self.quantiles[1:])):
            raise ValueError("quantiles must not decrease")
        _shares(self.proportions)
        return self

    def to_reference(self) -> NumericReference:
        return NumericReference(self.n, tuple(self.edges), tuple(self.proportions), tuple(self.quantiles))


class CategoricalReferenceSpec(_Strict):
    """A categorical variable at validation time: each value's share."""

    kind: Literal["categorical"] = "categorical"
    n: int = Field(ge=1)
    proportions: dict[str, float] = Field(min_length=1)

    @field_validator("proportions")
    @classmethod
    def _sum(cls, value: dict[str, float]) -> dict[str, float]:
        _shares(list(value.values()))
        return value

    def to_reference(self) -> CategoricalReference:
        return CategoricalReference(self.n, tuple(self.proportions.items()))


def _shares(values: list[float]) -> None:
    if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-3:
        raise ValueError(f"proportions must be shares that sum to 1, got {sum(values):.4f}")


class ReferenceSpec(_Strict):
    """What the model saw at validation, for drift checks: per reported label the distribution of its
    study-level score, and per input property (rows, columns, pixel_spacing, kvp, field_strength,
    manufacturer, photometric) the distribution over the analysed images. Written by `dicom-ai train`
    and `dicom-ai models reference`, never by hand."""

    source: str = Field(min_length=1)  # which data, how many, how they were run
    command: str = Field(min_length=1)  # the command that wrote it (reproducible)
    scores: dict[str, NumericReferenceSpec] = Field(default_factory=dict)
    properties: dict[str, NumericReferenceSpec | CategoricalReferenceSpec] = Field(default_factory=dict)

    @field_validator("properties")
    @classmethod
    def _known(cls, value: dict[str, NumericReferenceSpec | CategoricalReferenceSpec]) -> dict[str, Any]:
        for name, spec in value.items():
            expected = ("numeric" if name in NUMERIC_PROPERTIES else "categorical" if name in CATEGORICAL_PROPERTIES
                        else None)
            if expected is None:
                raise ValueError(f"{name!r} is not a watched property (one of "
                                 f"{', '.join(NUMERIC_PROPERTIES + CATEGORICAL_PROPERTIES)})")
            if spec.kind != expected:
                raise ValueError(f"property {name!r} is {expected}, not {spec.kind}")
        return value

    def references(self) -> dict[str, Reference]:
        """Drift variable -> its reference: "score:<label>" and the property names."""
        found: dict[str, Reference] = {f"{SCORE_PREFIX}{label}": spec.to_reference() for label, spec in self.scores.items()}
        found.update({name: spec.to_reference() for name, spec in self.properties.items()})
        return found


class MonitoringSpec(_Strict):
    """The two sections of a card that evaluation and export read (see registry.monitoring_view)."""

    labels: list[LabelSpec] = Field(default_factory=list)
    reference: ReferenceSpec | None = None


class KeyRewrite(_Strict):
    """One rewrite of checkpoint key names: re.sub(pattern, replace, key)."""

    pattern: str = Field(min_length=1)
    replace: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value


class ArchitectureSpec(_Strict):
    """A class of monai.networks.nets and the keyword arguments that rebuild the trained network.

    `weights_layout` says how the checkpoint names its tensors: `monai` (this class's own
    names, optionally behind DataParallel's "module.") or `torchvision-densenet` (torchvision's
    DenseNet names in either naming, behind any wrapper prefix, e.g. CheXNet's published
    checkpoints). `key_map` rewrites then apply in order, for any other naming.
    """

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights_layout: Literal["monai", "torchvision-densenet"] = "monai"
    key_map: list[KeyRewrite] = Field(default_factory=list)

    @model_validator(mode="after")
    def _layout_fits(self) -> ArchitectureSpec:
        import monai.networks.nets as nets

        if self.weights_layout == "torchvision-densenet" and not issubclass(getattr(nets, self.name), nets.DenseNet):
            raise ValueError(f"weights_layout torchvision-densenet maps onto a MONAI DenseNet (e.g. DenseNet121), not {self.name}")
        return self

    @field_validator("name")
    @classmethod
    def _is_monai_network(cls, value: str) -> str:
        import monai.networks.nets as nets
        import torch

        found = getattr(nets, value, None)
        if not (inspect.isclass(found) and issubclass(found, torch.nn.Module)):
            raise ValueError(f"{value!r} is not a network class in monai.networks.nets (e.g. 'DenseNet', 'DenseNet121', 'EfficientNetBN')")
        return value


class InputSpec(_Strict):
    """What the network is fed.

    `size` is [rows, columns] for a 2-D model (fed one image at a time: the display image as a
    radiologist sees it) or [slices, rows, columns] for a 3-D model (fed one series as a volume
    of modality values, e.g. Hounsfield units). `window` = [center, width] clips a volume's
    values before normalising (a CT brain window keeps air and bone from swamping the tissue).
    `normalize` is `zscore` (per-image zero mean, unit deviation: robust to exposure and window
    differences between sites), `unit` (values scaled to 0..1), `meanstd` (scaled to 0..1, then
    (x - mean) / std per channel with the training set's statistics, e.g. ImageNet's
    mean [0.485, 0.456, 0.406] and std [0.229, 0.224, 0.225] that torchvision-style models expect)
    or `none` (a MONAI bundle's own preprocessing does it).
    """

    size: tuple[int, ...]
    channels: Literal[1, 3] = 1
    normalize: Literal["zscore", "unit", "meanstd", "none"] = "zscore"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    window: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _mean_std(self) -> InputSpec:
        given = self.mean is not None or self.std is not None
        if self.normalize != "meanstd":
            if given:
                raise ValueError(f"mean and std are used only with normalize: meanstd (normalize is {self.normalize})")
            return self
        if self.mean is None or self.std is None:
            raise ValueError("normalize: meanstd needs both mean and std (one value, or one per channel)")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} has {len(values)} values; give 1 or {self.channels} (one per channel)")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {list(self.std)}")
        return self

    @field_validator("size")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) not in (2, 3):
            raise ValueError(f"size {list(value)} must be [rows, columns] (2-D) or [slices, rows, columns] (3-D)")
        if min(value[-2:]) < 8 or max(value) > 4096 or min(value) < 1:
            raise ValueError(f"size {list(value)}: rows and columns must be between 8 and 4096 pixels")
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[1] <= 0:
            raise ValueError(f"window [center, width] needs a positive width, got {list(value)}")
        return value

    @property
    def dims(self) -> int:
        """2 for image models, 3 for volume models."""
        return len(self.size)


class GradCamSpec(_Strict):
    """Where Grad-CAM reads activations: a module name from `model.named_modules()`.

    For a 3-D model, heatmaps are drawn on the `slices` most salient slices of the volume.
    """

    target_layer: str = Field(min_length=1)
    slices: int = Field(default=3, ge=1, le=16)


class BundleSpec(_Strict):
    """Where a MONAI bundle keeps its network and preprocessing (paths inside the model folder).

    Read offline with monai.bundle.ConfigParser; `network_key` and `preprocessing_key` name
    entries of the config. Loader transforms (LoadImage[d], EnsureChannelFirst[d]) are skipped:
    the node decodes DICOM itself and hands the rest of the chain a channel-first array.
    """

    config: str = "configs/inference.json"
    metadata: str = "configs/metadata.json"
    network_key: str = "network_def"
    preprocessing_key: str | None = "preprocessing"

    @field_validator("config", "metadata")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _relative_file(value)


class ZeroShotSpec(_Strict):
    """A CLIP-style pair (e.g. BiomedCLIP): the image encoder is `weights`, the text side runs offline.

    `dicom-ai models prompts` tokenizes each label's prompts with `tokenizer` (a BERT WordPiece
    `vocab.txt`, as BiomedCLIP's PubMedBERT ships, or a HuggingFace `tokenizer.json`), runs
    `text_encoder` (ONNX or TorchScript) and stores one embedding per label in `embeddings`;
    the node then needs only the image encoder and that file. Probabilities are
    softmax(logit_scale * cosine(image, label)); heatmaps come from occluding a
    `occlusion_grid` x `occlusion_grid` grid of the image (works for ONNX and TorchScript alike).
    """

    text_encoder: str
    tokenizer: str
    context_length: int = Field(default=77, ge=4, le=4096)  # token ids per prompt, padded (BiomedCLIP: 256)
    lowercase: bool = True  # vocab.txt only: an uncased vocabulary (PubMedBERT's is)
    logit_scale: float = Field(default=100.0, gt=0.0, le=1000.0)  # CLIP's exp(logit_scale) after training
    embeddings: str = "prompts.npz"
    occlusion_grid: int = Field(default=7, ge=2, le=32)

    @field_validator("text_encoder", "tokenizer", "embeddings")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _relative_file(value)


def _relative_file(value: str) -> str:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError(f"{value!r} must be a file name relative to the model's folder (e.g. 'model.pt')")
    return value


def _keyword_values(value: dict[str, list[str]]) -> dict[str, list[str]]:
    for keyword, accepted in value.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword (spell it like Modality, BodyPartExamined, ViewPosition)")
        if not accepted:
            raise ValueError(f"{keyword}: list at least one accepted value")
    return value


def _as_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
    return value


class ModelCard(_Strict):
    """The validated contents of a model.yaml; see docs of each field in the class body."""

    name: str
    version: str = Field(min_length=1, max_length=64)  # goes into Software Versions (LO)
    display_name: str = Field(min_length=1, max_length=64)
    manufacturer: str = Field(min_length=1, max_length=64)
    device_uid: str | None = None  # None: derived from the weights' sha256 (derive_device_uid)
    format: Literal["state_dict", "torchscript", "onnx", "monai_bundle", "zero_shot"]
    weights: str  # a file inside the model's folder (a bundle's is usually models/model.pt; zero_shot: the image encoder)
    onnx: str | None = None  # ONNX copy of the weights for the fast path (`dicom-ai models export`)
    architecture: ArchitectureSpec | None = None  # required for state_dict
    bundle: BundleSpec | None = None  # monai_bundle only; default paths when left out
    zero_shot: ZeroShotSpec | None = None  # zero_shot only: text side, temperature, embeddings file
    gate: dict[str, list[str]] = Field(default_factory=dict)  # series: DICOM keyword -> accepted values
    select: dict[str, list[str]] = Field(default_factory=dict)  # images of accepted series, e.g. ViewPosition
    input: InputSpec
    output: Literal["sigmoid", "softmax"]
    labels: list[LabelSpec] = Field(min_length=1)
    gradcam: GradCamSpec | None = None
    intended_use: str = Field(min_length=1)
    not_for_clinical_use: bool = True
    training: dict[str, Any] = Field(default_factory=dict)  # free-form record of how it was made
    metrics: dict[str, Any] = Field(default_factory=dict)  # held-out results
    reference: ReferenceSpec | None = None  # validation-time distributions that drift is measured against

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(NAME_PATTERN, value) or len(value) > 64:
            raise ValueError(f"{value!r} is not a model name: use lower-case letters, digits and single hyphens (e.g. 'chest-xray-demo')")
        return value

    @field_validator("device_uid")
    @classmethod
    def _valid_uid(cls, value: str | None) -> str | None:
        if value is not None and not (RE_VALID_UID.match(value) and len(value) <= MAX_UID_LENGTH):
            raise ValueError(f"{value!r} is not a valid DICOM UID (digits and dots, at most 64 characters)")
        return value

    @field_validator("weights", "onnx")
    @classmethod
    def _inside_folder(cls, value: str | None) -> str | None:
        return None if value is None else _relative_file(value)

    @field_validator("gate", "select", mode="before")
    @classmethod
    def _single_values_as_lists(cls, value: Any) -> Any:
        return _as_lists(value)

    @field_validator("gate", "select")
    @classmethod
    def _dicom_keywords(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return _keyword_values(value)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.format == "state_dict" and self.architecture is None:
            raise ValueError("architecture is required when format is state_dict (the weights hold no network structure)")
        if self.format in ("torchscript", "onnx") and self.gradcam is not None:
            raise ValueError(
                f"gradcam cannot run on {self.format} weights (it needs a torch network to hook); "
                "remove gradcam or ship a state_dict or MONAI bundle"
            )
        if self.format == "onnx" and self.onnx not in (None, self.weights):
            raise ValueError("format onnx: the weights are the ONNX file; leave the onnx field out")
        self._zero_shot_consistent()
        names = [label.name for label in self.labels]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"label names must be unique; repeated: {', '.join(duplicates)}")
        if not any(label.report for label in self.labels):
            raise ValueError("at least one label must be reported (report: false on every label leaves nothing to say)")
        if self.output == "softmax" and len(self.labels) < 2:
            raise ValueError("softmax output needs at least two labels (one per class); use sigmoid for a single label")
        if self.architecture is not None:
            kwargs = self.architecture.kwargs
            if "out_channels" in kwargs and kwargs["out_channels"] != len(self.labels):
                raise ValueError(f"architecture.kwargs.out_channels is {kwargs['out_channels']} but {len(self.labels)} labels are listed")
            if "in_channels" in kwargs and kwargs["in_channels"] != self.input.channels:
                raise ValueError(f"architecture.kwargs.in_channels is {kwargs['in_channels']} but input.channels is {self.input.channels}")
            if "spatial_dims" in kwargs and kwargs["spatial_dims"] != self.input.dims:
                raise ValueError(f"architecture.kwargs.spatial_dims is {kwargs['spatial_dims']} but input.size has {self.input.dims} dimensions")
        if self.reference is not None:
            reported = {label.name for label in self.labels if label.report}
            unknown = sorted(set(self.reference.scores) - reported)
            if unknown:
                raise ValueError(f"reference.scores names {', '.join(unknown)}, which is not a reported label")
        if self.input.window is not None and self.input.dims != 3:
            raise ValueError("input.window applies to 3-D (volume) models; 2-D models see the display image, already windowed")
        return self

    def _zero_shot_consistent(self) -> None:
        prompted = [label.name for label in self.labels if label.prompts is not None]
        if self.format != "zero_shot":
            if self.zero_shot is not None:
                raise ValueError("zero_shot settings apply only to format zero_shot")
            if prompted:
                raise ValueError(f"prompts apply only to format zero_shot (labels {', '.join(prompted)})")
            return
        if self.zero_shot is None:
            raise ValueError("format zero_shot needs a zero_shot section (text_encoder, tokenizer, logit_scale)")
        if self.gradcam is not None:
            raise ValueError("format zero_shot draws heatmaps by occlusion (zero_shot.occlusion_grid); remove gradcam")
        if self.onnx is not None or self.architecture is not None:
            raise ValueError("format zero_shot: the image encoder is the weights file (ONNX or TorchScript); leave onnx and architecture out")
        if self.output != "softmax":
            raise ValueError("format zero_shot compares labels with each other: output must be softmax")
        unprompted = [label.name for label in self.labels if label.prompts is None]
        if unprompted:
            raise ValueError(f"format zero_shot: every label needs prompts (missing for {', '.join(unprompted)})")
        if self.input.dims != 2:
            raise ValueError("format zero_shot takes 2-D images (input.size [rows, columns])")

    @property
    def pending_thresholds(self) -> list[str]:
        """Reported labels whose threshold is still `site`: the node refuses to run the model until set."""
        return [label.name for label in self.labels if label.report and label.threshold == SITE_THRESHOLD]

    @property
    def bundle_spec(self) -> BundleSpec:
        """Where the bundle's configs are (the defaults of a standard MONAI bundle layout)."""
        return self.bundle or BundleSpec()

    @property
    def reported(self) -> list[int]:
        """Output indices of the labels the node reports."""
        return [i for i, label in enumerate(self.labels) if label.report]

    @property
    def report_rules(self) -> list[ReportRule]:
        """The labels a final report can judge, as the validation loop reads them."""
        return [ReportRule(self.name, label.name, tuple(label.report_terms.codes), tuple(label.report_terms.keywords))
                for label in self.labels if label.report and label.report_terms is not None]

    @property
    def codes(self) -> dict[str, Code]:
        """Reported label name -> coded concept, in output order."""
        return {label.name: label.code.to_code() for label in self.labels if label.code is not None and label.report}


def load_card(path: Path) -> ModelCard:
    """Read and validate a model.yaml; raise CardError naming the file and every bad field."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CardError(f"{path}: not found (every model folder needs a {CARD_FILENAME})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"{path}: cannot read it ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CardError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CardError(f"{path}: expected a mapping of fields (name, version, weights, ...), got {type(data).__name__}")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        raise CardError(f"{path}: {describe_errors(exc)}") from None


class _FlowNumbers(yaml.SafeDumper):
    """Lists of numbers on one line: a reference's edges and quantiles stay readable."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    numbers = bool(data) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=numbers)


_FlowNumbers.add_representer(list, _represent_list)


def _card_text(data: dict[str, Any]) -> str:
    """The card's YAML in field order; the reference (long lists of numbers) last, lists on one line."""
    data = dict(data)
    reference = data.pop("reference", None)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    if reference is not None:
        text += yaml.dump({"reference": reference}, Dumper=_FlowNumbers, sort_keys=False, allow_unicode=True, width=100)
    return text


def dump_card(card: ModelCard, path: Path) -> None:
    """Write a card as YAML in field order, so that the file reads like the schema."""
    path.write_text(_card_text(card.model_dump(mode="json")), encoding="utf-8")


def set_card_reference(path: Path, reference: ReferenceSpec) -> ModelCard:
    """Put `reference` into the card at `path`, every other line left as it was; returns the new card."""
    load_card(path)  # the card as it is must be valid first: its own errors are named as such
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["reference"] = reference.model_dump(mode="json")
    try:
        updated = ModelCard.model_validate(data)
    except ValidationError as exc:
        raise CardError(f"{path}: {describe_errors(exc)}") from None
    path.write_text(_card_text(data), encoding="utf-8")
    return updated


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def derive_device_uid(weights: Path) -> str:
    """A UID (2.25.x) derived from the weights' sha256: new weights, new device UID, no registry.

    Not pydicom's generate_uid(prefix=None, entropy_srcs=...): with prefix None it ignores the
    entropy and returns a random UUID, so the UID would change on every start.
    """
    try:
        sha = file_sha256(weights)
    except OSError as exc:
        raise ModelError(f"{weights}: cannot read the weights to derive a device UID ({exc})") from exc
    return f"2.25.{uuid.uuid5(DEVICE_UID_NAMESPACE, 'sha256:' + sha).int}"


def describe_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = _location(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check its spelling against the model card schema)"
        elif error["type"] == "missing":
            message = "required field is missing"
        parts.append(f"field '{location}': {message}" if location else message)
    return "; ".join(parts)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
