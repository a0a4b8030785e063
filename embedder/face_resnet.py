"""The face backbone: dlib's 29-layer face ResNet in plain torch, RGB (N, 3, 150, 150) -> (N, 128).

Davis King's ``dlib_face_recognition_resnet_model_v1`` (CC0): a ResNet-34 with layers removed and
half the filters, trained on about 3 million faces (LFW 99.38% in dlib's write-up). The layout
follows dlib's ``dnn_face_recognition_ex`` network, layer for layer, so its weights load as they are
(``embedder.dlib_format`` reads them, ``benchmarks/convert_dlib_face.py`` writes the model file):

- stem: conv 7x7 / 2 (no padding), per-channel affine (dlib's frozen batch norm), ReLU, max-pool 3 / 2;
- residual blocks ``relu(x + affine(conv(relu(affine(conv(x))))))`` at 32, 64, 128, 256 and 256
  filters; the first block of each later stage convolves with stride 2 and no padding, and adds
  its output to a 2x2 average pool of ``x``. Where the two differ in channels or size, the sum
  takes the larger shape with zeros filling the missing part (top-left aligned), as dlib's add does;
- global average pool, then a 256 -> 128 linear map without bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oneshot.embedder.backbones import register_backbone

#: (filters, blocks, first block downsamples) of each stage, input side first.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
INPUT_SIZE = 150


class Affine(nn.Module):
    """Per-channel ``gamma * x + beta`` (batch norm folded at training's end)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[None, :, None, None] + self.beta[None, :, None, None]


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` for (N, C, H, W) tensors of different C, H, W: zeros fill the smaller one (top-left aligned)."""
    channels, height, width = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, width - x.shape[3], 0, height - x.shape[2], 0, channels - x.shape[1]))

    return grow(a) + grow(b)


class FaceBlock(nn.Module):
    """One residual block; ``down`` convolves with stride 2 and pools the shortcut."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        stride, padding = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=padding)
        self.affine1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.affine2 = Affine(cout)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2) if self.down else x
        return F.relu(add_padded(body, shortcut))


class FaceResNet29(nn.Module):
    """dlib's face ResNet: float32 (N, 3, 150, 150) RGB, ``(pixel - mean) / 256`` -> (N, 128)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.stem_conv = nn.Conv2d(in_channels, 32, 7, stride=2)
        self.stem_affine = Affine(32)
        blocks, cin = [], 32
        for filters, count, down in STAGES:
            for index in range(count):
                blocks.append(FaceBlock(cin, filters, down and index == 0))
                cin = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)
        self.feature_dim = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem_affine(self.stem_conv(x))), 3, 2)
        return self.fc(self.blocks(x).mean(dim=(2, 3)))


register_backbone("face-resnet29")(FaceResNet29)
