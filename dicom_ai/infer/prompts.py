"""`dicom-ai models prompts`: embed a zero-shot model's label prompts once, offline, with its text encoder.

The text encoder (ONNX or TorchScript, `zero_shot.text_encoder`) and tokenizer
(`zero_shot.tokenizer`) are files in the model's folder; nothing is downloaded. The encoder
takes token ids, or token ids and an attention mask (both int64, batch x context_length),
and returns one embedding per prompt. The result, with a digest of the card's prompts and
the SHA-256 of both files, goes to `zero_shot.embeddings` (prompts.npz), which the node checks
at every load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dicom_ai.infer.card import CARD_FILENAME, ModelCard, ModelError, file_sha256, load_card
from dicom_ai.infer.tokenizer import load_tokenizer
from dicom_ai.infer.zeroshot import LabelEmbeddings, label_vectors, prompts_digest, write_embeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptsResult:
    path: Path
    labels: int
    prompts: int
    dim: int
    closest: tuple[str, str, float]  # the two most similar labels and their cosine: prompts that do not separate


def compute_prompt_embeddings(folder: Path) -> PromptsResult:
    """Tokenize and embed every label's prompts; write the folder's embeddings file."""
    card = load_card(folder / CARD_FILENAME)
    if card.format != "zero_shot" or card.zero_shot is None:
        raise ModelError(f"model {card.name}: `models prompts` is for format zero_shot models (this one is {card.format})")
    spec = card.zero_shot
    texts = [prompt for label in card.labels for prompt in (label.prompts or [])]
    owners = np.array([k for k, label in enumerate(card.labels) for _ in (label.prompts or [])], dtype=np.int32)
    tokenizer = load_tokenizer(folder / spec.tokenizer, spec.context_length, lowercase=spec.lowercase)
    ids, mask = tokenizer.encode(texts)
    encoder_path = folder / spec.text_encoder
    vectors = _run_text_encoder(encoder_path, ids, mask, card)
    if vectors.shape[0] != len(texts) or vectors.ndim != 2:
        raise ModelError(f"model {card.name}: text encoder {encoder_path} returned shape {vectors.shape} for {len(texts)} prompts; "
                         "it must return one embedding per prompt (prompts, dim)")
    if not np.all(np.isfinite(vectors)):
        raise ModelError(f"model {card.name}: text encoder {encoder_path} returned non-finite embeddings")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    embeddings = LabelEmbeddings(
        vectors=label_vectors(unit, owners, len(card.labels)),
        prompt_vectors=unit.astype(np.float32),
        prompt_labels=owners,
        digest=prompts_digest(card),
        text_encoder_sha256=file_sha256(encoder_path),
        tokenizer_sha256=file_sha256(folder / spec.tokenizer),
    )
    target = folder / spec.embeddings
    write_embeddings(target, embeddings, card)
    result = PromptsResult(path=target, labels=len(card.labels), prompts=len(texts), dim=embeddings.dim,
                           closest=_closest_pair(embeddings.vectors, card))
    log.info("model %s: %d prompt(s) for %d label(s) embedded (%d-dim) into %s", card.name, result.prompts,
             result.labels, result.dim, target)
    return result


def _run_text_encoder(path: Path, ids: np.ndarray, mask: np.ndarray, card: ModelCard) -> np.ndarray:
    if not path.is_file():
        raise ModelError(f"model {card.name}: text encoder {path} not found (zero_shot.text_encoder); "
                         "export the text tower of the hospital's CLIP model to ONNX or TorchScript")
    if path.suffix.lower() == ".onnx":
        return _run_onnx(path, ids, mask, card)
    try:
        encoder = torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"model {card.name}: text encoder {path} is neither ONNX (.onnx) nor a TorchScript archive: {exc}") from exc
    arguments = len(encoder.forward.schema.arguments) - 1  # without self
    inputs = [torch.from_numpy(ids), torch.from_numpy(mask)][: max(1, min(arguments, 2))]
    try:
        with torch.inference_mode():
            out = encoder(*inputs)
    except Exception as exc:  # an arbitrary scripted model
        raise ModelError(f"model {card.name}: text encoder {path} fails on token ids of shape {ids.shape}: {exc}") from exc
    if isinstance(out, (tuple, list)):
        out = out[0]
    return np.asarray(out.float().numpy(), dtype=np.float32)


def _run_onnx(path: Path, ids: np.ndarray, mask: np.ndarray, card: ModelCard) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError(f"model {card.name}: onnxruntime is not installed (pip install onnxruntime) to run {path}") from exc
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"model {card.name}: text encoder {path} is not a loadable ONNX model: {exc}") from exc
    if len(session.get_inputs()) > 2:
        raise ModelError(f"model {card.name}: text encoder {path} takes {len(session.get_inputs())} inputs; "
                         "the node feeds token ids and optionally an attention mask")
    feeds = {}
    for spec, values in zip(session.get_inputs(), (ids, mask)):
        dtype = np.int32 if spec.type == "tensor(int32)" else np.int64
        feeds[spec.name] = values.astype(dtype)
    try:
        return np.asarray(session.run(None, feeds)[0], dtype=np.float32)
    except Exception as exc:
        raise ModelError(f"model {card.name}: text encoder {path} fails on token ids of shape {ids.shape}: {exc}") from exc


def _closest_pair(vectors: np.ndarray, card: ModelCard) -> tuple[str, str, float]:
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    i, j = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
    return card.labels[int(i)].name, card.labels[int(j)].name, float(similarity[i, j])
