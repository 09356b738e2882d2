"""CheXNet checkpoints load as published: torchvision DenseNet-121 names onto MONAI's DenseNet121.

The source networks are built here with plain torch.nn under torchvision's module names (no
torchvision: it cannot be installed beside this torch), randomly initialised (batch-norm
statistics too, so a swapped norm1/norm2 would show), and saved exactly as their publishers did:
arnoweng/CheXNet's model.pth.tar (torch 0.3: legacy serialisation, old dotted `norm.1` names,
DataParallel "module." + "densenet121." prefixes, a training dict) and jrzech/reproduce-chexnet's
`checkpoint` (a whole pickled torchvision model in a dict). Loading them through the example card
must give the source network's outputs.
"""

from __future__ import annotations

import copy
import re
import shutil
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from torch import nn

from dicom_ai.cli import main
from dicom_ai.infer.card import ModelError, load_card
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.infer.runner import LoadedModel

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "models" / "examples" / "chexnet"
LABELS = 14


class _DenseLayer(nn.Module):
    """torchvision.models.densenet._DenseLayer (>= 0.5): norm1, relu1, conv1, norm2, relu2, conv2."""

    def __init__(self, inputs: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(inputs)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inputs, bn_size * growth, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = 0.0
        self.memory_efficient = False

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, inputs: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(inputs + i * growth, growth, bn_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(inputs))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(inputs, outputs, kernel_size=1, stride=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    """torchvision.models.densenet121's layout and forward; CheXNet's head: Linear(1024, 14) + Sigmoid."""

    def __init__(self, growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16), init: int = 64, bn_size: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, init, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(init)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        channels = init
        for i, layers in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(layers, channels, growth, bn_size))
            channels += layers * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Sequential(nn.Linear(channels, LABELS), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(F.relu(self.features(x), inplace=True), (1, 1))
        return self.classifier(torch.flatten(out, 1))


class CheXNet(nn.Module):
    """arnoweng/CheXNet's model.py: the torchvision DenseNet as attribute `densenet121`."""

    def __init__(self) -> None:
        super().__init__()
        self.densenet121 = DenseNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.densenet121(x)


def randomised(network: nn.Module, seed: int) -> nn.Module:
    """Random weights and batch-norm statistics (a fresh BN is the identity and would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return network.eval()


def dotted(key: str) -> str:
    """torchvision 0.2's names: denselayer1.norm.1 instead of denselayer1.norm1."""
    return re.sub(r"(denselayer\d+\.)(norm|relu|conv)([12])\.", r"\1\2.\3.", key)


def model_folder(tmp_path: Path, size: int | None = None, weights: str = "model.pth.tar") -> Path:
    folder = tmp_path / "models" / "chexnet"
    shutil.copytree(EXAMPLE, folder)
    if size is not None or weights != "model.pth.tar":
        card = yaml.safe_load((folder / "model.yaml").read_text())
        card["weights"] = weights
        if size is not None:
            card["input"]["size"] = [size, size]
        (folder / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return folder


def arnoweng_checkpoint(path: Path, seed: int = 0) -> nn.Module:
    """Save as arnoweng/CheXNet's model.pth.tar and return the source network."""
    torch.manual_seed(seed)
    source = randomised(CheXNet(), seed)
    parallel = {"module." + dotted(key): value for key, value in source.state_dict().items()
                if not key.endswith("num_batches_tracked")}  # torch 0.3 had no such buffers
    optimizer = torch.optim.Adam(source.parameters(), lr=1e-3)
    checkpoint = {"epoch": 7, "arch": "densenet121", "state_dict": parallel, "best_loss": 0.148,
                  "optimizer": optimizer.state_dict()}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    return source


@contextmanager
def torchvision_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make these classes picklable under torchvision's names, as a real torchvision model pickles."""
    package = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    densenet = types.ModuleType("torchvision.models.densenet")
    for cls in (_DenseLayer, _DenseBlock, _Transition, DenseNet):
        monkeypatch.setattr(cls, "__module__", "torchvision.models.densenet")
        setattr(densenet, cls.__name__, cls)
    for name, module in (("torchvision", package), ("torchvision.models", models), ("torchvision.models.densenet", densenet)):
        monkeypatch.setitem(sys.modules, name, module)
    yield
    monkeypatch.undo()


def probe(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_published_chexnet_checkpoint_loads_through_the_example_card(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    source = arnoweng_checkpoint(folder / "model.pth.tar")
    raw = torch.load(folder / "model.pth.tar", weights_only=True)
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in raw["state_dict"]
    assert "module.densenet121.classifier.0.weight" in raw["state_dict"]

    card = load_card(folder / "model.yaml")
    model = LoadedModel.load(folder, card)
    batch = probe(224)
    with torch.no_grad():
        expected = source(batch).numpy()
    got = model.probabilities(batch)
    assert got.shape == (2, LABELS)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(expected - 0.5).max() > 0.01  # the outputs say something: not a sigmoid of zeros

    top = int(np.argmax(expected[0]))  # the runner explains the most probable label
    maps = model._feature_maps(batch[:1], top)  # Grad-CAM on class_layers.relu, named in the card
    assert maps.shape == (1, 1, 7, 7) and torch.isfinite(maps).all()
    assert float(maps.min()) == 0.0 and float(maps.max()) == pytest.approx(1.0)


def test_reproduce_chexnet_whole_pickled_model_loads_without_running_its_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = model_folder(tmp_path, size=64, weights="checkpoint")
    torch.manual_seed(3)
    source = randomised(DenseNet(), 3)
    with torchvision_importable(monkeypatch):
        state = {"model": source, "best_loss": 0.151, "epoch": 4, "rng_state": torch.get_rng_state(), "LR": 0.01}
        torch.save(state, folder / "checkpoint")
    assert "torchvision" not in sys.modules
    assert b"torchvision.models.densenet" in (folder / "checkpoint").read_bytes()

    model = LoadedModel.load(folder, load_card(folder / "model.yaml"))
    batch = probe(64)
    with torch.no_grad():
        expected = source(batch).numpy()
    np.testing.assert_allclose(model.probabilities(batch), expected, atol=1e-5)


def test_a_checkpoint_with_other_code_in_it_is_refused_unread(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, size=64)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": copy.deepcopy}, folder / "model.pth.tar")
    with pytest.raises(ModelError, match=r"model\.pth\.tar: it pickles copy\.deepcopy, which the node never unpickles"):
        LoadedModel.load(folder, load_card(folder / "model.yaml"))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: {k.replace("norm5", "norm_final"): v for k, v in s.items()},
         r"4 network key\(s\) not in the checkpoint, first: features\.norm5\.weight"),
        (lambda s: {**s, "module.densenet121.extra.weight": torch.zeros(1)},
         r"1 key\(s\) outside a torchvision DenseNet \(features\.\*, classifier\.\*\), first: module\.densenet121\.extra\.weight"),
        (lambda s: {k: (v[:7] if k.endswith("classifier.0.weight") else v) for k, v in s.items()},
         r"shape mismatch\(es\) \(checkpoint vs network\), first: class_layers\.out\.weight \(7, 1024\) vs \(14, 1024\)"),
    ],
    ids=["missing", "stray", "shape"],
)
def test_wrong_keys_name_the_file_and_the_first_keys(tmp_path: Path, change: Any, expected: str) -> None:
    folder = model_folder(tmp_path, size=64)
    arnoweng_checkpoint(folder / "model.pth.tar")
    checkpoint = torch.load(folder / "model.pth.tar", weights_only=True)
    checkpoint["state_dict"] = change(checkpoint["state_dict"])
    torch.save(checkpoint, folder / "model.pth.tar")
    with pytest.raises(ModelError) as raised:
        LoadedModel.load(folder, load_card(folder / "model.yaml"))
    message = str(raised.value)
    assert str(folder / "model.pth.tar") in message and "DenseNet121 (weights_layout torchvision-densenet)" in message
    assert re.search(expected, message), message


def test_models_check_works_on_the_example_with_weights_and_says_what_the_site_must_do(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    arnoweng_checkpoint(folder / "model.pth.tar")
    outcome = CliRunner().invoke(main, ["models", "check", str(folder)], env={"DICOM_AI_HOME": str(tmp_path)})
    assert outcome.exit_code == 0, outcome.output
    assert "ok, NOT READY  chexnet 1.0.0" in outcome.output
    assert "to do: set the thresholds of Atelectasis, Cardiomegaly" in outcome.output
    assert "Grad-CAM on class_layers.relu: 7x7 map" in outcome.output
    assert "Hernia (SCT 84089009) >= threshold for the site to set" in outcome.output

    registry = ModelRegistry(folder.parent)
    assert registry.names() == []
    assert "not ready: threshold 'site' for Atelectasis" in registry.problems()["chexnet"]


def test_the_node_reports_once_the_site_has_set_the_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = model_folder(tmp_path, size=64)
    arnoweng_checkpoint(folder / "model.pth.tar")
    card = load_card(folder / "model.yaml")
    model = LoadedModel.load(folder, card)
    with pytest.raises(ModelError, match=r"has not set the thresholds of Atelectasis, .*Hernia \(threshold: site"):
        model.predict([])
    text = (folder / "model.yaml").read_text().replace("threshold: site", "threshold: 0.5")
    (folder / "model.yaml").write_text(text)
    registry = ModelRegistry(folder.parent)
    assert registry.names() == ["chexnet"] and registry.problems() == {}
    assert registry.get("chexnet").predict([]) == []


def test_the_shipped_models_folder_skips_its_examples() -> None:
    registry = ModelRegistry(REPO / "models")
    assert "examples" not in registry.problems() and "chexnet" not in registry.names()
    assert not list(EXAMPLE.glob("*.pth*")) and not (EXAMPLE / "checkpoint").exists()  # no weights ship
