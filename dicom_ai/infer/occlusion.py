"""Occlusion saliency: which parts of the image the model's score for a label depends on.

Used for zero-shot encoders, whose ONNX and TorchScript forms hide their layers from hooks (so
Grad-CAM cannot run) but can always be run forward: each cell of a grid x grid partition of the
network input is replaced by the image's mean (per channel) in turn, and the drop of the label's
logit (scaled cosine similarity, not its softmax share, which also moves with the other labels)
is that cell's saliency. Cells whose occlusion raises the score count 0. Cost: grid^2 extra
forward passes per image, batched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dicom_ai.infer.gradcam import minmax_per_image

Logits = Callable[[torch.Tensor], torch.Tensor]
CHUNK = 16  # occluded copies per forward pass


class OcclusionMaps:
    """feature_maps(batch, label) -> (B, 1, grid, grid) in [0, 1], as HeatmapMaker gives for Grad-CAM."""

    def __init__(self, logits: Logits, grid: int) -> None:
        self._logits = logits
        self.grid = grid

    def feature_maps(self, batch: torch.Tensor, class_index: int) -> torch.Tensor:
        with torch.inference_mode():
            base = self._logits(batch)[:, class_index]
            fill = batch.mean(dim=(2, 3), keepdim=True)
            rows = _edges(batch.shape[2], self.grid)
            cols = _edges(batch.shape[3], self.grid)
            cells = [(r, c) for r in range(self.grid) for c in range(self.grid)]
            drops = torch.zeros(batch.shape[0], self.grid * self.grid)
            for start in range(0, len(cells), max(1, CHUNK // batch.shape[0])):
                chosen = cells[start : start + max(1, CHUNK // batch.shape[0])]
                copies = batch.repeat(len(chosen), 1, 1, 1)
                for k, (r, c) in enumerate(chosen):
                    part = copies[k * batch.shape[0] : (k + 1) * batch.shape[0]]
                    part[:, :, rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = fill
                scores = self._logits(copies)[:, class_index].view(len(chosen), batch.shape[0])
                for k, (r, c) in enumerate(chosen):
                    drops[:, r * self.grid + c] = (base - scores[k]).clamp_min(0)
        maps = drops.view(batch.shape[0], 1, self.grid, self.grid)
        return minmax_per_image(maps)


def _edges(size: int, grid: int) -> list[int]:
    return [round(i * size / grid) for i in range(grid + 1)]
