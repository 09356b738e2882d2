"""Grad-CAM: the hottest region is 1 (not 0, MONAI's default), and maps land on the source grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dicom_ai.infer.card import ModelError
from dicom_ai.infer.gradcam import HeatmapMaker, minmax_per_image, upsample


def brightness_network() -> nn.Module:
    """logit = mean of the image: Grad-CAM of its only feature map is the image itself."""
    features = nn.Conv2d(1, 1, kernel_size=1, bias=False)
    head = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        features.weight.fill_(1.0)
        head.weight.fill_(1.0)
    return nn.Sequential(
        nn.Sequential(features),  # named "0": the target layer
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        head,
    )


def test_minmax_makes_the_hottest_point_one_per_image() -> None:
    maps = torch.tensor([[[[0.0, 2.0], [4.0, 8.0]]], [[[3.0, 3.0], [3.0, 3.0]]]])
    scaled = minmax_per_image(maps)
    assert scaled[0].flatten().tolist() == [0.0, 0.25, 0.5, 1.0]
    assert scaled[1].flatten().tolist() == [0.0] * 4  # a flat map has no hot spot


def test_heatmap_points_at_the_bright_spot_on_the_source_grid() -> None:
    maker = HeatmapMaker(brightness_network(), "0")
    batch = torch.zeros(2, 1, 32, 32)
    batch[0, 0, 4:8, 20:24] = 1.0  # top right
    batch[1, 0, 24:28, 2:6] = 1.0  # bottom left
    heatmaps = maker.heatmaps(batch, class_index=0, shapes=[(320, 160), (64, 64)])
    assert [h.shape for h in heatmaps] == [(320, 160), (64, 64)]
    for heatmap in heatmaps:
        assert heatmap.dtype == np.float32
        assert heatmap.min() == 0.0 and heatmap.max() == 1.0
    first = np.unravel_index(np.argmax(heatmaps[0]), heatmaps[0].shape)
    assert 40 <= first[0] <= 80 and 100 <= first[1] <= 120  # rows x10, columns x5 of the 32x32 input
    assert heatmaps[0][300, 10] < 0.05  # cold far from the spot
    second = np.unravel_index(np.argmax(heatmaps[1]), heatmaps[1].shape)
    assert 48 <= second[0] <= 56 and 4 <= second[1] <= 12


def test_works_inside_inference_mode() -> None:
    maker = HeatmapMaker(brightness_network(), "0")
    with torch.inference_mode():
        batch = torch.rand(1, 1, 16, 16)
        [heatmap] = maker.heatmaps(batch, class_index=0, shapes=[(16, 16)])
    assert heatmap.max() == pytest.approx(1.0, abs=1e-3)


def test_unknown_layer_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="'features.denseblock9' is not a module"):
        HeatmapMaker(brightness_network(), "features.denseblock9")


def test_shapes_must_match_the_batch() -> None:
    maker = HeatmapMaker(brightness_network(), "0")
    with pytest.raises(ValueError, match="2 images but 1 target shapes"):
        maker.heatmaps(torch.rand(2, 1, 8, 8), class_index=0, shapes=[(8, 8)])


def test_upsample_spans_exactly_zero_to_one() -> None:
    out = upsample(torch.tensor([[[[0.0, 0.2], [0.1, 0.6]]]]), (5, 7))
    assert out.shape == (5, 7) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.unravel_index(np.argmax(out), out.shape) == (4, 6)


def test_a_layer_followed_by_an_inplace_relu_works() -> None:
    from monai.networks.nets import DenseNet

    network = DenseNet(spatial_dims=2, in_channels=1, out_channels=1, init_features=4, growth_rate=4, block_config=(1, 1), bn_size=2)
    maker = HeatmapMaker(network.eval(), "features.norm5")  # DenseNet's class_layers.relu is in-place
    [heatmap] = maker.heatmaps(torch.rand(1, 1, 64, 64), class_index=0, shapes=[(64, 64)])
    assert heatmap.shape == (64, 64)
