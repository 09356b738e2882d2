"""The drift reference a model card keeps: what the model saw at validation, as compact distributions.

Built from a validation run through the node's own inference path: each reported label's
study-level score (its highest probability over the study's images, as the node reports it) and
the input properties of every analysed image (infer/properties.py). Numeric variables keep decile
bins with their shares (for PSI) and 21 quantiles (for the KS test); categorical ones their shares.
A property no image had (kVp on MR, field strength on CT) is left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dicom_ai.domain import CATEGORICAL_PROPERTIES, NUMERIC_PROPERTIES, ImageProperties
from dicom_ai.infer.card import ReferenceSpec
from dicom_ai.metrics import categorical_reference, numeric_reference


def build_reference(scores: Mapping[str, Sequence[float]], images: Sequence[ImageProperties], *, source: str,
                    command: str) -> ReferenceSpec:
    """A card's reference from study-level scores per label and the properties of the analysed images."""
    if not any(scores.values()):
        raise ValueError("a reference needs the scores of at least one study")
    properties: dict[str, dict[str, object]] = {}
    for name in NUMERIC_PROPERTIES:
        values = [float(v) for image in images if (v := getattr(image, name)) is not None]
        if values:
            properties[name] = {"kind": "numeric", **numeric_reference(values)}
    for name in CATEGORICAL_PROPERTIES:
        if images:
            properties[name] = {"kind": "categorical", **categorical_reference([str(getattr(i, name)) for i in images])}
    return ReferenceSpec.model_validate({
        "source": source, "command": command,
        "scores": {label: {"kind": "numeric", **numeric_reference(list(values))} for label, values in scores.items()
                   if values},
        "properties": properties,
    })
