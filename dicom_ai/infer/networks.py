"""Build a network from a model folder, whatever format the card names.

- state_dict: the card's monai.networks.nets architecture, then the weights as published
  (checkpoint dicts, DataParallel prefixes, torchvision DenseNet names: infer.checkpoint);
- torchscript: torch.jit.load (no Grad-CAM: hooks cannot be registered on ScriptModules);
- monai_bundle: the bundle's own network_def and preprocessing (infer.bundle);
- onnx: no torch network at all; onnxruntime runs the file (OnnxSession).
A torch model with an `onnx` copy in its card also gets an OnnxSession: the fast path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from dicom_ai.infer import checkpoint
from dicom_ai.infer.bundle import Preprocessing, load_bundle
from dicom_ai.infer.card import ModelCard, ModelError

log = logging.getLogger(__name__)

ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"


def build_network(card: ModelCard) -> torch.nn.Module:
    """Instantiate the card's monai.networks.nets architecture (untrained)."""
    import monai.networks.nets as nets

    if card.architecture is None:
        raise ModelError(f"model {card.name}: no architecture in model.yaml")
    try:
        return getattr(nets, card.architecture.name)(**card.architecture.kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {card.name}: architecture {card.architecture.name} rejects its kwargs: {exc}") from exc


def load_torch_network(folder: Path, card: ModelCard) -> tuple[torch.nn.Module | None, Preprocessing | None]:
    """The torch network of a model folder (None for an ONNX-only model) and a bundle's preprocessing."""
    weights = folder / card.weights
    if not weights.is_file():
        raise ModelError(f"model {card.name}: weights file {weights} not found (named by 'weights' in {folder / 'model.yaml'})")
    if card.format == "onnx":
        return None, None
    if card.format == "monai_bundle":
        return load_bundle(folder, card)
    if card.format == "torchscript":
        try:
            return torch.jit.load(str(weights), map_location="cpu"), None
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"model {card.name}: {weights} is not a TorchScript archive: {exc}") from exc
    if card.format == "zero_shot":
        raise ModelError(f"model {card.name}: a zero_shot model is loaded by infer.zeroshot, not as one network")
    network = build_network(card)
    checkpoint.fit(network, checkpoint.read_state_dict(weights, card), weights, card)
    return network, None


class OnnxSession:
    """An onnxruntime session on the CPU taking and returning float32 arrays (batch first)."""

    def __init__(self, path: Path, card: ModelCard) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise ModelError(f"model {card.name}: onnxruntime is not installed (pip install onnxruntime) to run {path}") from exc
        if not path.is_file():
            raise ModelError(f"model {card.name}: ONNX file {path} not found")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are noise to an admin
        # As many threads as torch has: a Ray actor given N CPUs sets torch to N, and onnxruntime's own
        # default (every core) would make the actors of one machine fight over its cores.
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            self._session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"model {card.name}: {path} is not a loadable ONNX model: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"model {card.name}: {path} takes {len(inputs)} inputs; the node feeds one image tensor")
        self._input = inputs[0].name
        self.path = path

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32)
        return torch.from_numpy(np.asarray(self._session.run(None, {self._input: array})[0]))


def onnx_available() -> bool:
    """Whether the fast path can run here (onnxruntime importable)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None
