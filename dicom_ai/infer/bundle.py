"""Read a MONAI bundle folder offline: its network and its preprocessing, never a hub.

monai.bundle.ConfigParser instantiates `network_def` and `preprocessing` from the bundle's own
config; weights come from the file the card names (a state_dict, or a dict holding one under
"model" / "state_dict" as some bundles save it). Loader transforms are dropped: the node decodes
DICOM itself and hands the chain a channel-first array in MONAI's orientation (LoadImage gives
columns before rows, and for volumes x, y, z), so a bundle sees what it was trained on.
Bundle configs can run Python expressions (`$...`): install bundles you trust, like any model code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicom_ai.infer.card import ModelCard, ModelError

log = logging.getLogger(__name__)

LOADER_TRANSFORMS = {"LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd", "AddChannel", "AddChanneld"}
STATE_KEYS = ("model", "state_dict", "net", "network")

Preprocessing = Callable[[np.ndarray], torch.Tensor]


def bundle_metadata(folder: Path, card: ModelCard) -> dict[str, Any]:
    """configs/metadata.json as a dict ({} when the bundle has none)."""
    path = folder / card.bundle_spec.metadata
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {card.name}: {path} is not readable JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def load_bundle(folder: Path, card: ModelCard) -> tuple[torch.nn.Module, Preprocessing | None]:
    """The bundle's network with the card's weights loaded, and its preprocessing (or None)."""
    from monai.bundle import ConfigParser

    spec = card.bundle_spec
    config = folder / spec.config
    if not config.is_file():
        raise ModelError(f"model {card.name}: bundle config {config} not found (bundle.config in {folder / 'model.yaml'})")
    parser = ConfigParser()
    try:
        parser.read_config(str(config))
        if (folder / spec.metadata).is_file():
            parser.read_meta(str(folder / spec.metadata))
        parser["bundle_root"] = str(folder)
    except Exception as exc:  # JSON/YAML errors of several types
        raise ModelError(f"model {card.name}: cannot read bundle config {config}: {exc}") from exc
    if spec.network_key not in parser:
        raise ModelError(f"model {card.name}: {config} has no {spec.network_key!r} entry (bundle.network_key)")
    try:
        network = parser.get_parsed_content(spec.network_key, instantiate=True)
    except Exception as exc:  # an arbitrary config: report, never crash the node
        raise ModelError(f"model {card.name}: {config}: cannot build {spec.network_key!r}: {exc}") from exc
    if not isinstance(network, torch.nn.Module):
        raise ModelError(f"model {card.name}: {config}: {spec.network_key!r} is a {type(network).__name__}, not a torch network")
    _load_weights(network, folder / card.weights, card)
    preprocessing = None
    if spec.preprocessing_key is not None and spec.preprocessing_key in parser:
        try:
            chain = parser.get_parsed_content(spec.preprocessing_key, instantiate=True)
        except Exception as exc:
            raise ModelError(f"model {card.name}: {config}: cannot build {spec.preprocessing_key!r}: {exc}") from exc
        preprocessing = _without_loaders(chain, card)
    return network, preprocessing


def _load_weights(network: torch.nn.Module, weights: Path, card: ModelCard) -> None:
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise ModelError(f"model {card.name}: cannot read bundle weights {weights}: {exc}") from exc
    if isinstance(state, dict):
        for key in STATE_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ModelError(f"model {card.name}: {weights} holds a {type(state).__name__}, not a state_dict")
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"model {card.name}: {weights} does not fit the bundle's network_def: {exc}") from exc


def _without_loaders(chain: Any, card: ModelCard) -> Preprocessing:
    from monai.transforms import Compose, MapTransform

    transforms = list(getattr(chain, "transforms", [chain]))
    kept = [t for t in transforms if type(t).__name__ not in LOADER_TRANSFORMS]
    dropped = [type(t).__name__ for t in transforms if type(t).__name__ in LOADER_TRANSFORMS]
    if dropped:
        log.info("model %s: bundle preprocessing without %s (the node decodes DICOM itself)", card.name, ", ".join(dropped))
    keyed = [t for t in kept if isinstance(t, MapTransform)]
    key = next(iter(keyed[0].keys)) if keyed else None
    compose = Compose(kept)

    def run(array: np.ndarray) -> torch.Tensor:
        out = compose({key: array}) if key is not None else compose(array)
        out = out[key] if key is not None else out
        return torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out, dtype=torch.float32)

    return run
