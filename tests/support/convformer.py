"""The model issue 18 crashed on: a conv stem and transformer blocks with ``nn.MultiheadAttention``
and a depthwise convolution in the MLP (random weights). Used by the cuda executor's tests and
the GPU benchmark's crash check."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Block(nn.Module):
    """Pre-norm attention, then an MLP with a depthwise 1-D convolution between its layers."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * 2)
        self.dw = nn.Conv1d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2)
        self.fc2 = nn.Linear(dim * 2, dim)

    def forward(self, x: Any) -> Any:
        h = self.norm1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + a
        h = self.fc1(self.norm2(x))
        h = self.dw(h.transpose(1, 2)).transpose(1, 2)
        return x + self.fc2(nn.functional.gelu(h))


class ConvFormer(nn.Module):
    """[N, 3, 32, 32] -> [N, 10]: a 4x4 patch conv, ``depth`` blocks, mean pool, linear head."""

    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 4, stride=4), nn.BatchNorm2d(dim), nn.GELU())
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Any) -> Any:
        x = self.stem(x).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


def convformer(seed: int = 0) -> ConvFormer:
    """The model in eval mode with seeded random weights (and non-trivial batch-norm stats)."""
    torch.manual_seed(seed)
    model = ConvFormer()
    with torch.no_grad():
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    return model.eval()
