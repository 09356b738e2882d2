"""A generic, resumable training loop for MONAI/torch classifiers (binary or multiclass).

`fit` trains any network whose output is (B, 1) logits (binary) or (B, K) logits (multiclass)
on datasets that yield (x, y) or (x, y, extra): AdamW with a one-cycle schedule, a validation pass
per epoch, early stopping on the monitored metric, and checkpoints after every epoch so an
interrupted run (Ctrl-C, a killed job) continues where it stopped. Each epoch's shuffling and
random augmentation are seeded from (seed, epoch), so a resumed run follows the same path as
one that never stopped.

Checkpoints in `checkpoint_dir`: last.pt (network, optimizer, schedule, history: what a resume
needs) and best.pt (the network at the best epoch, loaded into the network when `fit` returns).
Both are written to a temporary file and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.data import DataLoader
from monai.utils import set_determinism
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from dicom_ai.train.evaluate import auroc, one_vs_rest_auroc

log = logging.getLogger(__name__)

Task = Literal["binary", "multiclass"]
Monitor = Literal["val_auroc", "val_loss"]
Augment = Callable[[torch.Tensor], torch.Tensor]
ExtraLoss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Any], torch.Tensor]

LAST = "last.pt"
BEST = "best.pt"
CHECKPOINT_FORMAT = 1
# Settings that must match for a checkpoint to be resumed: they shape the schedule or the data order.
_RESUME_KEYS = ("task", "epochs", "batch_size", "learning_rate", "weight_decay", "monitor", "seed", "steps_per_epoch")


@dataclass(frozen=True)
class FitConfig:
    """Optimiser, schedule and stopping settings; the defaults suit a small 2-D classifier."""

    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 1e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    patience: int = 4  # early stopping: epochs without improvement of `monitor`
    monitor: Monitor = "val_auroc"
    seed: int = 0
    num_threads: int = 2
    max_steps_per_epoch: int | None = None  # caps an epoch (tests, smoke runs)
    progress: bool = True  # tqdm bars; they switch themselves off when stderr is not a terminal

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"FitConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate < 0 or self.weight_decay < 0:
            raise ValueError("FitConfig.learning_rate and weight_decay must be >= 0")
        if self.monitor not in ("val_auroc", "val_loss"):
            raise ValueError(f"FitConfig.monitor must be 'val_auroc' or 'val_loss', got {self.monitor!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"FitConfig.max_steps_per_epoch must be >= 1 or None, got {self.max_steps_per_epoch}")


@dataclass
class FitResult:
    """What happened; the network passed to `fit` already holds the best epoch's weights."""

    history: list[dict[str, Any]]  # per epoch: epoch, train_loss, val_loss, val_auroc, learning_rate, seconds
    best_epoch: int
    best_metric: float | None
    stopped_early: bool
    seconds: float  # this call only
    steps: int  # optimiser steps over all runs of this checkpoint
    resumed_from_epoch: int = 0  # 0: started fresh
    checkpoint_dir: Path = field(default_factory=Path)


def fit(
    network: torch.nn.Module,
    train: Dataset,
    val: Dataset,
    *,
    task: Task,
    config: FitConfig,
    checkpoint_dir: Path,
    augment: Augment | None = None,
    extra_loss: ExtraLoss | None = None,
) -> FitResult:
    """Train `network` in place, resuming from checkpoint_dir/last.pt when it exists.

    `augment(x)` transforms each training batch; `extra_loss(network, x, y, extras)` is added to
    the classification loss, `extras` being the collated third item of the dataset (None if
    there is none). `augment` sees only x, so geometric augmentation that must move a mask with
    its image belongs in the dataset; `extra_loss` receives the augmented x. Binary tasks weight positives by negatives/positives (from `train.labels`
    if the dataset has it, else from one pass over it). Raises ValueError when last.pt belongs
    to another architecture or other settings; a KeyboardInterrupt leaves last.pt for a rerun.
    """
    if task not in ("binary", "multiclass"):
        raise ValueError(f"task must be 'binary' or 'multiclass', got {task!r}")
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _fit(network, train, val, task, config, checkpoint_dir, augment, extra_loss)
    except KeyboardInterrupt:
        log.warning("training interrupted: %s keeps the last finished epoch; rerun to resume", checkpoint_dir / LAST)
        raise
    finally:
        torch.set_num_threads(previous_threads)


def predict_probabilities(network: torch.nn.Module, dataset: Dataset, task: Task, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) over a dataset in eval mode: (N,) sigmoid for binary, (N, K) softmax for multiclass."""
    probabilities, labels, _ = _evaluate(network, dataset, task, batch_size, criterion=None)
    return probabilities, labels


# --- the loop ---------------------------------------------------------------------------------


def _fit(
    network: torch.nn.Module,
    train: Dataset,
    val: Dataset,
    task: Task,
    config: FitConfig,
    checkpoint_dir: Path,
    augment: Augment | None,
    extra_loss: ExtraLoss | None,
) -> FitResult:
    started = time.perf_counter()
    set_determinism(seed=config.seed)
    n_train = len(train)  # type: ignore[arg-type]
    if n_train == 0:
        raise ValueError("the training dataset is empty")
    drop_last = n_train > config.batch_size  # a lone last sample breaks batch-norm; keep it when it is all there is
    per_epoch = n_train // config.batch_size if drop_last else 1
    if config.max_steps_per_epoch is not None:
        per_epoch = min(per_epoch, config.max_steps_per_epoch)
    settings = {**{k: v for k, v in asdict(config).items() if k in _RESUME_KEYS}, "task": task, "steps_per_epoch": per_epoch}

    device = next(network.parameters()).device
    criterion = _criterion(task, train, device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * per_epoch, pct_start=0.15
    )

    history: list[dict[str, Any]] = []
    best_epoch, best_metric, steps, start_epoch = 0, None, 0, 1
    last_path = checkpoint_dir / LAST
    if last_path.exists():
        state = _load_checkpoint(last_path, network, settings)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        history, best_epoch, best_metric, steps = state["history"], state["best_epoch"], state["best_metric"], state["steps"]
        start_epoch = state["epoch"] + 1
        log.info("resuming from %s: epoch %d done, best %s %s at epoch %d", last_path, state["epoch"], config.monitor, best_metric, best_epoch)
    resumed_from = start_epoch - 1

    stopped_early = _should_stop(history, best_epoch, config)
    if history and (stopped_early or start_epoch > config.epochs):
        log.info("%s: training already finished at epoch %d; loading the best epoch (%d)", last_path, start_epoch - 1, best_epoch)
    epoch = start_epoch
    while epoch <= config.epochs and not stopped_early:
        timer = time.perf_counter()
        _seed_epoch(config.seed, epoch)
        loader = DataLoader(
            train,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=drop_last,
            num_workers=0,
            generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch),
        )
        network.train()
        bar = tqdm(loader, total=per_epoch, desc=f"epoch {epoch}/{config.epochs}", disable=None if config.progress else True, leave=False)
        losses = []
        for batch_index, batch in enumerate(bar):
            if batch_index >= per_epoch:
                break
            x, y, extras = _unpack(batch, device)
            if augment is not None:
                x = augment(x)
            loss = _loss(network(x), y, task, criterion)
            if extra_loss is not None:
                loss = loss + extra_loss(network, x, y, extras)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {epoch}, step {batch_index + 1}: lower FitConfig.learning_rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            steps += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        bar.close()

        _, _, val_stats = _evaluate(network, val, task, config.batch_size, criterion)
        if config.monitor == "val_auroc" and val_stats["val_auroc"] is None:
            raise ValueError("the validation set lacks a class, so val_auroc is undefined: add both classes or use monitor='val_loss'")
        record = {
            "epoch": epoch,
            "train_loss": _r(float(np.mean(losses))) if losses else None,
            **val_stats,
            "learning_rate": float(optimizer.param_groups[0]["lr"]),
            "seconds": round(time.perf_counter() - timer, 2),
        }
        history.append(record)
        metric = record[config.monitor]
        if _improved(metric, best_metric, config.monitor):
            best_epoch, best_metric = epoch, metric
            _save({"format": CHECKPOINT_FORMAT, "network": network.state_dict(), "epoch": epoch, "monitor": config.monitor, "metric": metric}, checkpoint_dir / BEST)
        _save(
            {
                "format": CHECKPOINT_FORMAT,
                "architecture": type(network).__name__,
                "settings": settings,
                "network": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(),
                "epoch": epoch,
                "best_epoch": best_epoch,
                "best_metric": best_metric,
                "history": history,
                "steps": steps,
            },
            last_path,
        )
        log.info(
            "epoch %d/%d: train_loss %s val_loss %s val_auroc %s (best %s %s at epoch %d) %.1f s",
            epoch, config.epochs, record["train_loss"], record["val_loss"], record["val_auroc"],
            config.monitor, best_metric, best_epoch, record["seconds"],
        )
        stopped_early = _should_stop(history, best_epoch, config)
        if stopped_early:
            log.info("early stop after epoch %d: %s has not improved for %d epochs", epoch, config.monitor, config.patience)
        epoch += 1

    _load_best(network, checkpoint_dir / BEST, best_epoch)
    network.eval()
    return FitResult(
        history=history,
        best_epoch=best_epoch,
        best_metric=best_metric,
        stopped_early=stopped_early,
        seconds=round(time.perf_counter() - started, 2),
        steps=steps,
        resumed_from_epoch=resumed_from,
        checkpoint_dir=checkpoint_dir,
    )


def _seed_epoch(seed: int, epoch: int) -> None:
    """Seed the global generators (augmentation, dropout) from (seed, epoch) so a resume replays the same path."""
    torch.manual_seed(seed * 100_003 + epoch)
    np.random.seed((seed * 100_003 + epoch) % 2**32)


def _should_stop(history: list[dict[str, Any]], best_epoch: int, config: FitConfig) -> bool:
    return bool(history) and history[-1]["epoch"] - best_epoch >= config.patience and history[-1]["epoch"] < config.epochs


def _improved(metric: float | None, best: float | None, monitor: Monitor) -> bool:
    if metric is None:
        return False
    if best is None:
        return True
    return metric > best if monitor == "val_auroc" else metric < best


# --- losses and evaluation ----------------------------------------------------------------------


def _criterion(task: Task, train: Dataset, device: torch.device) -> torch.nn.Module:
    """BCE with positives weighted by the class balance, or plain cross-entropy."""
    if task == "multiclass":
        return torch.nn.CrossEntropyLoss()
    given = getattr(train, "labels", None)  # saves a pass over the data when the dataset knows its labels
    labels = np.asarray(given if given is not None else [int(item[1]) for item in train]).ravel()  # type: ignore[attr-defined]
    positives = int((labels == 1).sum())
    negatives = int((labels == 0).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"the binary training set holds {positives} positives and {negatives} negatives; it needs both")
    if positives + negatives != labels.size:
        raise ValueError("binary training labels must be 0 or 1")
    weight = torch.tensor([negatives / positives], dtype=torch.float32, device=device)
    log.info("binary loss: %d positives, %d negatives, pos_weight %.3f", positives, negatives, weight.item())
    return torch.nn.BCEWithLogitsLoss(pos_weight=weight)


def _loss(logits: torch.Tensor, y: torch.Tensor, task: Task, criterion: torch.nn.Module) -> torch.Tensor:
    if task == "binary":
        if logits.ndim != 2 or logits.shape[1] != 1:
            raise ValueError(f"a binary task needs a network with one output (B, 1); it returned {tuple(logits.shape)}")
        return criterion(logits[:, 0], y.float())
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"a multiclass task needs a network with K >= 2 outputs (B, K); it returned {tuple(logits.shape)}")
    return criterion(logits, y.long())


def _unpack(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Any]:
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise ValueError("datasets for fit must yield (x, y) or (x, y, extra) tuples")
    x, y = batch[0].to(device).float(), torch.as_tensor(batch[1]).to(device)
    rest = batch[2:]
    extras = None if not rest else _to(rest[0], device) if len(rest) == 1 else tuple(_to(r, device) for r in rest)
    return x, y, extras


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _evaluate(
    network: torch.nn.Module, dataset: Dataset, task: Task, batch_size: int, criterion: torch.nn.Module | None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Probabilities, labels and (with a criterion) {val_loss, val_auroc} in one inference pass."""
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    probabilities, labels, loss_sum = [], [], 0.0
    try:
        with torch.inference_mode():
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
                x, y, _ = _unpack(batch, device)
                logits = network(x).float()
                if criterion is not None:
                    loss_sum += _loss(logits, y, task, criterion).item() * y.shape[0]
                probs = torch.sigmoid(logits[:, 0]) if task == "binary" else torch.softmax(logits, dim=1)
                probabilities.append(probs.cpu().numpy())
                labels.append(y.cpu().numpy())
    finally:
        network.train(was_training)
    if not labels:
        raise ValueError("the evaluation dataset is empty")
    p, truth = np.concatenate(probabilities), np.concatenate(labels)
    if criterion is None:
        return p, truth, {}
    area = auroc(p, truth) if task == "binary" else _macro(one_vs_rest_auroc(p, truth))
    return p, truth, {"val_loss": _r(loss_sum / truth.size), "val_auroc": _r(area)}


def _macro(areas: list[float]) -> float:
    defined = [a for a in areas if a == a]
    return float(np.mean(defined)) if defined else float("nan")


def _r(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


# --- checkpoints --------------------------------------------------------------------------------


def _save(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file, then rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_checkpoint(path: Path, network: torch.nn.Module, settings: dict[str, Any]) -> dict[str, Any]:
    """Read last.pt and load its weights, after checking it was written by this architecture and settings."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which and what to do
        raise ValueError(f"cannot read checkpoint {path} ({error}); delete it to start afresh") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a dicom-ai training checkpoint (format {CHECKPOINT_FORMAT}); delete it or use another checkpoint_dir")
    problems = _architecture_problems(network.state_dict(), state["network"])
    if problems or state.get("architecture") != type(network).__name__:
        raise ValueError(
            f"{path} was written by a different architecture ({state.get('architecture')}, not {type(network).__name__}: "
            f"{'; '.join(problems[:4]) or 'class differs'}); use another checkpoint_dir or delete the checkpoint"
        )
    changed = {k: (state["settings"].get(k), v) for k, v in settings.items() if state["settings"].get(k) != v}
    if changed:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"{path} was written with other training settings ({listed}); resume with the same settings, or delete it to start afresh")
    network.load_state_dict(state["network"])
    return state


def _architecture_problems(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [
        f"{k} has shape {tuple(found[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    return problems


def _load_best(network: torch.nn.Module, path: Path, best_epoch: int) -> None:
    if not path.exists():
        log.warning("%s is missing: the network keeps its last weights, not those of epoch %d", path, best_epoch)
        return
    best = torch.load(path, map_location="cpu", weights_only=True)
    if best.get("epoch") != best_epoch:
        log.warning("%s holds epoch %s, the history names epoch %d as best", path, best.get("epoch"), best_epoch)
    network.load_state_dict(best["network"])
