"""MobileNet V2 (Sandler et al., arXiv:1801.04381) at widths 1.4 / 1.0 / 0.75 / 0.5 / 0.35.

A 3x3 stride-2 stem, 17 inverted-residual bottlenecks (1x1 expand -> 3x3 depthwise -> 1x1
linear projection, residual when the shape is unchanged), a 1x1 conv to 1280 channels,
global average pool and one FC layer (paper Table 2).

Key layout is torchvision's (``features.N.conv.*``, ``classifier.1``), so torchvision's
checkpoint loads as is and 1.0 has torchvision's exact 3,504,872 parameters.
``remap_state_dict`` also accepts timm's efficientnet-builder layout (``conv_stem``,
``blocks.i.j.conv_pw`` ...), the only published PyTorch weights for 1.4 and 0.5.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ._init import init_reference_weights
from ._layers import make_divisible as _make_divisible
from ._registry import register_model

__all__ = ["ConvBNReLU6", "InvertedResidual", "MobileNetV2", "mobilenet_v2_140",
           "mobilenet_v2_100", "mobilenet_v2_075", "mobilenet_v2_050", "mobilenet_v2_035",
           "remap_state_dict"]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) -> BN -> ReLU6, as a Sequential so keys are ``.0`` / ``.1`` (torchvision)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1):
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_chs),
            # ReLU6 as in the paper: bounded activations are robust in low-precision inference.
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck (paper Table 1).

    ``conv``: [1x1 expand ConvBNReLU6 when expand_ratio != 1], 3x3 depthwise ConvBNReLU6,
    1x1 projection conv, BN -- with *no* activation after the projection: the paper's
    "linear bottleneck", since a ReLU in the narrow space destroys information.
    The shortcut exists only when stride == 1 and in == out (the shapes must match).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        hidden = int(round(in_chs * expand_ratio))
        self.use_res_connect = stride == 1 and in_chs == out_chs

        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_chs, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, kernel_size=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------

# Paper Table 2: (expansion t, output channels c, repeats n, first stride s).
_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHS = 32
_LAST_CHS = 1280


class MobileNetV2(nn.Module):
    """MobileNet V2 with torchvision's module layout.

    ``features``: 0 = stem, 1..17 = inverted residuals, 18 = 1x1 head conv.
    ``classifier``: 0 = Dropout, 1 = Linear.
    """

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2,
                 round_nearest: int = 8, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        in_chs = _make_divisible(_STEM_CHS * width_mult, round_nearest)
        # The head keeps 1280 channels for width < 1 and only grows for width > 1: the paper
        # (Sec. 6.1) scales every layer but the last conv for multipliers below one, which
        # helps small models; torchvision and timm do the same.
        self.last_channel = _make_divisible(_LAST_CHS * max(1.0, width_mult), round_nearest)

        features: list[nn.Module] = [ConvBNReLU6(in_chans, in_chs, kernel_size=3, stride=2)]
        for t, c, n, s in _SETTING:
            out_chs = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(in_chs, out_chs, s if i == 0 else 1, t))
                in_chs = out_chs
        features.append(ConvBNReLU6(in_chs, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)

        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, num_classes),
        )
        init_reference_weights(self)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.flatten(self.global_pool(x))
        return self.classifier(x)


# --------------------------------------------------------------------------------------------
# Checkpoint key remapping
# --------------------------------------------------------------------------------------------

# timm stage s, block j -> our features index: stage s starts after the stem (index 0) and
# all blocks of earlier stages.
_STAGE_START = [1 + sum(n for _, _, n, _ in _SETTING[:s]) for s in range(len(_SETTING))]
_HEAD_INDEX = 1 + sum(n for _, _, n, _ in _SETTING)  # 18

# Within a block: timm submodule -> our path under features.<i>.conv. Stage 0 (t=1) is timm's
# depthwise-separable block (no expansion), the others its inverted residual.
_TIMM_DS = {"conv_dw": "0.0", "bn1": "0.1", "conv_pw": "1", "bn2": "2"}
_TIMM_IR = {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1",
            "conv_pwl": "2", "bn3": "3"}
_TIMM_TOP = {"conv_stem": "features.0.0", "bn1": "features.0.1",
             "conv_head": f"features.{_HEAD_INDEX}.0", "bn2": f"features.{_HEAD_INDEX}.1",
             "classifier": "classifier.1"}
_TIMM_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(\w+)\.(.+)$")


def _timm_key_to_ours(key: str) -> str:
    m = _TIMM_BLOCK_KEY.match(key)
    if m:
        stage, block, module, rest = int(m[1]), int(m[2]), m[3], m[4]
        table = _TIMM_DS if stage == 0 else _TIMM_IR
        if stage >= len(_SETTING) or module not in table:
            raise KeyError(f"unexpected timm MobileNetV2 key '{key}'")
        return f"features.{_STAGE_START[stage] + block}.conv.{table[module]}.{rest}"
    module, _, rest = key.partition(".")
    if module not in _TIMM_TOP:
        raise KeyError(f"unexpected timm MobileNetV2 key '{key}'")
    return f"{_TIMM_TOP[module]}.{rest}"


def remap_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Map a published MobileNetV2 checkpoint onto our (torchvision) keys.

    torchvision checkpoints are returned unchanged (shallow copy). timm checkpoints
    (recognised by ``conv_stem.*``) are renamed module by module; the architectures are the
    same (timm's ``mobilenetv2_*`` use identical channel rounding and a 1280 head for width<1).
    """
    if not any(k.startswith("conv_stem.") for k in state_dict):
        return dict(state_dict)
    return {_timm_key_to_ours(k): v for k, v in state_dict.items()}


# --------------------------------------------------------------------------------------------
# Builder and registered variants
# --------------------------------------------------------------------------------------------


def _create_mobilenet_v2(width_mult: float, num_classes: int, **kwargs: Any) -> MobileNetV2:
    return MobileNetV2(width_mult=width_mult, num_classes=num_classes, **kwargs)


_PAPER = ("Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, "
          "arXiv:1801.04381")
_TIMM_KEYS = "timm efficientnet-builder keys, renamed by remap_state_dict"
_V2_META: dict[str, Any] = dict(family="mobilenet_v2", paper=_PAPER,
                                remap_state_dict=remap_state_dict)

# MACs and top-1: the paper (1.0: 300M / 72.0%, 1.4: 585M / 74.7%) and, for the smaller
# widths, the authors' TF-slim model-zoo table the paper's Figure 5 plots.
# Params: the TF-slim table (2.61M / 1.95M / 1.66M / 6.06M) counts conv + FC weights only, no
# BN parameters; the paper's Table 4 even says 6.9M for 1.4. Ours include BN (like timm and
# torchvision), so for the widths without a torchvision count we register timm's figures for
# the identical architecture, which are what our count must match.


@register_model(
    params=6_110_000,
    macs=585_000_000,
    top1=74.7,
    weights=f"timm mobilenetv2_140.ra_in1k ({_TIMM_KEYS})",
    **_V2_META,
)
def mobilenet_v2_140(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenet_v2(1.4, num_classes, **kwargs)


@register_model(
    params=3_504_872,
    params_exact=True,
    macs=300_000_000,
    top1=72.0,
    weights=("torchvision MobileNet_V2_Weights.IMAGENET1K_V1 / IMAGENET1K_V2 (torchvision keys, "
             f"identity remap); also timm mobilenetv2_100.ra_in1k ({_TIMM_KEYS})"),
    **_V2_META,
)
def mobilenet_v2_100(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenet_v2(1.0, num_classes, **kwargs)


@register_model(
    params=2_640_000,
    macs=209_000_000,
    top1=69.8,
    weights=("none in PyTorch (TF-slim mobilenet_v2_0.75_224 only; timm lists mobilenetv2_075 "
             "as untrained)"),
    **_V2_META,
)
def mobilenet_v2_075(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenet_v2(0.75, num_classes, **kwargs)


@register_model(
    params=1_970_000,
    macs=97_000_000,
    top1=65.4,
    weights=f"timm mobilenetv2_050.lamb_in1k ({_TIMM_KEYS})",
    **_V2_META,
)
def mobilenet_v2_050(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenet_v2(0.5, num_classes, **kwargs)


@register_model(
    params=1_680_000,
    macs=59_000_000,
    top1=60.3,
    weights=("none in PyTorch (TF-slim mobilenet_v2_0.35_224 only; timm lists mobilenetv2_035 "
             "as untrained)"),
    **_V2_META,
)
def mobilenet_v2_035(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenet_v2(0.35, num_classes, **kwargs)
