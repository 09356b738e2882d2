"""The models an admin installed: one sub-folder of models_dir per model, each with a model.yaml.

Cards are read when the registry is made (cheap, and rules can be checked against them); weights
are loaded on first use, once, and kept. A folder that is broken in any way is listed in
`problems()` with its error and never takes the node down: the other models keep working.
`models_dir/examples/` holds example cards to copy (e.g. CheXNet's, without weights) and is never
read as a model; a card whose thresholds are still `site` is listed as a problem until set.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from dicom_ai.domain import Reference
from dicom_ai.infer.card import (
    CARD_FILENAME,
    SITE_THRESHOLD,
    CardError,
    ModelCard,
    ModelError,
    MonitoringSpec,
    describe_errors,
    load_card,
)

if TYPE_CHECKING:  # torch and MONAI come with the runner: only loading a model needs them, not reading cards
    from dicom_ai.infer.runner import LoadedModel, ModelFront

log = logging.getLogger(__name__)

EXAMPLES_FOLDER = "examples"  # example cards to copy into a model folder; never loaded


def model_folders(models_dir: Path) -> list[Path]:
    """The sub-folders of models_dir that are meant to be models (not hidden, _private or examples/)."""
    return sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")) and p.name != EXAMPLES_FOLDER)


@dataclass(frozen=True)
class MonitoringView:
    """What evaluating or exporting a model's results needs from its card: the labels' operating
    thresholds and the drift reference (variable -> reference; empty when the card has none)."""

    thresholds: dict[str, float]
    references: dict[str, Reference]


def monitoring_view(models_dir: Path, model: str) -> MonitoringView | None:
    """The thresholds and drift reference of the card named `model` (None when no card has that name).

    Only those parts are validated: checking the architecture needs torch and MONAI, seconds that
    `dicom-ai evaluate` and `export` should not pay for reading two sections. Raises CardError."""
    if not models_dir.is_dir():
        return None
    for folder in model_folders(models_dir):
        path = folder / CARD_FILENAME
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # a broken folder is the registry's problem to report, not this model's
        if not isinstance(data, dict) or data.get("name") != model:
            continue
        try:
            spec = MonitoringSpec.model_validate({key: data[key] for key in ("labels", "reference") if data.get(key)})
        except ValidationError as exc:
            raise CardError(f"{path}: {describe_errors(exc)}") from None
        return MonitoringView({label.name: label.threshold for label in spec.labels if isinstance(label.threshold, float)},
                              spec.reference.references() if spec.reference is not None else {})
    return None


class ModelRegistry:
    """Model cards by name, and their loaded models on demand (thread-safe)."""

    def __init__(self, models_dir: Path, *, fast_path: bool = True, load: bool = True) -> None:
        if not models_dir.is_dir():
            raise ModelError(f"models folder {models_dir} does not exist (set models_dir to the folder holding <name>/{CARD_FILENAME})")
        self.models_dir = models_dir
        self.fast_path = fast_path
        self.load = load  # False: cards only (no torch or MONAI import); get() refuses
        self._cards: dict[str, tuple[Path, ModelCard]] = {}
        self._problems: dict[str, str] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._fronts: dict[str, ModelFront] = {}
        self._lock = threading.Lock()
        self._scan()

    def _scan(self) -> None:
        for folder in model_folders(self.models_dir):
            card_path = folder / CARD_FILENAME
            if not card_path.is_file():
                self._problem(folder.name, f"{folder}: no {CARD_FILENAME} in this folder")
                continue
            try:
                card = load_card(card_path, check_architecture=self.load)
            except ModelError as exc:
                self._problem(folder.name, str(exc))
                continue
            if card.name in self._cards:
                other = self._cards[card.name][0]
                self._problem(folder.name, f"{card_path}: name {card.name!r} is already used by {other / CARD_FILENAME}")
                continue
            if not (folder / card.weights).is_file():
                self._problem(folder.name, f"{card_path}: weights file {folder / card.weights} not found")
                continue
            if card.pending_thresholds:
                self._problem(folder.name, f"{card_path}: not ready: threshold {SITE_THRESHOLD!r} for "
                              f"{', '.join(card.pending_thresholds)}; choose each operating point on the site's validation "
                              f"data and write it in (dicom-ai models check {folder} checks everything else)")
                continue
            self._cards[card.name] = (folder, card)
        log.info("models in %s: %s", self.models_dir, ", ".join(self._cards) or "none")

    def _problem(self, folder: str, message: str) -> None:
        log.error("model folder skipped: %s", message)
        self._problems[folder] = message

    def names(self) -> list[str]:
        """Names of the models whose cards are valid, sorted."""
        return sorted(self._cards)

    def cards(self) -> dict[str, ModelCard]:
        return {name: card for name, (_, card) in sorted(self._cards.items())}

    def problems(self) -> dict[str, str]:
        """Folder name -> what is wrong with it (bad card, missing weights, failed load)."""
        with self._lock:
            return dict(self._problems)

    def loaded(self, name: str) -> LoadedModel | None:
        """The model if it is loaded already (None: not yet, or its load failed); never loads it."""
        with self._lock:
            return self._loaded.get(name)

    def folder(self, name: str) -> Path:
        """Where a model lives (for documentation links and the trainer)."""
        return self._entry(name)[0]

    def get(self, name: str) -> LoadedModel:
        """The loaded model `name`; loaded on first call, then shared. Raises ModelError."""
        from dicom_ai.infer.runner import LoadedModel

        folder, card = self._entry(name)
        if not self.load:
            raise ModelError(f"model {name}: this registry reads cards only (load=False); the pipeline workers load models")
        with self._lock:
            model = self._loaded.get(name)
            if model is not None:
                return model
            try:
                model = LoadedModel.load(folder, card, fast_path=self.fast_path)
            except ModelError as exc:
                self._problems[folder.name] = str(exc)
                log.error("model %s failed to load: %s", name, exc)
                raise
            except Exception as exc:  # an arbitrary network's constructor or weights: never crash the node
                message = f"model {name}: unexpected error while loading from {folder}: {exc!r}"
                self._problems[folder.name] = message
                log.exception("model %s failed to load", name)
                raise ModelError(message) from exc
            self._problems.pop(folder.name, None)
            self._loaded[name] = model
            log.info("model %s %s loaded from %s on %s (device UID %s)", name, card.version, folder, model.backend, model.info.device_uid)
            return model

    def front(self, name: str) -> ModelFront:
        """The card side of model `name` (gate, selection, inputs, results) without its weights in
        memory, for a node whose models run elsewhere (Ray); the loaded model when it is here. Raises ModelError."""
        folder, card = self._entry(name)
        with self._lock:
            front = self._loaded.get(name) or self._fronts.get(name)
            if front is None:
                from dicom_ai.infer.runner import ModelFront

                try:
                    front = ModelFront.from_folder(folder, card)
                except ModelError:
                    raise
                except Exception as exc:  # a bundle's preprocessing runs its own code
                    raise ModelError(f"model {name}: unexpected error while reading {folder}: {exc!r}") from exc
                self._fronts[name] = front
            return front

    def _entry(self, name: str) -> tuple[Path, ModelCard]:
        if name in self._cards:
            return self._cards[name]
        known = ", ".join(self.names()) or "none"
        hint = f"; folder {name} has a problem: {self._problems[name]}" if name in self._problems else ""
        raise ModelError(f"no usable model named {name!r} in {self.models_dir} (available: {known}){hint}")
