"""Turn prompts into the token ids a hospital's text encoder was trained on, from a file in its folder.

Two kinds of file, chosen by name:
- `*.json`: a HuggingFace `tokenizers` tokenizer.json (any model type: WordPiece, BPE, ...),
  read with the `tokenizers` package (`pip install 'dicom-ai[tokenizers]'`); its own
  post-processor adds the special tokens.
- anything else: a BERT WordPiece vocabulary, one token per line (`vocab.txt`), as BiomedCLIP's
  PubMedBERT text tower ships it. BERT's tokenization is implemented here without a dependency:
  clean and (when uncased) lower-case and strip accents, split on whitespace and punctuation,
  then greedy longest-match-first word pieces ("##" continuations), [CLS] ... [SEP], [PAD] to the
  context length.
Both give (ids, attention mask) int64 arrays of shape (prompts, context_length).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Protocol

import numpy as np

from dicom_ai.infer.card import ModelError

MAX_WORD_CHARS = 100  # BERT maps longer "words" to [UNK]
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")


class Tokenizer(Protocol):
    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention_mask), both int64 (len(texts), context_length)."""
        ...


def load_tokenizer(path: Path, context_length: int, *, lowercase: bool = True) -> Tokenizer:
    """The tokenizer in `path`: tokenizer.json (HuggingFace tokenizers) or a WordPiece vocab.txt."""
    if not path.is_file():
        raise ModelError(f"tokenizer {path} not found (zero_shot.tokenizer: a vocab.txt or tokenizer.json in the model's folder)")
    if path.suffix.lower() == ".json":
        return HuggingFaceTokenizer(path, context_length)
    return WordPieceTokenizer(path, context_length, lowercase=lowercase)


class WordPieceTokenizer:
    """BERT's uncased/cased WordPiece tokenizer over a vocab.txt (the algorithm of BERT's tokenization.py)."""

    def __init__(self, vocab: Path, context_length: int, *, lowercase: bool = True) -> None:
        try:
            tokens = vocab.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"tokenizer {vocab}: cannot read it as a UTF-8 vocabulary, one token per line ({exc})") from exc
        self.vocab = {token: index for index, token in enumerate(tokens) if token}
        missing = [token for token in SPECIAL_TOKENS if token not in self.vocab]
        if missing:
            raise ModelError(f"tokenizer {vocab}: not a BERT WordPiece vocabulary (no {', '.join(missing)}); "
                             "give the text encoder's vocab.txt, or its tokenizer.json")
        self.context_length = context_length
        self.lowercase = lowercase

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text, without special tokens."""
        pieces: list[str] = []
        for word in self._basic(text):
            pieces.extend(self._word_pieces(word))
        return pieces

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(texts), self.context_length), self.vocab["[PAD]"], dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, text in enumerate(texts):
            pieces = ["[CLS]", *self.tokenize(text)[: self.context_length - 2], "[SEP]"]
            ids[row, : len(pieces)] = [self.vocab[p] for p in pieces]
            mask[row, : len(pieces)] = 1
        return ids, mask

    def _basic(self, text: str) -> list[str]:
        cleaned = "".join(" " if _is_whitespace(c) else c for c in text if not (ord(c) in (0, 0xFFFD) or _is_control(c)))
        cleaned = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in cleaned)
        words = []
        for word in cleaned.split():
            if self.lowercase:
                word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
            words.extend(_split_punctuation(word))
        return words

    def _word_pieces(self, word: str) -> list[str]:
        if len(word) > MAX_WORD_CHARS:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            else:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces


class HuggingFaceTokenizer:
    """A tokenizer.json read by the `tokenizers` package, truncated and padded to the context length."""

    def __init__(self, path: Path, context_length: int) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as exc:
            raise ModelError(f"tokenizer {path} is a HuggingFace tokenizer.json, which needs the tokenizers package "
                             "(pip install 'dicom-ai[tokenizers]'), or give the encoder's WordPiece vocab.txt instead") from exc
        try:
            self._tokenizer = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own exception type for bad files
            raise ModelError(f"tokenizer {path}: not a readable tokenizer.json: {exc}") from exc
        pad_id = next((i for t in ("[PAD]", "<pad>", "<|endoftext|>") if (i := self._tokenizer.token_to_id(t)) is not None), 0)
        self._tokenizer.enable_truncation(max_length=context_length)
        self._tokenizer.enable_padding(length=context_length, pad_id=pad_id)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True  # BERT treats every non-alphanumeric ASCII character as punctuation
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    return any(low <= code <= high for low, high in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
    ))


def _split_punctuation(word: str) -> list[str]:
    out: list[str] = []
    current = ""
    for char in word:
        if _is_punctuation(char):
            if current:
                out.append(current)
            out.append(char)
            current = ""
        else:
            current += char
    if current:
        out.append(current)
    return out
