"""`dicom-ai models export`: an ONNX copy of a torch model for the onnxruntime fast path.

The legacy TorchScript-based exporter (dynamo=False) with dynamic_axes gives a dynamic batch
axis; the dynamo exporter gave batch 1 only on these networks. The copy is verified against
torch on random inputs before the card names it, and written atomically.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dicom_ai.infer import networks
from dicom_ai.infer.card import CARD_FILENAME, ModelError, load_card
from dicom_ai.infer.runner import LoadedModel

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPSET = 17
EXPORT_TOLERANCE = 1e-4  # max |probability difference| accepted between torch and the ONNX copy


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_difference: float
    size_bytes: int


def export_onnx(folder: Path, *, filename: str = ONNX_FILE, opset: int = OPSET) -> ExportResult:
    """Write `folder/filename` from the model's torch weights and name it in the card's `onnx` field."""
    card_path = folder / CARD_FILENAME
    card = load_card(card_path)
    if card.format == "onnx":
        raise ModelError(f"model {card.name}: its weights are ONNX already ({folder / card.weights})")
    if card.format == "zero_shot":
        raise ModelError(f"model {card.name}: a zero_shot model's image encoder is ONNX or TorchScript already ({folder / card.weights})")
    network, _ = networks.load_torch_network(folder, card)
    assert network is not None
    model = LoadedModel(card, network, device_uid="2.25.0")  # torch only: the check below compares
    spec = card.input
    example = torch.rand(2, spec.channels, *spec.size, generator=torch.Generator().manual_seed(0))
    network_example = example.permute(0, 1, *reversed(range(2, example.ndim))) if card.format == "monai_bundle" else example
    target = folder / filename
    partial = target.with_name(target.name + ".partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; it is chosen on purpose
        try:
            torch.onnx.export(
                network.eval(),
                (network_example,),
                str(partial),
                dynamo=False,
                input_names=[networks.ONNX_INPUT],
                output_names=[networks.ONNX_OUTPUT],
                dynamic_axes={networks.ONNX_INPUT: {0: "batch"}, networks.ONNX_OUTPUT: {0: "batch"}},
                opset_version=opset,
            )
        except Exception as exc:  # the exporter raises many types for unsupported operators
            partial.unlink(missing_ok=True)
            raise ModelError(f"model {card.name}: ONNX export failed: {exc}") from exc
    try:
        session = networks.OnnxSession(partial, card)
        check = torch.rand(3, spec.channels, *spec.size, generator=torch.Generator().manual_seed(1))
        model.onnx = session
        fast = model.probabilities(check)
        model.onnx = None
        gap = float(np.abs(fast - model.probabilities(check)).max())
    except Exception:
        partial.unlink(missing_ok=True)
        raise
    if gap > EXPORT_TOLERANCE:
        partial.unlink(missing_ok=True)
        raise ModelError(f"model {card.name}: the ONNX copy differs from torch by {gap:.2g} (> {EXPORT_TOLERANCE:g}); not installed")
    os.replace(partial, target)
    _name_in_card(card_path, filename)
    log.info("model %s: ONNX copy %s written (max probability difference %.2g)", card.name, target, gap)
    return ExportResult(path=target, max_difference=gap, size_bytes=target.stat().st_size)


def _name_in_card(card_path: Path, filename: str) -> None:
    """Set `onnx: <file>` in the card text, keeping the admin's comments and order."""
    text = card_path.read_text(encoding="utf-8")
    line = f"onnx: {filename}"
    if re.search(r"(?m)^onnx:.*$", text):
        text = re.sub(r"(?m)^onnx:.*$", line, text)
    else:
        text = re.sub(r"(?m)^(weights:.*)$", lambda m: m.group(1) + "\n" + line, text, count=1)
    partial = card_path.with_name(card_path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, card_path)
    load_card(card_path)  # still valid
