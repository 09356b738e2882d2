"""Zero-shot (CLIP-style, e.g. BiomedCLIP) models: an image encoder against stored label embeddings.

The text side runs once, offline (`dicom-ai models prompts`, infer.prompts): each label's
prompts are embedded by the hospital's text encoder and averaged into one unit vector per label,
kept in the model folder (`zero_shot.embeddings`, prompts.npz) with a digest of what made them.
At load the digest must match the card (labels, prompts, context length) and the text encoder
and tokenizer files, when present, must be the ones that made them: stale embeddings are
refused, never trusted. Logits are logit_scale * cosine(image embedding, label embedding), so
the runner's softmax gives CLIP's zero-shot probabilities and everything downstream (findings,
codes, thresholds, SR, SC, priority) is the same as for a CNN.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dicom_ai.infer.card import ModelCard, ModelError, ZeroShotSpec, file_sha256
from dicom_ai.infer.networks import OnnxSession

log = logging.getLogger(__name__)

EMBEDDINGS_FORMAT = 1  # version of the prompts.npz layout


@dataclass(frozen=True)
class LabelEmbeddings:
    """What prompts.npz holds: one unit vector per label (card order) and how they were made."""

    vectors: np.ndarray  # (labels, dim) float32, unit length
    prompt_vectors: np.ndarray  # (prompts, dim) float32, unit length
    prompt_labels: np.ndarray  # (prompts,) label index of each prompt
    digest: str
    text_encoder_sha256: str
    tokenizer_sha256: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def prompts_digest(card: ModelCard) -> str:
    """SHA-256 of what the embeddings depend on in the card: labels, their prompts, tokenization."""
    spec = _spec(card)
    content = {
        "format": EMBEDDINGS_FORMAT,
        "labels": [[label.name, label.prompts or []] for label in card.labels],
        "tokenizer": spec.tokenizer,
        "context_length": spec.context_length,
        "lowercase": spec.lowercase,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def label_vectors(prompt_vectors: np.ndarray, prompt_labels: np.ndarray, labels: int) -> np.ndarray:
    """One unit vector per label: the normalised mean of its prompts' unit vectors (CLIP's prompt ensembling)."""
    unit = prompt_vectors / np.maximum(np.linalg.norm(prompt_vectors, axis=1, keepdims=True), 1e-12)
    means = np.stack([unit[prompt_labels == k].mean(axis=0) for k in range(labels)])
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def write_embeddings(path: Path, embeddings: LabelEmbeddings, card: ModelCard) -> None:
    """Write prompts.npz atomically (a half-written file is never read as stale-but-valid)."""
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(
        partial,
        format=np.array(EMBEDDINGS_FORMAT),
        labels=np.array([label.name for label in card.labels]),
        label_embeddings=embeddings.vectors.astype(np.float32),
        prompt_embeddings=embeddings.prompt_vectors.astype(np.float32),
        prompt_labels=embeddings.prompt_labels.astype(np.int32),
        prompts_digest=np.array(embeddings.digest),
        text_encoder_sha256=np.array(embeddings.text_encoder_sha256),
        tokenizer_sha256=np.array(embeddings.tokenizer_sha256),
    )
    partial.replace(path)


def read_embeddings(folder: Path, card: ModelCard) -> LabelEmbeddings:
    """The folder's label embeddings, checked against the card and the text side's files."""
    spec = _spec(card)
    path = folder / spec.embeddings
    rerun = f"run `dicom-ai models prompts {folder}` (it needs {spec.text_encoder} and {spec.tokenizer} in the folder)"
    if not path.is_file():
        raise ModelError(f"model {card.name}: prompt embeddings {path} not found; {rerun}")
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
        embeddings = LabelEmbeddings(
            vectors=np.asarray(stored["label_embeddings"], dtype=np.float32),
            prompt_vectors=np.asarray(stored["prompt_embeddings"], dtype=np.float32),
            prompt_labels=np.asarray(stored["prompt_labels"]),
            digest=str(stored["prompts_digest"]),
            text_encoder_sha256=str(stored["text_encoder_sha256"]),
            tokenizer_sha256=str(stored["tokenizer_sha256"]),
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model {card.name}: {path} is not a prompt embeddings file ({exc}); {rerun}") from exc
    if embeddings.digest != prompts_digest(card):
        raise ModelError(f"model {card.name}: {path} is stale: the card's labels, prompts or tokenizer settings changed "
                         f"since the embeddings were computed; {rerun}")
    for name, recorded in ((spec.text_encoder, embeddings.text_encoder_sha256), (spec.tokenizer, embeddings.tokenizer_sha256)):
        present = folder / name
        if present.is_file() and file_sha256(present) != recorded:
            raise ModelError(f"model {card.name}: {path} is stale: {present} is not the file that computed them; {rerun}")
    if embeddings.vectors.ndim != 2 or embeddings.vectors.shape[0] != len(card.labels):
        raise ModelError(f"model {card.name}: {path} holds {embeddings.vectors.shape[0]} label embeddings for "
                         f"{len(card.labels)} labels; {rerun}")
    if not np.all(np.isfinite(embeddings.vectors)):
        raise ModelError(f"model {card.name}: {path} holds non-finite embeddings; {rerun}")
    return embeddings


def similarity_logits(image_embeddings: torch.Tensor, labels: torch.Tensor, logit_scale: float, card: ModelCard) -> torch.Tensor:
    """(B, labels) logit_scale * cosine similarity; the encoder's output must be (B, dim)."""
    if image_embeddings.ndim != 2 or image_embeddings.shape[1] != labels.shape[1]:
        raise ModelError(f"model {card.name}: the image encoder gives output of shape {tuple(image_embeddings.shape)}, "
                         f"expected (batch, {labels.shape[1]}) to match the prompt embeddings")
    return logit_scale * F.normalize(image_embeddings.float(), dim=1) @ labels.T


class ZeroShotHead(torch.nn.Module):
    """A TorchScript image encoder followed by the fixed label embeddings: returns logits."""

    def __init__(self, encoder: torch.nn.Module, embeddings: LabelEmbeddings, card: ModelCard) -> None:
        super().__init__()
        self.encoder = encoder
        self.labels: torch.Tensor
        self.register_buffer("labels", torch.from_numpy(embeddings.vectors))
        self.logit_scale = _spec(card).logit_scale
        self._card = card

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return similarity_logits(self.encoder(batch), self.labels, self.logit_scale, self._card)


class ZeroShotOnnx(OnnxSession):
    """An ONNX image encoder followed by the fixed label embeddings: `logits` as the runner expects."""

    def __init__(self, path: Path, card: ModelCard, embeddings: LabelEmbeddings) -> None:
        super().__init__(path, card)
        self._labels = torch.from_numpy(embeddings.vectors)
        self._scale = _spec(card).logit_scale
        self._card = card

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return similarity_logits(super().logits(batch), self._labels, self._scale, self._card)


def load_zero_shot(folder: Path, card: ModelCard) -> tuple[ZeroShotHead | None, ZeroShotOnnx | None]:
    """The image encoder (ONNX by its .onnx suffix, else TorchScript) wired to the label embeddings."""
    weights = folder / card.weights
    if not weights.is_file():
        raise ModelError(f"model {card.name}: image encoder {weights} not found (named by 'weights' in {folder / 'model.yaml'})")
    embeddings = read_embeddings(folder, card)
    if weights.suffix.lower() == ".onnx":
        return None, ZeroShotOnnx(weights, card, embeddings)
    try:
        encoder = torch.jit.load(str(weights), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"model {card.name}: image encoder {weights} is neither ONNX (.onnx) nor a TorchScript archive: {exc}") from exc
    return ZeroShotHead(encoder, embeddings, card).eval(), None


def _spec(card: ModelCard) -> ZeroShotSpec:
    if card.zero_shot is None:
        raise ModelError(f"model {card.name}: not a zero_shot model")
    return card.zero_shot
