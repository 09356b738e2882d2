"""Our result objects as a person reads them in the console: a TID 1500 SR as indented lines, a
Secondary Capture heatmap as a PNG. Read from the spool; never shown when the file is gone."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread

MAX_SR_LINES = 400  # a page, not a dump: the SR file itself stays in the PACS


def sr_lines(path: Path) -> list[tuple[int, str]]:
    """(depth, "Concept: value") for each content item of the SR at `path`, in document order."""
    ds = dcmread(path)
    lines: list[tuple[int, str]] = [(0, str(_meaning(ds) or "Report"))]
    _walk(ds, 1, lines)
    return lines[:MAX_SR_LINES]


def _meaning(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeMeaning) if names else ""


def _value(item: Dataset) -> str:
    kind = str(item.get("ValueType", ""))
    if kind == "TEXT":
        return str(item.get("TextValue", ""))
    if kind == "CODE" and item.get("ConceptCodeSequence"):
        return str(item.ConceptCodeSequence[0].CodeMeaning)
    if kind == "NUM" and item.get("MeasuredValueSequence"):
        measured = item.MeasuredValueSequence[0]
        units = measured.MeasurementUnitsCodeSequence[0].CodeValue if measured.get("MeasurementUnitsCodeSequence") else ""
        return f"{measured.NumericValue} {units}".strip()
    if kind in ("UIDREF",):
        return str(item.get("UID", ""))
    if kind == "PNAME":
        return str(item.get("PersonName", ""))
    if kind in ("DATETIME", "DATE", "TIME"):
        return str(item.get(kind.capitalize() if kind != "DATETIME" else "DateTime", ""))
    if kind == "IMAGE" and item.get("ReferencedSOPSequence"):
        return f"image {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID}"
    if kind == "SCOORD":
        return f"{item.get('GraphicType', '')} region"
    if kind == "CONTAINER":
        return ""
    return kind.lower()


def _walk(ds: Dataset, depth: int, lines: list[tuple[int, str]]) -> None:
    for item in ds.get("ContentSequence", []):
        value = _value(item)
        lines.append((depth, f"{_meaning(item)}: {value}" if value else _meaning(item)))
        if len(lines) >= MAX_SR_LINES:
            return
        _walk(item, depth + 1, lines)


def png_of(path: Path, frame: int = 0) -> bytes:
    """The image of a Secondary Capture (RGB or monochrome, 8 bits or more) as PNG bytes."""
    ds = dcmread(path)
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[min(frame, pixels.shape[0] - 1)]
    if pixels.dtype != np.uint8:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) / ((high - low) or 1.0) * 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = 255 - pixels
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()
