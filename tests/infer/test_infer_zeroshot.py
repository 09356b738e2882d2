"""Zero-shot (BiomedCLIP-style) models: prompts embedded offline, softmax over cosine similarity.

A tiny randomly initialised CLIP-like pair is built here (a conv image encoder, a bag-of-tokens
text encoder), exported to ONNX and TorchScript, with a WordPiece vocab.txt (BiomedCLIP's kind)
and a HuggingFace tokenizer.json written here too. No weights are downloaded.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from pydicom import dcmread
from torch import nn

from dicom_ai.cli import main
from dicom_ai.infer.card import CardError, ModelError, load_card
from dicom_ai.infer.pixels import display_image
from dicom_ai.infer.prompts import compute_prompt_embeddings
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.infer.runner import LoadedModel
from dicom_ai.infer.tokenizer import HuggingFaceTokenizer, WordPieceTokenizer
from tests.conftest import sample
from tests.infer.infer_support import instance_for

DIM = 32
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "chest", "x", "-", "ray", "showing", "pneumonia", "pleural", "effusion",
         "normal", "a", "lung", "##s", "no", "finding", "fluid", "right", "left", "radio", "##graph", "with", ",", ".",
         ":", "cafe", "opacity", "##ies", "consolidation"]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class ImageEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, DIM),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TextEncoder(nn.Module):
    """Mean of token embeddings under the attention mask, projected: one embedding per prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), 24)
        self.proj = nn.Linear(24, DIM)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).float()
        return self.proj((self.embed(ids) * weights).sum(1) / weights.sum(1).clamp_min(1.0))


def save(network: nn.Module, path: Path, example: tuple[torch.Tensor, ...], names: list[str]) -> None:
    """TorchScript (any suffix but .onnx) or ONNX with a dynamic batch axis."""
    network = network.eval()
    if path.suffix != ".onnx":
        torch.jit.save(torch.jit.script(network), str(path))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, example, str(path), dynamo=False, input_names=names, output_names=["embeds"],
                          dynamic_axes={**{n: {0: "batch"} for n in names}, "embeds": {0: "batch"}}, opset_version=17)


def write_vocab(path: Path) -> None:
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")


def write_tokenizer_json(path: Path) -> None:
    """A BERT WordPiece tokenizer.json, as HuggingFace saves one, over the same vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(VOCAB)}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(path))


def zero_shot_card(image: str, text: str, tokenizer: str) -> dict[str, Any]:
    code = lambda value, meaning: {"value": value, "scheme": "SCT", "meaning": meaning}  # noqa: E731
    return {
        "name": "tiny-clip",
        "version": "0.0.1",
        "display_name": "Tiny CLIP-like test pair",
        "manufacturer": "dicom-ai tests",
        "format": "zero_shot",
        "weights": image,
        "zero_shot": {"text_encoder": text, "tokenizer": tokenizer, "context_length": 16, "logit_scale": 50.0,
                      "occlusion_grid": 4},
        "gate": {"Modality": ["CR", "DX"]},
        "input": {"size": [32, 32], "channels": 3, "normalize": "meanstd", "mean": CLIP_MEAN, "std": CLIP_STD},
        "output": "softmax",
        "labels": [
            {"name": "Pneumonia", "code": code("233604007", "Pneumonia"), "threshold": 0.3,
             "prompts": ["chest x-ray showing pneumonia", "pneumonia"]},
            {"name": "Effusion", "code": code("60046008", "Pleural effusion"), "threshold": 0.3,
             "prompts": ["chest x-ray showing pleural effusion", "pleural fluid"]},
            {"name": "No finding", "report": False, "prompts": ["a normal chest x-ray", "no finding"]},
        ],
        "intended_use": "tests only",
    }


def write_pair(folder: Path, image: str = "image.onnx", text: str = "text.pt", tokenizer: str = "vocab.txt",
               seed: int = 0) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save(ImageEncoder(), folder / image, (torch.rand(2, 3, 32, 32),), ["pixel_values"])
    save(TextEncoder(), folder / text, (torch.zeros(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long)),
         ["input_ids", "attention_mask"])
    if tokenizer.endswith(".json"):
        write_tokenizer_json(folder / tokenizer)
    else:
        write_vocab(folder / tokenizer)
    card = zero_shot_card(image, text, tokenizer)
    write_card(folder, card)
    return card


def write_card(folder: Path, card: dict[str, Any]) -> None:
    (folder / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")


def rg1_batch(model: LoadedModel) -> torch.Tensor:
    return model.prepare(display_image(dcmread(sample("RG1_UNCR.dcm"))))[None]


@pytest.mark.parametrize(
    ("image", "text", "tokenizer", "backend"),
    [("image.onnx", "text.pt", "vocab.txt", "onnxruntime"), ("image.pt", "text.onnx", "tokenizer.json", "torchscript")],
)
def test_prompts_are_embedded_offline_then_the_image_encoder_reports_like_a_cnn(
    tmp_path: Path, image: str, text: str, tokenizer: str, backend: str
) -> None:
    folder = tmp_path / "models" / "tiny-clip"
    write_pair(folder, image, text, tokenizer)
    outcome = CliRunner().invoke(main, ["models", "prompts", str(folder)], env={"DICOM_AI_HOME": str(tmp_path)})
    assert outcome.exit_code == 0, outcome.output
    assert f"wrote {folder / 'prompts.npz'}: 3 label embeddings (32-dim) from 6 prompts" in outcome.output
    with np.load(folder / "prompts.npz") as stored:
        assert stored["label_embeddings"].shape == (3, DIM)
        np.testing.assert_allclose(np.linalg.norm(stored["label_embeddings"], axis=1), 1.0, atol=1e-5)

    model = ModelRegistry(folder.parent).get("tiny-clip")
    assert model.backend == backend
    probabilities = model.probabilities(rg1_batch(model))
    assert probabilities.shape == (1, 3) and probabilities.sum() == pytest.approx(1.0, abs=1e-5)

    rg1 = instance_for(sample("RG1_UNCR.dcm"))
    [result] = model.predict([rg1], heatmaps="all")
    assert [f.label for f in result.findings] == ["Pneumonia", "Effusion"]  # "No finding" is not reported
    assert [f.code.value for f in result.findings] == ["233604007", "60046008"]
    assert [f.probability for f in result.findings] == pytest.approx(list(probabilities[0, :2]), abs=1e-5)
    assert [f.threshold for f in result.findings] == [0.3, 0.3]
    assert result.heatmap is not None and result.heatmap.shape == result.display.shape[:2]
    assert result.heatmap.dtype == np.float32 and 0.0 <= result.heatmap.min() and result.heatmap.max() == pytest.approx(1.0)


def test_stale_embeddings_are_refused_and_new_prompts_change_the_probabilities(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "tiny-clip"
    card = write_pair(folder)
    compute_prompt_embeddings(folder)
    before = LoadedModel.load(folder, load_card(folder / "model.yaml"))
    batch = rg1_batch(before)
    first = before.probabilities(batch)

    changed = copy.deepcopy(card)
    changed["labels"][0]["prompts"] = ["right lung opacity with consolidation"]
    write_card(folder, changed)
    stale = rf"{folder / 'prompts.npz'} is stale: the card's labels, prompts or tokenizer settings changed .*run `dicom-ai models prompts {folder}`"
    with pytest.raises(ModelError, match=stale):
        LoadedModel.load(folder, load_card(folder / "model.yaml"))
    registry = ModelRegistry(folder.parent)
    with pytest.raises(ModelError, match="is stale"):
        registry.get("tiny-clip")
    assert "is stale" in registry.problems()["tiny-clip"]

    compute_prompt_embeddings(folder)
    second = LoadedModel.load(folder, load_card(folder / "model.yaml")).probabilities(batch)
    assert second.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.abs(second - first).max() > 1e-3

    torch.manual_seed(7)
    save(TextEncoder(), folder / "text.pt", (), [])  # the hospital replaced its text encoder
    with pytest.raises(ModelError, match=rf"is stale: {folder / 'text.pt'} is not the file that computed them"):
        LoadedModel.load(folder, load_card(folder / "model.yaml"))


def test_missing_embeddings_say_how_to_make_them(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "tiny-clip"
    write_pair(folder)
    with pytest.raises(ModelError, match=r"prompts\.npz not found; run `dicom-ai models prompts .*` \(it needs text\.pt and vocab\.txt"):
        LoadedModel.load(folder, load_card(folder / "model.yaml"))


def test_onnx_and_torchscript_encoders_give_the_same_probabilities(tmp_path: Path) -> None:
    onnx_folder, script_folder = tmp_path / "a" / "tiny-clip", tmp_path / "b" / "tiny-clip"
    write_pair(onnx_folder, "image.onnx", "text.onnx", "vocab.txt", seed=4)
    write_pair(script_folder, "image.pt", "text.pt", "tokenizer.json", seed=4)
    results = []
    for folder in (onnx_folder, script_folder):
        compute_prompt_embeddings(folder)
        model = LoadedModel.load(folder, load_card(folder / "model.yaml"))
        results.append(model.probabilities(rg1_batch(model)))
    np.testing.assert_allclose(results[0], results[1], atol=1e-5)


def test_wordpiece_vocab_tokenizes_as_huggingface_does(tmp_path: Path) -> None:
    write_vocab(tmp_path / "vocab.txt")
    write_tokenizer_json(tmp_path / "tokenizer.json")
    texts = ["Chest X-ray: RIGHT pleural effusions, café", "radiographs with opacities.", "zebra", "", "lung " * 20,
             "a\tlung\u00a0fluid\x07"]
    ours = WordPieceTokenizer(tmp_path / "vocab.txt", 12).encode(texts)
    theirs = HuggingFaceTokenizer(tmp_path / "tokenizer.json", 12).encode(texts)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])
    assert WordPieceTokenizer(tmp_path / "vocab.txt", 12).tokenize("radiographs") == ["radio", "##graph", "##s"]


def test_a_vocabulary_without_bert_special_tokens_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("chest\nlung\n")
    with pytest.raises(ModelError, match=r"vocab\.txt: not a BERT WordPiece vocabulary \(no \[CLS\], \[SEP\], \[PAD\], \[UNK\]\)"):
        WordPieceTokenizer(tmp_path / "vocab.txt", 8)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["labels"][1].pop("prompts"), "every label needs prompts (missing for Effusion)"),
        (lambda c: c.update(output="sigmoid"), "output must be softmax"),
        (lambda c: c.update(gradcam={"target_layer": "net.0"}), "draws heatmaps by occlusion"),
        (lambda c: c.pop("zero_shot"), "needs a zero_shot section"),
        (lambda c: c.update(format="onnx"), "zero_shot settings apply only to format zero_shot"),
        (lambda c: c["zero_shot"].update(logit_scale=0), "zero_shot.logit_scale"),
    ],
)
def test_zero_shot_cards_are_checked(tmp_path: Path, change: Any, message: str) -> None:
    card = zero_shot_card("image.onnx", "text.pt", "vocab.txt")
    change(card)
    write_card(tmp_path, card)
    with pytest.raises(CardError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_card(tmp_path / "model.yaml")


def test_models_check_runs_a_zero_shot_model_and_its_occlusion_heatmap(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "tiny-clip"
    write_pair(folder)
    compute_prompt_embeddings(folder)
    outcome = CliRunner().invoke(main, ["models", "check", str(folder)], env={"DICOM_AI_HOME": str(tmp_path)})
    assert outcome.exit_code == 0, outcome.output
    assert "ok  tiny-clip 0.0.1" in outcome.output
    assert "zero-shot: 3 labels from 6 prompts in prompts.npz (current), logit scale 50" in outcome.output
    assert "occlusion: 4x4 map" in outcome.output
    refused = CliRunner().invoke(main, ["models", "export", str(folder)], env={"DICOM_AI_HOME": str(tmp_path)})
    assert refused.exit_code == 1 and "image encoder is ONNX or TorchScript already" in refused.output
