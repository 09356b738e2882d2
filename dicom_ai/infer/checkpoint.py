"""Read a published checkpoint as it was saved and fit it onto the card's MONAI network.

Hospitals get weights as their authors saved them, not as `monai.networks.nets` names them:
a training dict around the weights (`{'state_dict': ..., 'epoch': ...}`), DataParallel's
"module." prefix, a wrapper attribute (CheXNet's "densenet121."), torchvision's DenseNet names
(the old dotted `norm.1`/`conv.1` of torchvision 0.2 or the newer `norm1`), or even a whole
pickled torchvision model (reproduce-chexnet). Converting such a file by hand is error-prone,
so the card names the layout (`architecture.weights_layout`, plus optional `key_map` rewrites)
and the node maps the names at load time. Nothing here executes code from the file: whole
pickled models are read by torch's weights-only unpickler with inert stand-ins for the few
torchvision classes a DenseNet pickle names.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dicom_ai.infer.card import ArchitectureSpec, ModelCard, ModelError

# Keys under which training scripts keep the weights in a checkpoint dict, most specific first.
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
# Buffers an older torch did not save; they only count batches during training.
OPTIONAL_BUFFERS = ("num_batches_tracked",)
SHOWN_KEYS = 5  # unmatched keys named in an error message

# torchvision DenseNet (any version) -> monai.networks.nets.DenseNet.
_TV_ROOT = re.compile(r"^(?:.*?\.)??(features\..+|classifier(?:\.\d+)?\.(?:weight|bias))$")
_TV_DOTTED = re.compile(r"\.(norm|relu|conv)\.([12])\.")  # torchvision 0.2: denselayer1.norm.1.weight
_TV_LAYER = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.(?!layers\.)")
_TV_CLASSIFIER = re.compile(r"^classifier(?:\.\d+)?\.(weight|bias)$")


class _Inert(torch.nn.Module):
    """Stands in for a torchvision class while unpickling: holds submodules and tensors, runs nothing."""

    def forward(self, *args: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("a stand-in module from a checkpoint is not runnable")


def _inert(qualified: str) -> tuple[type, str]:
    return type(qualified.rsplit(".", 1)[1], (_Inert,), {}), qualified


# A torchvision DenseNet pickled whole names these classes; nothing else is allowed in.
_TORCHVISION_STANDINS = [
    _inert(f"torchvision.models.densenet.{name}") for name in ("DenseNet", "_DenseBlock", "_DenseLayer", "_Transition")
]
_TORCH_MODULES = [
    torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Conv2d, torch.nn.BatchNorm2d,
    torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d, torch.nn.Linear,
    torch.nn.Sigmoid, torch.nn.Softmax, torch.nn.Dropout, torch.nn.Identity, torch.nn.Flatten,
    collections.OrderedDict, set,
]


def read_state_dict(path: Path, card: ModelCard) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped, with the card's layout and key_map applied."""
    architecture = card.architecture
    assert architecture is not None  # the card requires one for state_dict
    state = _unwrap(_load(path, card), path, card)
    if architecture.weights_layout == "torchvision-densenet":
        state = torchvision_densenet_to_monai(state, path, card)
    else:
        state = _strip_prefix(state, "module.")
    return apply_key_map(state, architecture)


def fit(network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, card: ModelCard) -> None:
    """Load `state` into `network` strictly; a mismatch names the file and the first keys at fault."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_BUFFERS)]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} checkpoint key(s) the network lacks, first: {_first(unexpected)}")
        if missing:
            parts.append(f"{len(missing)} network key(s) not in the checkpoint, first: {_first(missing)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs network), first: {_first(shapes)}")
        raise _misfit(card, path, "; ".join(parts) + " (set architecture.weights_layout or key_map in the card; see docs/models.md)")
    complete = dict(state)
    for key, value in expected.items():
        complete.setdefault(key, value)  # optional buffers an older torch did not save
    network.load_state_dict(complete)


def torchvision_densenet_to_monai(state: Mapping[str, torch.Tensor], path: Path, card: ModelCard) -> dict[str, torch.Tensor]:
    """Rename torchvision DenseNet keys (either naming, any wrapper prefix) to MONAI's DenseNet keys.

    features.denseblock1.denselayer1.norm.1.weight (torchvision 0.2) and ...norm1.weight become
    features.denseblock1.denselayer1.layers.norm1.weight; classifier[.0].weight/bias (a Linear,
    optionally in a Sequential with a Sigmoid: the card's `output: sigmoid` applies it) becomes
    class_layers.out.*. Prefixes before `features.` (module., densenet121., model.) are dropped.
    """
    renamed: dict[str, torch.Tensor] = {}
    strays = []
    for key, value in state.items():
        match = _TV_ROOT.match(key)
        if match is None:
            strays.append(key)
            continue
        name = match.group(1)
        classifier = _TV_CLASSIFIER.match(name)
        if classifier:
            name = f"class_layers.out.{classifier.group(1)}"
        else:
            name = _TV_LAYER.sub(r"\1.layers.", _TV_DOTTED.sub(r".\1\2.", name))
        if name in renamed:
            raise _misfit(card, path, f"key {key!r} and another both map to {name!r} "
                          "(more than one classifier layer? the node maps a single Linear head)")
        renamed[name] = value
    if strays:
        raise _misfit(card, path, f"{len(strays)} key(s) outside a torchvision DenseNet (features.*, classifier.*), "
                      f"first: {_first(strays)}")
    return renamed


def apply_key_map(state: Mapping[str, torch.Tensor], architecture: ArchitectureSpec) -> dict[str, torch.Tensor]:
    """The card's `key_map` regular-expression rewrites, in order, on every key."""
    if not architecture.key_map:
        return dict(state)
    rules = [(re.compile(rule.pattern), rule.replace) for rule in architecture.key_map]
    out = {}
    for key, value in state.items():
        for pattern, replace in rules:
            key = pattern.sub(replace, key)
        out[key] = value
    return out


def _load(path: Path, card: ModelCard) -> Any:
    allowed: list[Any] = [*_TORCHVISION_STANDINS, *_TORCH_MODULES]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad or unsafe file
        detail = [line.strip() for line in str(exc).split("\n") if line.strip()]
        unsafe = next((line for line in detail if "Unsupported global" in line), None)
        if unsafe is not None:
            found = match.group(1) if (match := re.search(r"GLOBAL (\S+)", unsafe)) else "a Python object"
            raise ModelError(f"model {card.name}: cannot read state_dict {path}: it pickles {found}, which the node "
                             "never unpickles (it reads tensors, and whole torchvision DenseNets with inert stand-ins); "
                             "save the weights with torch.save(model.state_dict(), ...)") from exc
        raise ModelError(f"model {card.name}: cannot read state_dict {path}: {detail[0] if detail else type(exc).__name__}") from exc


def _unwrap(obj: Any, path: Path, card: ModelCard) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: the dict itself, one under a STATE_KEYS key, or a module's state_dict."""
    for _ in range(3):  # e.g. {'model': {'state_dict': {...}}}
        if isinstance(obj, torch.nn.Module):
            return obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        inner = next((obj[k] for k in STATE_KEYS if k in obj and isinstance(obj[k], (Mapping, torch.nn.Module))), None)
        if inner is None:
            break
        obj = inner
    kind = f"a dict with keys {_first([str(k) for k in obj])}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    raise ModelError(f"model {card.name}: {path} holds {kind}, not a state_dict "
                     f"(looked for the weights under {', '.join(STATE_KEYS)})")


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """DataParallel saves every key as module.<key>; strip it when every key has it."""
    while state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _misfit(card: ModelCard, path: Path, detail: str) -> ModelError:
    architecture = card.architecture
    name = f"{architecture.name} (weights_layout {architecture.weights_layout})" if architecture is not None else "?"
    return ModelError(f"model {card.name}: {path} does not fit architecture {name}: {detail}")


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")
