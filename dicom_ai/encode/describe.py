"""Series Descriptions that put the priority where every viewer shows it: the series list.

Many viewers show nothing of an SR but its Series Description, so the description carries the
message: priority first, then the strongest positive finding, what kind of object it is, the model
and a DEMO mark. OHIF's series list cuts descriptions after about 22 characters, so the kind of
object (the list shows the modality beside it anyway) comes after the finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from dicom_ai.domain import Priority

if TYPE_CHECKING:
    from dicom_ai.domain import Finding, ModelInfo, PriorityDecision

# Series Description (0008,103E) is LO: at most 64 characters, no backslash or control characters.
LO_MAX_CHARS = 64
PREFIX = "AI"
# What each kind of result object is called after the finding ("" for the SR, the report itself).
KINDS: dict[str, str] = {"SR": "", "SC": "heatmap", "PM": "map"}
DEMO_MARK = "DEMO"  # models with not_for_clinical_use
NO_FINDING = "no finding"


def clean_lo(text: str) -> str:
    """Make text safe for an LO value: no backslash (the VM separator), no control characters."""
    text = text.replace("\\", "/")
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def percent(probability: float) -> str:
    """A probability as a whole percentage, e.g. 0.934 -> '93%'."""
    return f"{round(probability * 100):d}%"


def strongest_findings(findings: Sequence[Finding]) -> list[Finding]:
    """Positive findings, one per label (its highest probability), strongest first."""
    best: dict[str, Finding] = {}
    for finding in findings:
        if finding.present and (finding.label not in best or finding.probability > best[finding.label].probability):
            best[finding.label] = finding
    return sorted(best.values(), key=lambda f: (-f.probability, f.label))


def _cut(text: str, size: int) -> str:
    return text if len(text) <= size else text[: max(size, 0)].rstrip()


def series_description(
    kind: Literal["SR", "SC", "PM"],
    model: ModelInfo,
    priority: PriorityDecision,
    findings: Sequence[Finding],
) -> str:
    """Return e.g. 'AI URGENT Consolidation 93% heatmap chest-xray-demo DEMO' (at most 64 characters).

    The priority and the DEMO mark are never cut; when the text is too long the model name gives
    way first, then the finding label.
    """
    if kind not in KINDS:
        raise ValueError(f"series_description kind must be one of {sorted(KINDS)}, got {kind!r}")
    head = f"{PREFIX} {priority.level.name}"
    positives = strongest_findings(findings)
    if not positives and priority.level > Priority.ROUTINE and findings:
        # raised by a rule's threshold below the model's operating point: say which finding did it
        positives = [max(findings, key=lambda f: f.probability)]
    if positives:
        top = positives[0]
        label = clean_lo(top.label) or top.code.meaning
        score = percent(top.probability) + (f" +{len(positives) - 1}" if len(positives) > 1 else "")
    else:
        label, score = NO_FINDING, ""
    name = clean_lo(model.name)
    tail = DEMO_MARK if model.not_for_clinical_use else ""

    def join(label_text: str, name_text: str) -> str:
        return " ".join(part for part in (head, label_text, score, KINDS[kind], name_text, tail) if part)

    text = join(label, name)
    if len(text) > LO_MAX_CHARS:  # the model name gives way first, to nothing if need be
        name = _cut(name, len(name) - (len(text) - LO_MAX_CHARS))
        text = join(label, name)
    if len(text) > LO_MAX_CHARS:  # then the label
        label = _cut(label, len(label) - (len(text) - LO_MAX_CHARS))
        text = join(label, name)
    return text[:LO_MAX_CHARS].rstrip()
