"""Seed 003's AlexNet-style network for grey input (after engmrk.com's Keras AlexNet).

Five convolutions, each followed by batch norm (96, 256, 384, 384, 256 filters), max
pooling after the first, second and fifth, then dense layers of 4096 and 1000 units, each
followed by dropout 0.5. The head (dropout + linear to K sigmoid outputs) is the shared one
of `trainables.models`.

Two departures keep it usable at any input size: convolutions are padded and pooling uses
ceil mode (the Keras original used "valid" and fails below about 200 px), and an adaptive
average pool to 2 x 2 feeds the dense layers; at the study's 256 px the Keras network also
flattened 2 x 2 x 256 = 1024 values, so the dense layers have the original sizes.
"""
from __future__ import annotations

from torch import nn

DENSE_DROPOUT = 0.5  # fixed by the study; the tuned dropout is the head's


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2),
            nn.ReLU(inplace=True), nn.BatchNorm2d(out_channels)]


def _pool() -> nn.Module:
    return nn.MaxPool2d(2, 2, ceil_mode=True)


def alexnet_style_features(in_channels: int = 1) -> nn.Sequential:
    """The convolutional part: a (B, 256, h, w) feature map (what Grad-CAM looks at)."""
    return nn.Sequential(
        *_conv(in_channels, 96, 11, stride=4), _pool(),
        *_conv(96, 256, 11), _pool(),
        *_conv(256, 384, 3), *_conv(384, 384, 3), *_conv(384, 256, 3), _pool(),
    )


def alexnet_style_dense() -> nn.Sequential:
    """Feature map -> 1000 features, the study's dense layers."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(256 * 2 * 2, 4096), nn.ReLU(inplace=True), nn.Dropout(DENSE_DROPOUT),
        nn.Linear(4096, 1000), nn.ReLU(inplace=True), nn.Dropout(DENSE_DROPOUT),
    )
