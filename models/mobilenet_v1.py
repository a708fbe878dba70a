"""MobileNet V1 (Howard et al., arXiv:1704.04861) at width multipliers 1.0 / 0.75 / 0.5 / 0.25.

A 3x3 stride-2 stem followed by 13 depthwise-separable blocks (3x3 depthwise + 1x1
pointwise, each with BN and ReLU6), global average pool and one FC layer (paper Table 1).

Key layout: our module names mirror timm's efficientnet-builder layout (``conv_stem``,
``bn1``, ``blocks.<stage>.<block>.{conv_dw,bn1,conv_pw,bn2}``, ``classifier``), so timm's
``mobilenetv1_100.ra4_e3600_r224_in1k`` checkpoint loads with identical keys and
``remap_state_dict`` is the identity. Activations are separate parameter-free modules
(``act1``/``act2``) where timm fuses them into its BN layer, which does not change any key.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._init import init_reference_weights
from ._layers import make_divisible as _make_divisible
from ._registry import register_model

__all__ = ["DepthwiseSeparableConv", "MobileNetV1", "mobilenet_v1_100", "mobilenet_v1_075",
           "mobilenet_v1_050", "mobilenet_v1_025"]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class DepthwiseSeparableConv(nn.Module):
    """3x3 depthwise conv -> BN -> ReLU6 -> 1x1 pointwise conv -> BN -> ReLU6.

    Unlike MobileNetV2's blocks there is no residual connection and the pointwise conv is
    followed by an activation (timm's ``dsa`` block: ``noskip``, ``pw_act``).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        # Convs have no bias: the following BN's shift makes it redundant.
        self.conv_dw = nn.Conv2d(in_chs, in_chs, 3, stride=stride, padding=1, groups=in_chs,
                                 bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_dw(x)))
        return self.act2(self.bn2(self.conv_pw(x)))


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------

# Paper Table 1, grouped into timm's five stages (one per output resolution): each stage is
# (out_channels, repeats, stride of its first block). Stage boundaries fix the checkpoint keys
# (blocks.<stage>.<block>), so the grouping must match timm's arch_def.
_STAGES: tuple[tuple[int, int, int], ...] = (
    (64, 1, 1),    # 112x112
    (128, 2, 2),   # 56x56
    (256, 2, 2),   # 28x28
    (512, 6, 2),   # 14x14: the paper's 5 repeated 512-channel blocks, after the stride-2 one
    (1024, 2, 2),  # 7x7: the paper's last block has stride 1 (its "s2" in Table 1 is a typo)
)


class MobileNetV1(nn.Module):
    """MobileNet V1 with a width multiplier (the paper's alpha)."""

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        in_chans: int = 3,
    ):
        super().__init__()
        self.num_classes = num_classes
        stem_chs = _make_divisible(32 * width_mult)
        # ReLU6 rather than the paper's plain ReLU: the authors' TF-slim release and timm's
        # published weights both use ReLU6 (its bounded range suits low-precision inference),
        # and the weights were trained with it.
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.ReLU6(inplace=True)

        in_chs = stem_chs
        stages: list[nn.Module] = []
        for out_c, repeats, stride in _STAGES:
            out_chs = _make_divisible(out_c * width_mult)
            blocks = []
            for i in range(repeats):
                blocks.append(DepthwiseSeparableConv(in_chs, out_chs, stride if i == 0 else 1))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = in_chs

        # No 1x1 head conv before pooling (timm's mobilenetv1_100, not its "h" variant).
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(p=drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_reference_weights(self)


    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.flatten(self.global_pool(x))
        return self.classifier(self.dropout(x))


# --------------------------------------------------------------------------------------------
# Builder and registered variants
# --------------------------------------------------------------------------------------------


def remap_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Map a timm ``mobilenetv1_*`` checkpoint onto ours.

    Our module names are timm's, so this is the identity (a shallow copy); it exists so the
    registry records explicitly that no renaming is needed.
    """
    return dict(state_dict)


def _create_mobilenet_v1(width_mult: float, num_classes: int, **kwargs: Any) -> MobileNetV1:
    return MobileNetV1(width_mult=width_mult, num_classes=num_classes, **kwargs)


_PAPER = ("Howard et al., MobileNets: Efficient Convolutional Neural Networks for Mobile Vision "
          "Applications, arXiv:1704.04861")
_NO_WEIGHTS = ("none in PyTorch (TF-slim mobilenet_v1_{w}_224 checkpoint only, TF variable names; "
               "remap_state_dict expects timm's layout)")
# Both timm's weights and the TF-slim originals were trained on inputs scaled to [-1, 1].
_V1_META: dict[str, Any] = dict(
    family="mobilenet_v1",
    paper=_PAPER,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    remap_state_dict=remap_state_dict,
)


# params / MACs / top-1: paper Tables 6-7 (alpha at 224). The paper rounds params to 0.1M,
# which is too coarse at 0.5 (1.3M vs 1.33M) and 0.25 (0.5M vs 0.47M); there we use the
# authors' TF-slim model-zoo figures (1.34M, 0.47M). Ours include BN parameters.
@register_model(
    params=4_200_000,
    macs=569_000_000,
    top1=70.6,
    weights=("timm mobilenetv1_100.ra4_e3600_r224_in1k (timm efficientnet-builder keys: "
             "conv_stem/bn1/blocks.i.j.{conv_dw,bn1,conv_pw,bn2}/classifier; identity remap)"),
    **_V1_META,
)
def mobilenet_v1_100(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenet_v1(1.0, num_classes, **kwargs)


@register_model(
    params=2_600_000,
    macs=325_000_000,
    top1=68.4,
    weights=_NO_WEIGHTS.format(w="0.75"),
    **_V1_META,
)
def mobilenet_v1_075(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenet_v1(0.75, num_classes, **kwargs)


@register_model(
    params=1_340_000,
    macs=149_000_000,
    top1=63.7,
    weights=_NO_WEIGHTS.format(w="0.5"),
    **_V1_META,
)
def mobilenet_v1_050(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenet_v1(0.5, num_classes, **kwargs)


@register_model(
    params=470_000,
    macs=41_000_000,
    top1=50.6,
    weights=_NO_WEIGHTS.format(w="0.25"),
    **_V1_META,
)
def mobilenet_v1_025(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenet_v1(0.25, num_classes, **kwargs)
