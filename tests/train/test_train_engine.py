"""The training loop: it learns, checkpoints, resumes, stops early and refuses foreign checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from monai.networks.nets import DenseNet
from torch.utils.data import Dataset

from dicom_ai.train.engine import BEST, LAST, FitConfig, fit, predict_probabilities
from dicom_ai.train.evaluate import auroc

QUICK = FitConfig(epochs=2, batch_size=8, learning_rate=1e-2, patience=5, num_threads=1, progress=False)


class Signal(Dataset):
    """Noise images; class k adds a bright square at a class-specific place (a learnable signal)."""

    def __init__(self, n: int, seed: int, classes: int = 2, spatial_dims: int = 2, size: int = 32) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % classes
        shape = (n, 1) + (size,) * spatial_dims
        self.x = torch.randn(shape, generator=generator) * 0.5
        for i, label in enumerate(self.labels.tolist()):
            if label:
                corner = 4 + 8 * (label - 1)
                region = (i, 0) + (slice(corner, corner + 10),) * spatial_dims
                self.x[region] += 2.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.labels[i])


def tiny_densenet(spatial_dims: int = 2, out_channels: int = 1, init_features: int = 4) -> DenseNet:
    torch.manual_seed(0)
    return DenseNet(
        spatial_dims=spatial_dims, in_channels=1, out_channels=out_channels,
        init_features=init_features, growth_rate=4, block_config=(1, 1), bn_size=2,
    )


def test_fit_learns_a_signal_and_writes_checkpoints(tmp_path: Path) -> None:
    network = tiny_densenet()
    untrained = auroc(*predict_probabilities(network, Signal(16, 1), "binary"))
    result = fit(network, Signal(32, 0), Signal(16, 1), task="binary", config=QUICK, checkpoint_dir=tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert set(result.history[0]) >= {"epoch", "train_loss", "val_loss", "val_auroc", "seconds"}
    assert result.history[-1]["val_auroc"] > max(0.8, untrained + 0.3)  # chance is 0.5
    assert result.steps == 8 and not result.stopped_early and result.resumed_from_epoch == 0
    assert result.best_metric == max(h["val_auroc"] for h in result.history)
    assert (tmp_path / LAST).exists() and (tmp_path / BEST).exists()
    assert not list(tmp_path.glob("*.tmp"))
    probabilities, labels = predict_probabilities(network, Signal(16, 1), "binary", batch_size=5)
    assert probabilities.shape == (16,) and labels.tolist() == [0, 1] * 8
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_fit_multiclass_3d(tmp_path: Path) -> None:
    network = tiny_densenet(spatial_dims=3, out_channels=3)
    config = FitConfig(epochs=2, batch_size=6, learning_rate=1e-2, num_threads=1, progress=False, monitor="val_loss")
    train, val = Signal(24, 0, classes=3, spatial_dims=3, size=16), Signal(12, 1, classes=3, spatial_dims=3, size=16)
    result = fit(network, train, val, task="multiclass", config=config, checkpoint_dir=tmp_path)
    assert len(result.history) == 2 and result.history[-1]["val_auroc"] > 0.5
    probabilities, _ = predict_probabilities(network, val, "multiclass")
    assert probabilities.shape == (12, 3) and torch.allclose(torch.from_numpy(probabilities).sum(1), torch.ones(12, dtype=torch.float32))


def test_an_interrupted_run_resumes_at_the_next_epoch_and_ends_where_an_uninterrupted_one_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    straight = tiny_densenet()
    fit(straight, Signal(32, 0), Signal(16, 1), task="binary", config=QUICK, checkpoint_dir=tmp_path / "straight")

    calls = {"n": 0}

    def interrupt_in_epoch_two(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 4:  # 4 steps per epoch
            raise KeyboardInterrupt
        return x

    network = tiny_densenet()
    with pytest.raises(KeyboardInterrupt):
        fit(network, Signal(32, 0), Signal(16, 1), task="binary", config=QUICK, checkpoint_dir=tmp_path / "cut", augment=interrupt_in_epoch_two)
    assert torch.load(tmp_path / "cut" / LAST, weights_only=True)["epoch"] == 1

    resumed = tiny_densenet()
    with caplog.at_level(logging.INFO, logger="dicom_ai.train.engine"):
        result = fit(resumed, Signal(32, 0), Signal(16, 1), task="binary", config=QUICK, checkpoint_dir=tmp_path / "cut")
    assert "resuming from" in caplog.text
    assert result.resumed_from_epoch == 1 and [h["epoch"] for h in result.history] == [1, 2] and result.steps == 8
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_early_stopping_when_nothing_can_improve(tmp_path: Path) -> None:
    torch.manual_seed(0)  # no batch-norm: with a learning rate of 0 nothing changes between epochs
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2, 1))
    config = FitConfig(epochs=5, batch_size=8, learning_rate=0.0, patience=1, num_threads=1, progress=False, monitor="val_loss")
    result = fit(network, Signal(16, 0), Signal(8, 1), task="binary", config=config, checkpoint_dir=tmp_path)
    assert result.stopped_early and len(result.history) == 2 and result.best_epoch == 1
    assert result.history[0]["val_loss"] == result.history[1]["val_loss"]


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    config = FitConfig(epochs=1, batch_size=8, max_steps_per_epoch=1, num_threads=1, progress=False)
    fit(tiny_densenet(), Signal(16, 0), Signal(8, 1), task="binary", config=config, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"last\.pt was written by a different architecture.*another checkpoint_dir"):
        fit(tiny_densenet(init_features=8), Signal(16, 0), Signal(8, 1), task="binary", config=config, checkpoint_dir=tmp_path)
    other = FitConfig(epochs=1, batch_size=4, max_steps_per_epoch=1, num_threads=1, progress=False)
    with pytest.raises(ValueError, match="other training settings.*batch_size 8 -> 4"):
        fit(tiny_densenet(), Signal(16, 0), Signal(8, 1), task="binary", config=other, checkpoint_dir=tmp_path)


def test_a_binary_task_needs_one_output(tmp_path: Path) -> None:
    config = FitConfig(epochs=1, batch_size=8, max_steps_per_epoch=1, num_threads=1, progress=False)
    with pytest.raises(ValueError, match=r"one output \(B, 1\).*\(8, 2\)"):
        fit(tiny_densenet(out_channels=2), Signal(16, 0), Signal(8, 1), task="binary", config=config, checkpoint_dir=tmp_path)


class WithMasks(Signal):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:  # type: ignore[override]
        return self.x[i], int(self.labels[i]), (self.x[i] > 1.0)


def test_extra_loss_gets_the_third_item_and_augment_only_sees_training_batches(tmp_path: Path) -> None:
    seen: dict[str, list[tuple[int, ...]]] = {"extra": [], "augment": []}

    def extra(network: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        seen["extra"].append(tuple(masks.shape))
        return network(x).sum() * 0.0

    def augment(x: torch.Tensor) -> torch.Tensor:
        seen["augment"].append(tuple(x.shape))
        return x.flip(-1)

    config = FitConfig(epochs=1, batch_size=8, max_steps_per_epoch=2, num_threads=1, progress=False)
    fit(tiny_densenet(), WithMasks(16, 0), WithMasks(8, 1), task="binary", config=config, checkpoint_dir=tmp_path, augment=augment, extra_loss=extra)
    assert seen["extra"] == [(8, 1, 32, 32)] * 2 and seen["augment"] == [(8, 1, 32, 32)] * 2
