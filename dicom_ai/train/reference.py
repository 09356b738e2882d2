"""Studies through the node's own inference path, summed up as the node reports them: for a card's drift
reference (`dicom-ai train reference`) and for evaluating a model on a labelled dataset.

A study here is a list of DICOM files. Each goes through what the pipeline does with a routed
series (the card's image selection, then LoadedModel.predict: the same decoding, preprocessing and
backend, the ONNX fast path when the card has one) and comes out as one score per reported label,
its highest probability over the study's images, and the input properties of each analysed image.

The demo models' references are made from phantom studies written by the same DICOM writers the
end-to-end tests and `dicom-ai demo` send (train/phantom_dicom.py), with seeds of their own
(REFERENCE_SEED on): what the node sees when those studies arrive.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicom_ai.domain import ImageProperties, Instance
from dicom_ai.infer.card import CARD_FILENAME, ModelCard, ReferenceSpec, load_card, set_card_reference
from dicom_ai.infer.properties import image_properties
from dicom_ai.infer.reference import build_reference
from dicom_ai.infer.runner import LoadedModel
from dicom_ai.train import phantom_dicom
from dicom_ai.train.names import DEMO_FOLDERS

log = logging.getLogger(__name__)

REFERENCE_SEED = 900_000  # phantom seeds no training or test split uses
DEMO_WRITERS: dict[str, Callable[..., list[Path]]] = {
    "chest-xray": phantom_dicom.write_chest_cr_study,
    "mammography": phantom_dicom.write_mammography_study,
    "brain-mr": phantom_dicom.write_brain_mr_study,
    "ct-head": phantom_dicom.write_ct_volume_study,
    "endoscopy": phantom_dicom.write_endoscopy_study,
}
REFERENCE_CASES = {"chest-xray": 200, "mammography": 120, "brain-mr": 160, "ct-head": 80, "endoscopy": 160}


@dataclass(frozen=True)
class StudyScores:
    """One study as the node reports it: the highest probability per reported label, and what was analysed."""

    files: tuple[Path, ...]
    scores: dict[str, float]
    thresholds: dict[str, float]
    images: tuple[ImageProperties, ...]


def score_study(model: LoadedModel, files: Sequence[Path]) -> StudyScores:
    """Run one study (its DICOM files) through the model as the pipeline would."""
    headers = {path: pydicom.dcmread(path, stop_before_pixels=True) for path in files}
    instances = [Instance(str(h.SOPInstanceUID), str(h.SOPClassUID), str(h.SeriesInstanceUID), str(h.StudyInstanceUID),
                          path) for path, h in headers.items()
                 if not model.card.select or model.selects(h)[0]]
    if not instances:
        raise ValueError(f"{files[0]}: no image of the study passes {model.card.name}'s image selection "
                         f"{model.card.select}")
    results = model.predict(instances, heatmaps="none")
    scores: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    for result in results:
        for finding in result.findings:
            scores[finding.label] = max(scores.get(finding.label, 0.0), finding.probability)
            thresholds[finding.label] = finding.threshold
    by_uid = {str(h.SOPInstanceUID): h for h in headers.values()}
    analysed = tuple(image_properties(by_uid[r.source.sop_instance_uid], r.source.sop_instance_uid, model.card.name)
                     for r in results)
    return StudyScores(tuple(files), scores, thresholds, analysed)


def reference_from_studies(studies: Sequence[StudyScores], *, source: str, command: str) -> dict[str, object]:
    """The card's reference (as its YAML mapping) from scored studies."""
    labels = sorted({label for study in studies for label in study.scores})
    reference = build_reference({label: [s.scores[label] for s in studies if label in s.scores] for label in labels},
                                [image for study in studies for image in study.images], source=source,
                                command=command)
    return reference.model_dump(mode="json")


def demo_reference(name: str, model_dir: Path, *, cases: int | None = None, seed: int = REFERENCE_SEED,
                   fast_path: bool = True) -> ModelCard:
    """Write `cases` phantom studies of demo `name` (half with the finding), score them with the model in
    `model_dir`, and store the reference in its card. Returns the updated card."""
    if name not in DEMO_WRITERS:
        raise ValueError(f"no demo {name!r}; choose {', '.join(DEMO_WRITERS)}")
    cases = cases or REFERENCE_CASES[name]
    card_path = model_dir / CARD_FILENAME
    card = load_card(card_path)
    model = LoadedModel.load(model_dir, card, fast_path=fast_path)
    writer = DEMO_WRITERS[name]
    scored = []
    with tempfile.TemporaryDirectory(prefix=f"reference-{name}-") as folder:
        for index in range(cases):
            files = writer(Path(folder) / str(index), seed + index, index % 2 == 0)
            scored.append(score_study(model, files))
            for path in files:
                path.unlink()
    command = f"dicom-ai train reference {name} --cases {cases} --seed {seed}"
    source = (f"{cases} synthetic {name} studies (half with the finding) written by "
              f"dicom_ai.train.phantom_dicom.{writer.__name__}, seeds {seed}-{seed + cases - 1}, "
              f"through LoadedModel.predict ({model.backend})")

    updated = set_card_reference(card_path, ReferenceSpec.model_validate(
        reference_from_studies(scored, source=source, command=command)))
    log.info("%s: reference from %d phantom studies written into %s", name, cases, card_path)
    return updated


__all__ = ["DEMO_FOLDERS", "REFERENCE_CASES", "StudyScores", "demo_reference", "reference_from_studies", "score_study"]
