"""Count multiply-adds (MACs) the way the papers do: convolutions and linear layers only.

The published "FLOPs" of MobileNet, ShuffleNet, FasterNet and MobileNeXt are MACs of
conv + FC layers (BN, activations, pooling and additions are not counted), so that is
what we count, with forward hooks on a real forward pass at the requested resolution.
"""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int = 224, in_chans: int = 3) -> int:
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_chans, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total
