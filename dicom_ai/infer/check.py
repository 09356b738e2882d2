"""`dicom-ai models check`: is a model folder usable, before the node relies on it?

Validates the card, loads the weights as the node would, and runs one synthetic forward pass
(plus the heatmap: Grad-CAM when the card asks for it, occlusion for zero-shot models) so that a
broken model is refused with a message an admin can act on, and a working one shows what it will
cost per image on this machine. A card whose thresholds are still `site` is checked all the same
(that is how a site tries published weights before choosing its operating points) and reported
as not ready: the node will not run it until they are set.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dicom_ai.infer.card import CARD_FILENAME, ModelCard, ModelError, load_card
from dicom_ai.infer.runner import LoadedModel

log = logging.getLogger(__name__)

TIMED_RUNS = 3


@dataclass
class CheckReport:
    """What `models check` found for one folder: facts when it works, problems when it does not."""

    folder: Path
    card: ModelCard | None = None
    facts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # what the site must do before the node runs it

    @property
    def ok(self) -> bool:
        return not self.problems


def check_model_folder(folder: Path, *, fast_path: bool = True) -> CheckReport:
    """Validate `folder` (card, weights, a forward pass, Grad-CAM); never raises for a bad model."""
    report = CheckReport(folder)
    try:
        card = load_card(folder / CARD_FILENAME)
    except ModelError as exc:
        report.problems.append(str(exc))
        return report
    report.card = card
    if card.pending_thresholds:
        report.pending.append(f"set the thresholds of {', '.join(card.pending_thresholds)} (now 'site') from the site's "
                              "own validation data; until then the node lists this model as not ready")
    try:
        model = LoadedModel.load(folder, card, fast_path=fast_path)
        _exercise(model, report)
    except ModelError as exc:
        report.problems.append(str(exc))
    except Exception as exc:  # an arbitrary network: report it, never crash the caller
        log.debug("model check of %s failed", folder, exc_info=True)
        report.problems.append(f"model {card.name}: unexpected error while loading or running it: {exc!r}")
    _review_card(card, report)
    return report


def _exercise(model: LoadedModel, report: CheckReport) -> None:
    card = model.card
    spec = card.input
    batch = torch.rand(2, spec.channels, *spec.size, generator=torch.Generator().manual_seed(0))
    probabilities = model.probabilities(batch)
    if not np.all(np.isfinite(probabilities)):
        raise ModelError(f"model {card.name}: a synthetic forward pass gives non-finite probabilities")
    report.facts += [
        f"format {card.format}, runs on {model.backend}; device UID {model.info.device_uid}",
        f"input {'x'.join(map(str, spec.size))} ({spec.dims}-D, {spec.channels} channel(s), {spec.normalize}"
        + (f", window {spec.window[0]:g}/{spec.window[1]:g}" if spec.window else "") + ")",
        "labels: " + ", ".join(label.describe() for label in card.labels),
        f"gate {card.gate or 'none'}; image selection {card.select or 'all images'}",
    ]
    if card.zero_shot is not None:
        prompts = sum(len(label.prompts or []) for label in card.labels)
        report.facts.append(f"zero-shot: {len(card.labels)} labels from {prompts} prompts in {card.zero_shot.embeddings} "
                            f"(current), logit scale {card.zero_shot.logit_scale:g}")
    elif model.network is not None:
        parameters = sum(p.numel() for p in model.network.parameters())
        report.facts.append(f"{parameters:,} parameters")
    single = batch[:1]
    report.facts.append(f"{_latency_ms(lambda: model.probabilities(single)):.1f} ms per {spec.dims}-D input on {model.backend} (batch 1, CPU)")
    if model.backend == "onnxruntime" and model.network is not None:
        report.facts.append(f"{_latency_ms(lambda: model.torch_probabilities(single)):.1f} ms per input on torch eager (batch 1)")
    if model.has_heatmaps:
        started = time.perf_counter()
        maps = model._feature_maps(single, card.reported[0])
        took = (time.perf_counter() - started) * 1000.0
        method = f"Grad-CAM on {card.gradcam.target_layer}" if card.gradcam is not None else "occlusion"
        if not torch.isfinite(maps).all():
            raise ModelError(f"model {card.name}: {method} gives non-finite values")
        report.facts.append(f"{method}: {'x'.join(map(str, maps.shape[2:]))} map, {took:.0f} ms per heatmap")


def _latency_ms(run: object) -> float:
    run()  # type: ignore[operator]  # warm-up: first calls allocate
    started = time.perf_counter()
    for _ in range(TIMED_RUNS):
        run()  # type: ignore[operator]
    return (time.perf_counter() - started) / TIMED_RUNS * 1000.0


def _review_card(card: ModelCard, report: CheckReport) -> None:
    """Not errors, but what a reviewer of the card would ask for."""
    if not card.metrics:
        report.warnings.append("no held-out metrics in the card (metrics:); nobody can tell how good it is")
    if not card.training:
        report.warnings.append("no training record in the card (training:): data, seed, time")
    if card.not_for_clinical_use and "NOT FOR CLINICAL USE" not in card.intended_use.upper():
        report.warnings.append("not_for_clinical_use is true but intended_use does not say NOT FOR CLINICAL USE")
    if not card.gate:
        report.warnings.append("no gate: the model will score any series a rule sends it (add e.g. gate: {Modality: [CR, DX]})")
