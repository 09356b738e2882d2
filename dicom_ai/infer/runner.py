"""A loaded model: gate, image selection, pre-process, batched forward pass, findings, heatmaps.

Inference runs on the CPU under torch.inference_mode, through onnxruntime when the card has an
ONNX copy of the weights (the fast path: several times faster than torch eager here) and torch
otherwise; only Grad-CAM needs the torch network and gradients. 2-D models see each image of a
study (batched); 3-D models see each series as one volume and report on its most salient slices.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from dicom_ai.domain import Finding, ImageResult, Instance, ModelInfo
from dicom_ai.infer import networks, zeroshot
from dicom_ai.infer.bundle import Preprocessing
from dicom_ai.infer.card import ModelCard, ModelError, derive_device_uid
from dicom_ai.infer.gradcam import HeatmapMaker, upsample
from dicom_ai.infer.occlusion import OcclusionMaps
from dicom_ai.infer.pixels import PixelError, color_image, display_image
from dicom_ai.infer.preprocess import preprocess, preprocess_volume
from dicom_ai.infer.volume import MIN_SLICES, read_volume

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger(__name__)

HeatmapPolicy = Literal["all", "positive", "none"]
Backend = Literal["torch", "torchscript", "onnxruntime"]
MAX_BATCH = 16  # images per forward pass: a study is normally one pass; bounds memory on big series
FAST_PATH_TOLERANCE = 1e-3  # max |probability difference| between onnxruntime and torch on a probe


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """One forward pass's worth of prepared input, made where the study's files are.

    Only `batch` (and `slice_count`) travel to the process that runs the network (a Ray actor on
    another machine): the displays and the instances stay with the caller, which turns the
    outputs into results. 2-D: one batch row, instance and display per image. 3-D: one row for
    the series' volume, `instances` the slices in order, no displays (the salient slices are read
    once the outputs name them).
    """

    batch: np.ndarray  # float32 (rows, channels, *size), the network's input in our orientation
    instances: tuple[Instance, ...]
    displays: tuple[np.ndarray, ...]
    slice_count: int | None  # a volume's slices (3-D), None for 2-D images


@dataclass(frozen=True, eq=False)
class ModelOutputs:
    """What the network made of one `ModelInputs.batch`: plain arrays, small enough for the wire.

    `maps` (2-D) holds each row's heatmap at the network's resolution, (1, 1, h, w), or None;
    `slices` (3-D) the slices to report on, each with its 2-D map (or None when no heatmap).
    """

    probabilities: np.ndarray  # (rows, labels)
    maps: tuple[np.ndarray | None, ...]
    slices: tuple[tuple[int, np.ndarray | None], ...]
    backend: str
    seconds: float


class ModelFront:
    """The half of a model that needs only its card: gate, image selection, input preparation, and
    turning network outputs into findings and heatmaps. Runs where the study's files are."""

    def __init__(self, card: ModelCard, device_uid: str, *, bundle_preprocessing: Preprocessing | None = None) -> None:
        self.card = card
        self._bundle_preprocessing = bundle_preprocessing
        # MONAI bundles were trained on LoadImage arrays: columns before rows (x, y[, z]).
        self._transposed = card.format == "monai_bundle"
        self._info = ModelInfo(
            name=card.name,
            version=card.version,
            device_uid=device_uid,
            manufacturer=card.manufacturer,
            display_name=card.display_name,
            not_for_clinical_use=card.not_for_clinical_use,
            intended_use=card.intended_use,
        )

    @classmethod
    def from_folder(cls, folder: Path, card: ModelCard) -> ModelFront:
        """The card side of a model folder without loading its network (a bundle's preprocessing
        comes from the bundle, which builds its network too: that one is dropped)."""
        bundle_preprocessing = networks.load_torch_network(folder, card)[1] if card.format == "monai_bundle" else None
        return cls(card, card.device_uid or derive_device_uid(folder / card.weights),
                   bundle_preprocessing=bundle_preprocessing)

    @property
    def info(self) -> ModelInfo:
        return self._info

    def accepts(self, header: Dataset) -> tuple[bool, str]:
        """Apply the card's gate to a series header: (accepted, reason in words)."""
        return self._match(header, self.card.gate, "accepts", "accepted by")

    def accepts_count(self, images: int) -> tuple[bool, str]:
        """A volume model needs a series of slices; a lone image (scout, key image) is not one."""
        if self.card.input.dims == 3 and images < MIN_SLICES:
            return False, f"{images} image(s); {self.card.name} reads a series as a volume of at least {MIN_SLICES} slices"
        return True, ""

    def selects(self, header: Dataset) -> tuple[bool, str]:
        """Apply the card's image selection (e.g. ViewPosition CC, MLO) to one image's header."""
        return self._match(header, self.card.select, "takes", "selected by")

    def _match(self, header: Dataset, conditions: dict[str, list[str]], verb: str, ok: str) -> tuple[bool, str]:
        for keyword, accepted in conditions.items():
            value = header.get(keyword)
            if value is None or value == "":
                return False, f"{keyword} is missing; {self.card.name} {verb} {keyword} {', '.join(accepted)}"
            values = [str(v).strip().upper() for v in (value if isinstance(value, (list, MultiValue)) else [value])]
            if not any(v in {a.strip().upper() for a in accepted} for v in values):
                shown = "\\".join(values)
                return False, f"{keyword} {shown} is not accepted by {self.card.name} ({verb} {', '.join(accepted)})"
        checked = ", ".join(f"{k} {header.get(k)}" for k in conditions) or "no conditions"
        return True, f"{ok} {self.card.name} ({checked})"

    def inputs(self, instances: Sequence[Instance], heatmaps: HeatmapPolicy = "all") -> Iterator[ModelInputs]:
        """Read and prepare a study's images, one forward pass at a time (at most MAX_BATCH images,
        or one series' volume for a 3-D model), so a large series never sits in memory whole."""
        if heatmaps not in get_args(HeatmapPolicy):
            raise ValueError(f"heatmaps must be one of {', '.join(get_args(HeatmapPolicy))}, got {heatmaps!r}")
        pending = self.card.pending_thresholds
        if pending:
            raise ModelError(f"model {self.card.name}: the site has not set the thresholds of {', '.join(pending)} "
                             "(threshold: site in its model.yaml); it reports nothing until they are set")
        if self.card.input.dims == 3:
            by_series: dict[str, list[Instance]] = {}
            for instance in instances:
                by_series.setdefault(instance.series_instance_uid, []).append(instance)
            for members in by_series.values():
                volume = read_volume(members)
                yield ModelInputs(self.prepare(volume.values)[None].numpy(), volume.instances, (), len(volume.instances))
            return
        for start in range(0, len(instances), MAX_BATCH):
            chunk = tuple(instances[start : start + MAX_BATCH])
            datasets = [self._read(instance) for instance in chunk]
            displays = [display_image(ds) for ds in datasets]
            if self.card.input.channels == 3:  # colour models see colour, and their heatmaps are drawn over it
                displays = [_or(color_image(ds), display) for ds, display in zip(datasets, displays)]
            batch = torch.stack([self.prepare(image) for image in displays]).numpy()
            yield ModelInputs(batch, chunk, tuple(displays), None)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """One network input (channels, *size) from a display image (2-D) or a volume (3-D)."""
        spec = self.card.input
        if self._bundle_preprocessing is None:
            return preprocess(image, spec) if spec.dims == 2 else preprocess_volume(image, spec)
        planes = image.transpose(2, 0, 1) if image.ndim == 3 and spec.dims == 2 else image[None]
        array = np.ascontiguousarray(_reverse_spatial_np(planes.astype(np.float32)))
        tensor = _reverse_spatial(self._bundle_preprocessing(array)[None])
        if tuple(tensor.shape[2:]) != tuple(spec.size):
            tensor = F.interpolate(tensor, size=tuple(spec.size), mode="bilinear" if spec.dims == 2 else "trilinear", align_corners=False)
        return tensor[0].expand(spec.channels, *([-1] * spec.dims)).contiguous()

    def results(self, inputs: ModelInputs, outputs: ModelOutputs) -> list[ImageResult]:
        """Findings and full-size heatmaps from what the network made of `inputs`."""
        if inputs.slice_count is None:
            findings = [tuple(self._findings(row)) for row in outputs.probabilities]
            maps = [None if m is None else upsample(torch.tensor(m), display.shape[:2])
                    for m, display in zip(outputs.maps, inputs.displays)]
            log.info("model %s (%s): %d image(s), %d heatmap(s) in %.2f s", self.card.name, outputs.backend,
                     len(inputs.instances), sum(m is not None for m in maps), outputs.seconds)
            return [ImageResult(source=instance, findings=f, display=display, heatmap=heatmap)
                    for instance, f, display, heatmap in zip(inputs.instances, findings, inputs.displays, maps)]
        volume_findings = tuple(self._findings(outputs.probabilities[0]))
        results = []
        for index, slice_map in outputs.slices:
            instance = inputs.instances[index]
            display = display_image(self._read(instance))
            heatmap = None
            if slice_map is not None:
                heatmap = upsample(torch.tensor(slice_map)[None, None], display.shape, rescale=False)
            results.append(ImageResult(source=instance, findings=volume_findings, display=display, heatmap=heatmap))
        log.info(
            "model %s (%s): volume of %d slice(s) from series %s, heatmaps on slice(s) %s in %.2f s",
            self.card.name, outputs.backend, len(inputs.instances), inputs.instances[0].series_instance_uid,
            ", ".join(str(i + 1) for i, m in outputs.slices if m is not None) or "none", outputs.seconds,
        )
        return results

    def _read(self, instance: Instance) -> pydicom.Dataset:
        try:
            return pydicom.dcmread(instance.path)
        except (OSError, InvalidDicomError) as exc:
            raise PixelError(f"file {instance.path}, SOPInstanceUID {instance.sop_instance_uid}: cannot read it as DICOM: {exc}") from exc

    def _findings(self, row: np.ndarray) -> list[Finding]:
        """One finding per reported label (labels with report: false are left out)."""
        findings = []
        for index in self.card.reported:
            label = self.card.labels[index]
            assert label.code is not None and isinstance(label.threshold, float)  # the card and predict guarantee it
            findings.append(Finding(label=label.name, code=label.code.to_code(), probability=float(row[index]),
                                    threshold=label.threshold))
        return findings

    def _group_by_label(self, indices: list[int], probs: np.ndarray, findings: list[list[Finding]]) -> dict[int, list[int]]:
        """The output each heatmap explains: the most probable present reported label, else the most
        probable reported one (never an unreported class such as "no finding")."""
        reported = self.card.reported
        groups: dict[int, list[int]] = {}
        for i in indices:
            present = [reported[k] for k, f in enumerate(findings[i]) if f.present]
            label_index = max(present or reported, key=lambda k: probs[i, k])
            groups.setdefault(label_index, []).append(i)
        return groups


class LoadedModel(ModelFront):
    """A model ready to run: weights in memory, gate, Grad-CAM hooks. One forward pass at a time."""

    def __init__(
        self,
        card: ModelCard,
        network: torch.nn.Module | None,
        device_uid: str,
        *,
        onnx: networks.OnnxSession | None = None,
        bundle_preprocessing: Preprocessing | None = None,
    ) -> None:
        if network is None and onnx is None:
            raise ModelError(f"model {card.name}: neither a torch network nor an ONNX session to run")
        super().__init__(card, device_uid, bundle_preprocessing=bundle_preprocessing)
        self.network = network.eval() if network is not None else None
        self.onnx = onnx
        self._heatmaps: HeatmapMaker | OcclusionMaps | None = None
        if card.gradcam is not None and network is not None:
            self._heatmaps = HeatmapMaker(network, card.gradcam.target_layer)
        elif card.zero_shot is not None:  # encoders hide their layers: occlusion works for ONNX and TorchScript
            self._heatmaps = OcclusionMaps(self._logits, card.zero_shot.occlusion_grid)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, folder: Path, card: ModelCard, *, fast_path: bool = True) -> LoadedModel:
        """Load the weights named by the card from `folder` and check the network runs.

        With `fast_path`, an ONNX copy named by the card is used for probabilities when
        onnxruntime is installed and agrees with torch on a probe input; otherwise torch runs.
        """
        if card.format == "zero_shot":
            head, encoder = zeroshot.load_zero_shot(folder, card)
            model = cls(card, head, card.device_uid or derive_device_uid(folder / card.weights), onnx=encoder)
            model._check_output_shape()
            return model
        network, bundle_preprocessing = networks.load_torch_network(folder, card)
        onnx = None
        if card.format == "onnx":
            onnx = networks.OnnxSession(folder / card.weights, card)
        elif fast_path and card.onnx is not None:
            if not (folder / card.onnx).is_file():
                log.warning("model %s: ONNX copy %s not found; running torch (re-run `dicom-ai models export %s`)",
                            card.name, folder / card.onnx, card.name)
            elif not networks.onnx_available():
                log.info("model %s: onnxruntime is not installed; running torch", card.name)
            else:
                onnx = networks.OnnxSession(folder / card.onnx, card)
        device_uid = card.device_uid or derive_device_uid(folder / card.weights)
        model = cls(card, network, device_uid, onnx=onnx, bundle_preprocessing=bundle_preprocessing)
        model._check_output_shape()
        if onnx is not None and network is not None:
            model._check_fast_path()
        return model

    @property
    def has_heatmaps(self) -> bool:
        """Whether this model draws heatmaps (Grad-CAM on a named layer, or occlusion for zero-shot)."""
        return self._heatmaps is not None

    @property
    def backend(self) -> Backend:
        """What computes the probabilities."""
        if self.onnx is not None:
            return "onnxruntime"
        return "torchscript" if self.card.format in ("torchscript", "zero_shot") else "torch"

    def predict(self, instances: Sequence[Instance], heatmaps: HeatmapPolicy = "all") -> list[ImageResult]:
        """Run the model on a study's images; one result per image (2-D) or per salient slice (3-D).

        `heatmaps` chooses which images get a Grad-CAM heatmap: "all", "positive" (at least one
        finding present) or "none". Pixels are read from each `instance.path`. A 3-D model treats
        the instances of each series as one volume. The same three steps run split across
        machines under the Ray executor: `inputs` here, `run` where the model is, `results` here.
        """
        results: list[ImageResult] = []
        for inputs in self.inputs(instances, heatmaps):
            results.extend(self.results(inputs, self.run(inputs.batch, heatmaps, inputs.slice_count)))
        return results

    def run(self, batch: np.ndarray, heatmaps: HeatmapPolicy, slice_count: int | None = None) -> ModelOutputs:
        """The network on one prepared batch (`ModelInputs.batch`): probabilities and heatmaps at the
        network's resolution. Needs no file: this is the half a Ray actor runs."""
        started = time.perf_counter()
        tensor = torch.tensor(batch, dtype=torch.float32)  # a copy: arrays from Ray's object store are read-only
        with self._lock:
            probs = self.probabilities(tensor)
            findings = [self._findings(row) for row in probs]
            wanted = [i for i, f in enumerate(findings)
                      if heatmaps == "all" or (heatmaps == "positive" and any(x.present for x in f))]
            maps: list[np.ndarray | None] = [None] * len(findings)
            slices: list[tuple[int, np.ndarray | None]] = []
            if slice_count is not None:
                slices = [(slice_count // 2, None)]
                if wanted and self._heatmaps is not None:
                    label_index = self._group_by_label([0], probs[:1], findings[:1]).popitem()[0]
                    slices = self._salient_slices(self._feature_maps(tensor, label_index), slice_count)
            elif wanted and self._heatmaps is not None:
                for label_index, members in self._group_by_label(wanted, probs, findings).items():
                    feature_maps = self._feature_maps(tensor[members], label_index)
                    for k, i in enumerate(members):
                        maps[i] = feature_maps[k : k + 1].float().numpy()
        return ModelOutputs(probs, tuple(maps), tuple(slices), self.backend, time.perf_counter() - started)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """(B, labels) probabilities for a prepared batch (our orientation); used by predict and the trainer."""
        return self._to_probabilities(self._logits(batch))

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        network_batch = _reverse_spatial(batch) if self._transposed else batch
        if self.onnx is not None:
            return self.onnx.logits(network_batch)
        assert self.network is not None
        with torch.inference_mode():
            return self.network(network_batch)

    def torch_probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Probabilities from the torch network even when the fast path is on (benchmarks, checks)."""
        if self.network is None:
            raise ModelError(f"model {self.card.name}: an ONNX-only model has no torch network")
        with torch.inference_mode():
            logits = self.network(_reverse_spatial(batch) if self._transposed else batch)
        return self._to_probabilities(logits)

    def _to_probabilities(self, logits: torch.Tensor) -> np.ndarray:
        if logits.ndim != 2 or logits.shape[1] != len(self.card.labels):
            raise ModelError(
                f"model {self.card.name}: network output has shape {tuple(logits.shape)}, "
                f"expected (batch, {len(self.card.labels)}) for its labels"
            )
        probs = torch.sigmoid(logits) if self.card.output == "sigmoid" else torch.softmax(logits, dim=1)
        return probs.float().numpy()

    def _feature_maps(self, batch: torch.Tensor, label_index: int) -> torch.Tensor:
        assert self._heatmaps is not None
        maps = self._heatmaps.feature_maps(_reverse_spatial(batch) if self._transposed else batch, label_index)
        return _reverse_spatial(maps) if self._transposed else maps

    def _salient_slices(self, feature_map: torch.Tensor, slice_count: int) -> list[tuple[int, np.ndarray | None]]:
        """The `gradcam.slices` slices whose Grad-CAM peaks highest, each with its 2-D map."""
        assert self.card.gradcam is not None
        per_slice = F.interpolate(feature_map.float(), size=(slice_count, *feature_map.shape[-2:]), mode="trilinear", align_corners=False)[0, 0]
        peaks = per_slice.amax(dim=(1, 2))
        count = min(self.card.gradcam.slices, slice_count)
        chosen = sorted(torch.topk(peaks, count).indices.tolist())
        top = float(per_slice.max()) or 1.0
        # Keep one scale across slices (the volume's hottest voxel = 1), so a cooler slice looks cooler.
        return [(i, (per_slice[i] / top).clamp(0, 1).numpy().astype(np.float32)) for i in chosen]

    def _probe(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(2, self.card.input.channels, *self.card.input.size, generator=generator)

    def _check_output_shape(self) -> None:
        """Fail at load time, not on the first study, when the network and the card disagree."""
        probe = self._probe()
        try:
            self.probabilities(probe)
        except ModelError:
            raise
        except Exception as exc:  # any failure of an arbitrary network's forward pass
            raise ModelError(f"model {self.card.name}: a forward pass on a {tuple(probe.shape)} input fails: {exc}") from exc

    def _check_fast_path(self) -> None:
        """Drop a stale or broken ONNX copy (e.g. exported before the weights changed)."""
        probe = self._probe()
        try:
            gap = float(np.abs(self.probabilities(probe) - self.torch_probabilities(probe)).max())
        except Exception as exc:  # onnxruntime errors have their own types
            gap, reason = float("inf"), f"fails: {exc}"
        else:
            reason = f"differs from torch by {gap:.2g}"
        if gap > FAST_PATH_TOLERANCE:
            log.warning("model %s: ONNX copy %s %s; running torch (re-run `dicom-ai models export %s`)",
                        self.card.name, self.onnx.path if self.onnx else "?", reason, self.card.name)
            self.onnx = None


def _or(color: np.ndarray | None, gray: np.ndarray) -> np.ndarray:
    return gray if color is None else color


def _reverse_spatial(tensor: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) with the spatial axes reversed: rows/columns <-> MONAI's x/y(/z)."""
    spatial = list(range(2, tensor.ndim))
    return tensor.permute(0, 1, *reversed(spatial))


def _reverse_spatial_np(array: np.ndarray) -> np.ndarray:
    return array.transpose(0, *reversed(range(1, array.ndim)))
