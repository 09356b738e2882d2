"""A loaded model: gate, pre-process, one batched forward pass, findings, Grad-CAM heatmaps.

Inference runs on the CPU under torch.inference_mode; only Grad-CAM needs gradients. The same
`preprocess` is used by the trainer, so a model sees at inference exactly what it was trained on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from dicom_ai.domain import Finding, ImageResult, Instance, ModelInfo
from dicom_ai.infer.card import InputSpec, ModelCard, ModelError, derive_device_uid
from dicom_ai.infer.gradcam import HeatmapMaker
from dicom_ai.infer.pixels import PixelError, display_image

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger(__name__)

HeatmapPolicy = Literal["all", "positive", "none"]
MAX_BATCH = 16  # images per forward pass: a study is normally one pass; bounds memory on big series


def preprocess(display: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """A uint8 display image (rows x columns) to a (channels, *size) float tensor for the network."""
    if display.ndim != 2:
        raise ValueError(f"expected a 2-D display image, got shape {display.shape}")
    image = torch.from_numpy(np.ascontiguousarray(display, dtype=np.float32))[None, None] / 255.0
    if tuple(image.shape[-2:]) != tuple(spec.size):
        image = F.interpolate(image, size=tuple(spec.size), mode="bilinear", align_corners=False, antialias=True)
    if spec.normalize == "zscore":
        image = (image - image.mean()) / image.std().clamp_min(1e-3)
    return image[0].expand(spec.channels, -1, -1).contiguous()


def build_network(card: ModelCard) -> torch.nn.Module:
    """Instantiate the card's monai.networks.nets architecture (untrained)."""
    import monai.networks.nets as nets

    if card.architecture is None:
        raise ModelError(f"model {card.name}: no architecture in model.yaml")
    try:
        return getattr(nets, card.architecture.name)(**card.architecture.kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {card.name}: architecture {card.architecture.name} rejects its kwargs: {exc}") from exc


class LoadedModel:
    """A model ready to run: weights in memory, gate, Grad-CAM hooks. One predict at a time."""

    def __init__(self, card: ModelCard, network: torch.nn.Module, device_uid: str) -> None:
        self.card = card
        self.network = network.eval()
        self._info = ModelInfo(
            name=card.name,
            version=card.version,
            device_uid=device_uid,
            manufacturer=card.manufacturer,
            display_name=card.display_name,
            not_for_clinical_use=card.not_for_clinical_use,
            intended_use=card.intended_use,
        )
        self._heatmaps = HeatmapMaker(network, card.gradcam.target_layer) if card.gradcam else None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path, card: ModelCard) -> LoadedModel:
        """Load the weights named by the card from `folder` and check the network runs."""
        weights = folder / card.weights
        if not weights.is_file():
            raise ModelError(f"model {card.name}: weights file {weights} not found (named by 'weights' in {folder / 'model.yaml'})")
        if card.format == "torchscript":
            try:
                network = torch.jit.load(str(weights), map_location="cpu")
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"model {card.name}: {weights} is not a TorchScript archive: {exc}") from exc
        else:
            network = build_network(card)
            try:
                state = torch.load(weights, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises several unrelated types for a bad file
                raise ModelError(f"model {card.name}: cannot read state_dict {weights}: {exc}") from exc
            if not isinstance(state, dict):
                raise ModelError(f"model {card.name}: {weights} holds a {type(state).__name__}, not a state_dict")
            try:
                network.load_state_dict(state)
            except RuntimeError as exc:
                architecture = f"{card.architecture.name} {card.architecture.kwargs}"
                raise ModelError(f"model {card.name}: {weights} does not fit architecture {architecture}: {exc}") from exc
        device_uid = card.device_uid or derive_device_uid(weights)
        model = cls(card, network, device_uid)
        model._check_output_shape()
        return model

    @property
    def info(self) -> ModelInfo:
        return self._info

    def accepts(self, header: Dataset) -> tuple[bool, str]:
        """Apply the card's gate to a header: (accepted, reason in words)."""
        for keyword, accepted in self.card.gate.items():
            value = header.get(keyword)
            if value is None or value == "":
                return False, f"{keyword} is missing; {self.card.name} accepts {keyword} {', '.join(accepted)}"
            values = [str(v).strip().upper() for v in (value if isinstance(value, (list, MultiValue)) else [value])]
            if not any(v in {a.strip().upper() for a in accepted} for v in values):
                shown = "\\".join(values)
                return False, f"{keyword} {shown} is not accepted by {self.card.name} (accepts {', '.join(accepted)})"
        checked = ", ".join(f"{k} {header.get(k)}" for k in self.card.gate) or "no gate"
        return True, f"accepted by {self.card.name} ({checked})"

    def predict(self, instances: Sequence[Instance], heatmaps: HeatmapPolicy = "all") -> list[ImageResult]:
        """Run the model on the images of a study, in batches; findings for every image.

        `heatmaps` chooses which images get a Grad-CAM heatmap: "all", "positive" (at least one
        finding present) or "none". Pixels are read from each `instance.path`.
        """
        if heatmaps not in get_args(HeatmapPolicy):
            raise ValueError(f"heatmaps must be one of {', '.join(get_args(HeatmapPolicy))}, got {heatmaps!r}")
        results: list[ImageResult] = []
        for start in range(0, len(instances), MAX_BATCH):
            results.extend(self._predict_batch(instances[start : start + MAX_BATCH], heatmaps))
        return results

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """(B, labels) probabilities for a preprocessed batch; used by predict and the trainer."""
        with torch.inference_mode():
            logits = self.network(batch)
        if logits.ndim != 2 or logits.shape[1] != len(self.card.labels):
            raise ModelError(
                f"model {self.card.name}: network output has shape {tuple(logits.shape)}, "
                f"expected (batch, {len(self.card.labels)}) for its labels"
            )
        probs = torch.sigmoid(logits) if self.card.output == "sigmoid" else torch.softmax(logits, dim=1)
        return probs.float().numpy()

    def _predict_batch(self, instances: Sequence[Instance], policy: HeatmapPolicy) -> list[ImageResult]:
        started = time.perf_counter()
        displays = [self._display(instance) for instance in instances]
        batch = torch.stack([preprocess(display, self.card.input) for display in displays])
        with self._lock:
            probs = self.probabilities(batch)
            findings = [self._findings(row) for row in probs]
            maps: list[np.ndarray | None] = [None] * len(instances)
            wanted = [i for i, f in enumerate(findings) if policy == "all" or (policy == "positive" and any(x.present for x in f))]
            if wanted and self._heatmaps is not None:
                for label_index, members in self._group_by_label(wanted, probs, findings).items():
                    shapes = [displays[i].shape for i in members]
                    for i, heatmap in zip(members, self._heatmaps.heatmaps(batch[members], label_index, shapes)):
                        maps[i] = heatmap
        log.info(
            "model %s: %d image(s), %d heatmap(s) in %.2f s",
            self.card.name, len(instances), sum(m is not None for m in maps), time.perf_counter() - started,
        )
        return [
            ImageResult(source=instance, findings=tuple(f), display=display, heatmap=heatmap)
            for instance, f, display, heatmap in zip(instances, findings, displays, maps)
        ]

    def _display(self, instance: Instance) -> np.ndarray:
        try:
            ds = pydicom.dcmread(instance.path)
        except (OSError, InvalidDicomError) as exc:
            raise PixelError(f"file {instance.path}, SOPInstanceUID {instance.sop_instance_uid}: cannot read it as DICOM: {exc}") from exc
        return display_image(ds)

    def _findings(self, row: np.ndarray) -> list[Finding]:
        return [
            Finding(label=label.name, code=label.code.to_code(), probability=float(p), threshold=label.threshold)
            for label, p in zip(self.card.labels, row)
        ]

    @staticmethod
    def _group_by_label(indices: list[int], probs: np.ndarray, findings: list[list[Finding]]) -> dict[int, list[int]]:
        """The label each heatmap explains: the most probable present label, else the most probable."""
        groups: dict[int, list[int]] = {}
        for i in indices:
            present = [k for k, f in enumerate(findings[i]) if f.present]
            candidates = present or list(range(probs.shape[1]))
            label_index = max(candidates, key=lambda k: probs[i, k])
            groups.setdefault(label_index, []).append(i)
        return groups

    def _check_output_shape(self) -> None:
        """Fail at load time, not on the first study, when the network and the card disagree."""
        probe = torch.zeros(1, self.card.input.channels, *self.card.input.size)
        try:
            self.probabilities(probe)
        except ModelError:
            raise
        except Exception as exc:  # any failure of an arbitrary network's forward pass
            raise ModelError(f"model {self.card.name}: a forward pass on a {tuple(probe.shape)} input fails: {exc}") from exc
