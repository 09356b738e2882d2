"""Train one binary classifier and write it as a model folder the node can load.

Shared by every recipe (`dicom-ai train demo ...` on phantoms, `dicom-ai train dataset ...` on a
seed dataset's files): the engine fits on the train split with early stopping on validation
AUROC; the operating threshold is chosen on validation (Youden's J); the held-out test split
gives AUROC with a bootstrap CI, sensitivity/specificity at that threshold and calibration;
where finding masks exist, Grad-CAM's layer is chosen on validation positives and its pointing
game measured on test positives. The card records all of it, and how the model was made.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import monai
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dicom_ai.infer.card import (
    CARD_FILENAME,
    ArchitectureSpec,
    CodeSpec,
    GradCamSpec,
    InputSpec,
    LabelSpec,
    ModelCard,
    ModelError,
    ReportTermsSpec,
    dump_card,
)
from dicom_ai.infer.gradcam import HeatmapMaker
from dicom_ai.infer.reference import build_reference
from dicom_ai.train.engine import FitConfig, FitResult, fit, predict_probabilities
from dicom_ai.train.evaluate import binary_report, pointing_game, youden_threshold

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.pt"
README_FILE = "README.md"
CHECKPOINTS = "checkpoints"
SPLITS = ("train", "val", "test")
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"


@dataclass(frozen=True)
class ClassifierPlan:
    """What to build: the card's fixed parts, the network, and how to explain it."""

    name: str
    version: str
    display_name: str
    label: str
    code: CodeSpec
    input: InputSpec
    architecture: ArchitectureSpec
    intended_use: str
    gate: dict[str, list[str]] = field(default_factory=dict)
    select: dict[str, list[str]] = field(default_factory=dict)
    gradcam_candidates: tuple[str, ...] = ()
    gradcam_slices: int = 3
    pointing_weight: float = 0.0  # > 0 adds the pointing loss (DenseNet only; needs masks)
    pointing_tolerance_px: int = 8  # at the network input size
    shift_px: int = 8  # random translation (augmentation), 0 = none
    flip: bool = True  # random left-right flips
    manufacturer: str = "dicom-ai"
    not_for_clinical_use: bool = True
    report_terms: ReportTermsSpec | None = None  # how a final report states the label (the validation loop)


@dataclass
class TensorSplit:
    """One split, preprocessed: x (N, C, *size), y (N,) 0/1, masks (N, *size) bool or None."""

    x: torch.Tensor
    y: torch.Tensor
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0] or (self.masks is not None and self.masks.shape[0] != self.x.shape[0]):
            raise ValueError(f"split sizes differ: x {tuple(self.x.shape)}, y {tuple(self.y.shape)}")

    def counts(self) -> dict[str, int]:
        return {"images": int(self.y.numel()), "positives": int(self.y.sum().item())}


class _SplitDataset(Dataset):
    """Yields (x, y) or (x, y, mask); with `augment`, random shifts and flips moving masks along."""

    def __init__(self, split: TensorSplit, plan: ClassifierPlan, augment: bool) -> None:
        self.split, self.plan, self.augment = split, plan, augment
        self.labels = split.y.long().tolist()

    def __len__(self) -> int:
        return int(self.split.x.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        x, y = self.split.x[index], self.split.y[index].long()
        mask = self.split.masks[index] if self.split.masks is not None else None
        if self.augment:
            x, mask = _shift_and_flip(x, mask, self.plan.shift_px, self.plan.flip)
        return (x, y) if mask is None else (x, y, mask)


def train_classifier(
    plan: ClassifierPlan,
    splits: dict[str, TensorSplit],
    out_dir: Path,
    config: FitConfig,
    record: dict[str, Any],
    *,
    keep_checkpoints: bool = False,
) -> ModelCard:
    """Fit, evaluate and write `out_dir` (model.pt, model.yaml, README.md); returns the card.

    `record` (data, generator or dataset, seed, notes) goes into the card's training section,
    completed with counts, settings, times and software versions.
    """
    missing = [name for name in SPLITS if name not in splits]
    if missing:
        raise ValueError(f"train_classifier needs splits {', '.join(SPLITS)}; missing {', '.join(missing)}")
    for name in SPLITS:
        counts = splits[name].counts()
        if counts["positives"] in (0, counts["images"]):
            raise ValueError(f"the {name} split has {counts['positives']} positive(s) of {counts['images']}: "
                             "both classes are needed to train and measure a classifier")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    network = _network(plan)
    parameters = sum(p.numel() for p in network.parameters())
    checkpoints = out_dir / CHECKPOINTS
    trained: torch.nn.Module = network
    extra_loss = None
    if plan.pointing_weight > 0 and splits["train"].masks is not None:
        trained = CamCapture(network)
        extra_loss = _pointing_extra_loss(plan.pointing_weight)
    result = fit(
        trained,
        _SplitDataset(splits["train"], plan, augment=True),
        _SplitDataset(splits["val"], plan, augment=False),
        task="binary",
        config=config,
        checkpoint_dir=checkpoints,
        extra_loss=extra_loss,
    )
    network.eval()
    fit_s = time.perf_counter() - started

    val_p, val_y = predict_probabilities(network, _SplitDataset(splits["val"], plan, augment=False), "binary")
    threshold = round(youden_threshold(val_p, val_y), 4)
    test_p, test_y = predict_probabilities(network, _SplitDataset(splits["test"], plan, augment=False), "binary")
    metrics: dict[str, Any] = {
        "split": "test",
        "threshold_chosen_on": f"validation split ({val_y.size} {'volumes' if plan.input.dims == 3 else 'images'}), maximising Youden's J",
        **binary_report(test_p, test_y, threshold, seed=config.seed),
    }
    layer = _explain(plan, network, splits, metrics)
    unit = "volumes" if plan.input.dims == 3 else "images"
    reference = build_reference({plan.label: [float(p) for p in test_p]}, [],
                                source=f"test split scores ({test_y.size} {unit}), preprocessed tensors: no input "
                                       "properties (`dicom-ai evaluate MODEL --dataset ROOT --set-reference` adds them)",
                                command=str(record.get("command", "dicom-ai train")))
    card = ModelCard(
        name=plan.name,
        version=plan.version,
        display_name=plan.display_name,
        manufacturer=plan.manufacturer,
        format="state_dict",
        weights=WEIGHTS_FILE,
        architecture=plan.architecture,
        gate=plan.gate,
        select=plan.select,
        input=plan.input,
        output="sigmoid",
        labels=[LabelSpec(name=plan.label, code=plan.code, threshold=threshold, report_terms=plan.report_terms)],
        gradcam=GradCamSpec(target_layer=layer, slices=plan.gradcam_slices) if layer else None,
        intended_use=plan.intended_use,
        not_for_clinical_use=plan.not_for_clinical_use,
        training=_training_record(plan, splits, config, result, record, parameters, fit_s, time.perf_counter() - started),
        metrics=metrics,
        reference=reference,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out_dir / WEIGHTS_FILE)
    dump_card(card, out_dir / CARD_FILENAME)
    (out_dir / README_FILE).write_text(readme(card), encoding="utf-8")
    if not keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    log.info("wrote %s: test AUROC %s, sensitivity %s, specificity %s at %s; pointing game %s",
             out_dir, metrics.get("auroc"), metrics.get("sensitivity"), metrics.get("specificity"), threshold,
             metrics.get("pointing_game", {}).get("hit_rate"))
    return card


def _network(plan: ClassifierPlan) -> torch.nn.Module:
    import monai.networks.nets as nets

    return getattr(nets, plan.architecture.name)(**plan.architecture.kwargs)


def _training_record(
    plan: ClassifierPlan,
    splits: dict[str, TensorSplit],
    config: FitConfig,
    result: FitResult,
    record: dict[str, Any],
    parameters: int,
    fit_s: float,
    total_s: float,
) -> dict[str, Any]:
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    augmentation = []
    if plan.shift_px:
        augmentation.append(f"random shifts up to {plan.shift_px} px")
    if plan.flip:
        augmentation.append("left-right flips")
    return {
        **record,
        "counts": {name: splits[name].counts() for name in SPLITS},
        "epochs_run": len(result.history),
        "epochs_max": config.epochs,
        "best_epoch": result.best_epoch,
        "best_val_auroc": best.get("val_auroc"),
        "stopped_early": result.stopped_early,
        "steps": result.steps,
        "batch_size": config.batch_size,
        "optimizer": f"AdamW (weight decay {config.weight_decay:g}), one-cycle learning rate up to {config.learning_rate:g}",
        "loss": "binary cross-entropy on logits, positives weighted by the class ratio"
        + (f" + {plan.pointing_weight:g} x pointing loss (share of the class activation map on the finding mask; "
           "the pointing game therefore measures a property the training asked for)" if plan.pointing_weight > 0 else ""),
        "augmentation": ", ".join(augmentation) or "none",
        "early_stopping": f"patience {config.patience} epochs on {config.monitor}",
        "parameters": parameters,
        "threads": config.num_threads,
        "fit_s": round(fit_s, 1),
        "time_s": round(total_s, 1),
        "software": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__},
    }


# --- explainability -----------------------------------------------------------------------------


def _explain(plan: ClassifierPlan, network: torch.nn.Module, splits: dict[str, TensorSplit], metrics: dict[str, Any]) -> str | None:
    """Pick the Grad-CAM layer on validation positives; score it on test positives (pointing game)."""
    candidates = list(plan.gradcam_candidates)
    if not candidates:
        return None
    val, test = splits["val"], splits["test"]
    if val.masks is None or test.masks is None:
        metrics["pointing_game"] = {"not_measured": "the data have no finding masks"}
        return candidates[0]
    scores = {layer: pointing_scores(network, layer, val, plan.pointing_tolerance_px)["hit_rate"] or 0.0 for layer in candidates}
    layer = max(candidates, key=lambda name: scores[name])  # the first listed wins ties
    metrics["pointing_game"] = {
        **pointing_scores(network, layer, test, plan.pointing_tolerance_px),
        "split": "test positives",
        "gradcam_layer": layer,
        "layer_chosen_on_validation": {name: round(value, 4) for name, value in scores.items()},
    }
    return layer


def pointing_scores(network: torch.nn.Module, layer: str, split: TensorSplit, tolerance_px: int, limit: int = 200) -> dict[str, Any]:
    """Pointing game of Grad-CAM on `layer` over (up to `limit`) positives of a split, at input size."""
    assert split.masks is not None
    positives = torch.nonzero(split.y > 0.5).flatten()[:limit]
    maker = HeatmapMaker(network, layer)
    maps: list[np.ndarray] = []
    for chunk in positives.split(16):
        feature_maps = maker.feature_maps(split.x[chunk], 0)
        size = tuple(split.x.shape[2:])
        mode = "bilinear" if len(size) == 2 else "trilinear"
        maps += list(F.interpolate(feature_maps.float(), size=size, mode=mode, align_corners=False)[:, 0].numpy())
    masks = [split.masks[i].numpy() for i in positives.tolist()]
    return pointing_game(maps, masks, tolerance_px=tolerance_px)


def class_activation(network: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B,), class activation map (B, *spatial)) of a one-output MONAI DenseNet (2-D or 3-D).

    The head is ReLU -> global average pool -> linear, so applying the linear layer at every
    position and averaging afterwards gives the network's own logit plus where it comes from.
    """
    body, weight, bias = densenet_head(network)
    features = F.relu(body(inputs))
    cam = torch.einsum("bc...,c->b...", features, weight[0]) + bias[0]
    return cam.flatten(1).mean(dim=1), cam


def densenet_head(network: torch.nn.Module) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(`features`, weight and bias of the linear `class_layers.out`) of a MONAI DenseNet.

    Looked up by name (a Module attribute is typed `Tensor | Module`), and the head's type is
    checked, so another network fails here with its name instead of deep inside an einsum.
    """
    features = network.get_submodule("features")
    head = network.get_submodule("class_layers.out")
    if not isinstance(head, torch.nn.Linear) or not isinstance(head.bias, torch.Tensor):
        raise ModelError(f"class activation needs a MONAI DenseNet whose class_layers.out is a linear layer with a bias, "
                         f"not {type(head).__name__}")
    return features, head.weight, head.bias


class CamCapture(torch.nn.Module):
    """A MONAI DenseNet whose forward also keeps its class activation map, for the pointing loss.

    Same parameters, same logits (the head is linear after pooling), one forward pass: the loss
    reads `last_cam` instead of running the network a second time.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.last_cam: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, self.last_cam = class_activation(self.network, x)
        return logits[:, None]


def _pointing_extra_loss(weight: float):  # type: ignore[no-untyped-def]
    def extra(network: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, masks: Any) -> torch.Tensor:
        cam = network.last_cam if isinstance(network, CamCapture) and network.last_cam is not None else class_activation(network, x)[1]
        return weight * pointing_loss(cam, masks, y)

    return extra


def pointing_loss(cam: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """On positives: -log of the share of the (softmax) activation map that lies on the finding."""
    positive = labels > 0.5
    if not positive.any():
        return cam.sum() * 0.0
    pool = F.adaptive_max_pool2d if cam.ndim == 3 else F.adaptive_max_pool3d
    target = pool(masks[positive].float()[:, None], cam.shape[1:]).flatten(1) > 0
    log_share = F.log_softmax(cam[positive].flatten(1), dim=1).masked_fill(~target, float("-inf"))
    has_target = target.any(dim=1)
    if not has_target.any():
        return cam.sum() * 0.0
    return -torch.logsumexp(log_share[has_target], dim=1).mean()


def _shift_and_flip(x: torch.Tensor, mask: torch.Tensor | None, shift: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random in-plane translation (reflect padding) and left-right flip; the mask moves along.

    Uses torch's global generator, which the engine seeds per epoch: a resumed run repeats it.
    """
    stacked = x if mask is None else torch.cat([x, mask[None].to(x.dtype)])
    if shift > 0:
        rows, columns = stacked.shape[-2:]
        dy, dx = (int(v) for v in torch.randint(0, 2 * shift + 1, (2,)))
        padded = F.pad(stacked[None] if stacked.ndim == 3 else stacked, (shift, shift, shift, shift), mode="reflect")
        padded = padded[0] if stacked.ndim == 3 else padded
        stacked = padded[..., dy : dy + rows, dx : dx + columns]
    if flip and bool(torch.rand(()) < 0.5):
        stacked = stacked.flip(-1)
    if mask is None:
        return stacked.contiguous(), None
    return stacked[:-1].contiguous(), stacked[-1] > 0.5


# --- human-readable card ------------------------------------------------------------------------


_Field = TypeVar("_Field")


def card_field(value: _Field | None, card: ModelCard, field: str) -> _Field:
    """A field the README describes, which the card schema leaves optional; a trained card has it."""
    if value is None:
        raise ModelError(f"{card.name}: the card has no {field}, which the README describes; set it in {CARD_FILENAME}")
    return value


def readme(card: ModelCard) -> str:
    """The model card in prose: what it is, how it was made, held-out results, limits."""
    m, t = card.metrics, card.training
    label = card.labels[0]
    code = card_field(label.code, card, "labels[0].code")
    unit = "volumes" if card.input.dims == 3 else "images"
    counts = "; ".join(f"{k} {v['images']} ({v['positives']} with {label.name.lower()})" for k, v in t.get("counts", {}).items())
    kwargs = ", ".join(f"{k}={v}" for k, v in (card.architecture.kwargs.items() if card.architecture else []))
    pointing = m.get("pointing_game", {})
    if pointing.get("hit_rate") is not None:
        pointing_line = (f"- Grad-CAM pointing game on `{pointing['gradcam_layer']}`: the heatmap's maximum lies within "
                         f"{pointing['tolerance_px']} px (at the network input) of the finding on {pointing['hit_rate']:.0%} of "
                         f"{pointing['n']} held-out positives (a random point: {pointing['chance']:.0%}).")
    else:
        pointing_line = f"- Grad-CAM pointing game: not measured ({pointing.get('not_measured', 'no heatmap layer')})."
    ci = m.get("auroc_95ci_bootstrap") or [None, None]
    confusion = m.get("confusion", {})
    window = f", window {card.input.window[0]:g}/{card.input.window[1]:g}" if card.input.window else ""
    return f"""# {card.display_name} — `{card.name}` {card.version}

**{card.intended_use}**

## What it is
- Gate: {card.gate or 'none'}; image selection: {card.select or 'all images of the accepted series'}.
- Input: {'each series as a volume' if card.input.dims == 3 else 'each displayed image'}, resized to {'x'.join(map(str, card.input.size))},
  {card.input.channels} channel(s), {card.input.normalize} normalisation{window}.
- Network: `monai.networks.nets.{card.architecture.name if card.architecture else '?'}({kwargs})`, {t.get('parameters', 0):,} parameters.
- Output: sigmoid probability of **{label.name}** ({code.scheme} {code.value} "{code.meaning}");
  present when >= {label.threshold} (chosen on the validation split by Youden's J).
- Heatmap: Grad-CAM on `{card.gradcam.target_layer if card.gradcam else 'none'}`{', drawn on the most salient slices' if card.input.dims == 3 else ''}.

## How it was made
- Data: {t.get('data', '?')}; {counts}.
- Seed {t.get('seed')}; {t.get('epochs_run')} of at most {t.get('epochs_max')} epochs (best {t.get('best_epoch')}, {t.get('early_stopping')}),
  {t.get('steps')} steps of {t.get('batch_size')}; {t.get('optimizer')}; augmentation: {t.get('augmentation')}.
- Loss: {t.get('loss')}.
- {t.get('threads')} CPU threads, {t.get('time_s')} s in all ({t.get('fit_s')} s fitting).
- Reproduce: `{t.get('command', 'dicom-ai train ...')}`.

## Held-out test results
- AUROC {m.get('auroc')} (bootstrap 95% CI {ci[0]}-{ci[1]}) on {m.get('images')} {unit} ({m.get('positives')} positive).
- At threshold {m.get('threshold')}: sensitivity {m.get('sensitivity')}, specificity {m.get('specificity')}, accuracy {m.get('accuracy')}
  (TP {confusion.get('tp')}, FN {confusion.get('fn')}, TN {confusion.get('tn')}, FP {confusion.get('fp')}).
- Calibration: Brier score {m.get('calibration', {}).get('brier')}, expected calibration error {m.get('calibration', {}).get('ece')}.
{pointing_line}

## Limits
{t.get('limits', '- Measured only on the data above; validate on your own patients before any use.')}
- Not a medical device. Do not use it to make or change any clinical decision.
"""


def mask_at(mask: np.ndarray, size: tuple[int, ...]) -> torch.Tensor:
    """A finding mask at the network input size; max-pooled so small findings survive shrinking."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if tuple(tensor.shape[2:]) == tuple(size):
        return tensor[0, 0] > 0
    if all(a >= b for a, b in zip(tensor.shape[2:], size)):
        pool = F.adaptive_max_pool3d if len(size) == 3 else F.adaptive_max_pool2d
        return pool(tensor, tuple(size))[0, 0] > 0
    mode = "trilinear" if len(size) == 3 else "bilinear"
    return F.interpolate(tensor, size=tuple(size), mode=mode, align_corners=False)[0, 0] > 0.25
