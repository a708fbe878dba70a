"""ShuffleNet v1 (Zhang et al. 2017, arXiv 1707.01083), laid out like megvii's reference.

The reference implementation and the published weights are megvii-model/ShuffleNet-Series
(``ShuffleNetV1/network.py`` and ``blocks.py``). Module names follow it, so megvii's
checkpoints load key for key: ``first_conv.{0,1}``, ``features.N.branch_main_1.{0,1,3,4}``,
``features.N.branch_main_2.{0,1}``, ``classifier.0`` (a bias-free Linear).

Variants: groups g in {1, 2, 3, 4, 8}, each at width 1.0x and 0.5x (paper Table 1 / Table 2).
Megvii only publishes g = 3 and g = 8; the other group counts use the paper's Table 1 widths.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._init import init_reference_weights
from ._registry import register_model

__all__ = ["ShuffleNetV1", "ShuffleV1Block", "channel_shuffle_v1"]


def channel_shuffle_v1(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Megvii's ShuffleNet v1 channel shuffle: output channel ``i * n + j`` is input ``j * g + i``.

    With ``n = C // g`` this reshapes the channels as ``(n, g)`` and transposes, i.e. output
    group ``i`` gathers every g-th channel starting at ``i``. The paper's text describes the
    transpose the other way round (reshape to ``(g, n)``, the permutation torchvision uses for
    v2); the two are inverses of each other and mix groups equally well, but megvii's weights
    were trained with this one, so it is the one that makes their checkpoints give the
    published accuracy. Reshape -> Transpose -> Reshape exports as plain ONNX ops.
    """
    b, c, h, w = x.shape
    x = x.reshape(b, c // groups, groups, h, w)
    x = x.transpose(1, 2)
    return x.reshape(b, c, h, w)


class ShuffleV1Block(nn.Module):
    """ShuffleNet unit (paper Fig. 2b/c): 1x1 gconv -> 3x3 dw -> shuffle -> 1x1 gconv.

    Stride 1: residual add then ReLU. Stride 2: the shortcut is a 3x3 average pool and is
    concatenated (not added), so the main branch only produces ``out_chs - in_chs`` channels;
    the bottleneck width is ``out_chs // 4`` of the *stage* output, before that subtraction.
    """

    def __init__(self, in_chs: int, out_chs: int, *, groups: int, stride: int,
                 first_group: bool = False) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.groups = groups
        mid_chs = out_chs // 4
        main_out = out_chs - in_chs if stride == 2 else out_chs
        # The very first unit of stage 2 takes the stem output (24 channels at 1.0x): too few
        # channels to split into g groups usefully (paper Sec. 3.3: "we do not apply group
        # convolution on the first pointwise layer because the number of input channels is
        # relatively small").
        pw1_groups = 1 if first_group else groups
        for c, what in ((mid_chs, "bottleneck"), (main_out, "main-branch output")):
            if c % groups:
                raise ValueError(f"{what} width {c} is not divisible by groups={groups}")

        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(in_chs, mid_chs, 1, 1, 0, groups=pw1_groups, bias=False),
            nn.BatchNorm2d(mid_chs),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_chs, mid_chs, 3, stride, 1, groups=mid_chs, bias=False),
            nn.BatchNorm2d(mid_chs),
        )
        # No ReLU after the last 1x1: it comes after the add / on the main half of the concat.
        self.branch_main_2 = nn.Sequential(
            nn.Conv2d(mid_chs, main_out, 1, 1, 0, groups=groups, bias=False),
            nn.BatchNorm2d(main_out),
        )
        if stride == 2:
            self.branch_proj = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch_main_1(x)
        # Megvii shuffles after the depthwise conv rather than right after the first 1x1 as in
        # the paper's figure; the dw conv is per channel, so the two are the same network up to
        # a permutation of the dw weights, and this order matches megvii's checkpoints.
        if self.groups > 1:
            out = channel_shuffle_v1(out, self.groups)
        out = self.branch_main_2(out)
        if self.stride == 1:
            return self.relu(out + x)
        # Shortcut first, then the main branch: megvii's concat order.
        return torch.cat((self.branch_proj(x), self.relu(out)), dim=1)


class ShuffleNetV1(nn.Module):
    """stem (3x3 s2 conv + 3x3 s2 max pool) -> stages [4, 8, 4] -> global pool -> FC."""

    def __init__(self, stage_out_channels: tuple[int, int, int, int], *, groups: int,
                 stage_repeats: tuple[int, int, int] = (4, 8, 4), num_classes: int = 1000,
                 in_chans: int = 3) -> None:
        super().__init__()
        stem_chs, *widths = stage_out_channels
        self.num_features = widths[-1]
        self.first_conv = nn.Sequential(
            nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem_chs),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        blocks: list[nn.Module] = []
        in_chs = stem_chs
        for stage_idx, (repeats, out_chs) in enumerate(zip(stage_repeats, widths, strict=True)):
            for i in range(repeats):
                blocks.append(ShuffleV1Block(
                    in_chs, out_chs, groups=groups, stride=2 if i == 0 else 1,
                    first_group=stage_idx == 0 and i == 0,
                ))
                in_chs = out_chs
        # One flat Sequential (not per-stage) so indices match megvii's ``features.N``.
        self.features = nn.Sequential(*blocks)

        # Megvii uses AvgPool2d(7), which only fits 224 inputs; the adaptive pool is the same
        # thing at 224 and works at any resolution (exports as GlobalAveragePool).
        self.globalpool = nn.AdaptiveAvgPool2d(1)
        # Bias-free classifier, wrapped in a Sequential: megvii's ``classifier.0.weight``.
        self.classifier = nn.Sequential(nn.Linear(self.num_features, num_classes, bias=False))
        init_reference_weights(self)


    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        x = self.maxpool(x)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = torch.flatten(self.globalpool(x), 1)
        return self.classifier(x)


# (stem, stage2, stage3, stage4) output channels per (groups, width).
# 1.0x: paper Table 1 (stem 24); identical to megvii's tables for g = 3 and g = 8.
# 0.5x: Table 1 halved, stem 12, except where halving breaks group divisibility:
#   g8: megvii uses a 16-channel stem so the first unit's main branch (192 - stem) splits
#       into 8 groups (192 - 12 = 180 does not).
#   g2, g4: halving gives 100 and 136, whose bottlenecks (25, 34) do not split into 2 / 4
#       groups, and neither megvii nor the paper gives the widths they used. We round each
#       stage width to a multiple of 4 * g (so the bottleneck divides by g); 100 and 136 sit
#       exactly between two (96/104, 128/144), and we take the one whose MACs come closest to
#       the paper's 38M for every 0.5x model: g2 -> 96/200/400 (37.6M; 104 gives 38.9M),
#       g4 -> 144/272/544 (37.9M; 128 gives 36.0M).
_CHANNELS: dict[tuple[int, float], tuple[int, int, int, int]] = {
    (1, 1.0): (24, 144, 288, 576),
    (2, 1.0): (24, 200, 400, 800),
    (3, 1.0): (24, 240, 480, 960),
    (4, 1.0): (24, 272, 544, 1088),
    (8, 1.0): (24, 384, 768, 1536),
    (1, 0.5): (12, 72, 144, 288),
    (2, 0.5): (12, 96, 200, 400),
    (3, 0.5): (12, 120, 240, 480),
    (4, 0.5): (12, 144, 272, 544),
    (8, 0.5): (16, 192, 384, 768),
}


def _remap_megvii(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Megvii checkpoint -> ours: identity, the key names already match by construction.

    (``module.`` prefixes and the ``{'state_dict': ...}`` wrapper are stripped centrally.)
    Values are deliberately left alone: the loader also applies this to our own checkpoints,
    so folding megvii's BGR input order into the stem here would flip those a second time.
    """
    return dict(state_dict)


def _create_shufflenet_v1(groups: int, width: float, *, num_classes: int = 1000,
                          **kwargs: Any) -> ShuffleNetV1:
    return ShuffleNetV1(_CHANNELS[(groups, width)], groups=groups, num_classes=num_classes,
                        **kwargs)


_PAPER = "Zhang et al. 2017, ShuffleNet, arXiv 1707.01083"
# Megvii's pipeline: OpenCV bilinear resize of the short side to 256, centre crop 224, BGR,
# raw 0-255 pixels (no mean/std). With mean 0 and std 1/255 a [0, 1] image becomes 0-255.
# The BGR channel order cannot be expressed by mean/std: feed BGR to use megvii's weights.
_MEGVII_PREPROC = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255), crop_pct=0.875)
_MEGVII_WEIGHTS = (
    "megvii-model/ShuffleNet-Series, ShuffleNetV1 release (OneDrive link in the repo README), "
    "'module.'-prefixed keys (DataParallel), possibly in a {'state_dict': ...} wrapper; "
    "keys first_conv.*, features.N.branch_main_1/2.*, classifier.0.weight (no FC bias); "
    "trained on BGR 0-255 input (no mean/std), so feed BGR"
)
_NO_WEIGHTS = "none published (megvii releases g3 and g8 only); architecture per paper Table 1"

# Params: megvii's table rounds to 0.1M (its 1.9M for g3 1.0x is 2% above the true 1.86M),
# so where possible we register the exact counts osmr/imgclsmob publishes for this same
# architecture (g1/g2/g3/g4/g8 1.0x, g1/g3 0.5x; its FC has a bias, so ours is 1000 lower).
# g8 0.5x: megvii's "1.0M" is 1,010,448 rounded (ours reproduces its network.py layer for
# layer), registered exactly since the rounded figure is 1.04% off. g2/g4 0.5x: no published
# count exists (see _CHANNELS), so those two are our own counts.
# MACs: paper Table 1 at 1.0x (megvii's 138M for g3/g8, whose weights we point to); at 0.5x
# megvii's 38M / 40M for g3 / g8, the paper's 38M (Table 2) otherwise.
# Top-1: megvii's (100 - its top-1 error) where its weights exist, else paper Table 2.


@register_model(family="shufflenet_v1", params=1_531_936, macs=143_000_000, top1=66.4,
                paper=_PAPER, weights=_NO_WEIGHTS, remap_state_dict=_remap_megvii,
                **_MEGVII_PREPROC)
def shufflenet_v1_g1(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v1(1, 1.0, num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v1", params=1_733_848, macs=140_000_000, top1=67.3,
                paper=_PAPER, weights=_NO_WEIGHTS, remap_state_dict=_remap_megvii,
                **_MEGVII_PREPROC)
def shufflenet_v1_g2(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v1(2, 1.0, num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v1", params=1_865_728, macs=138_000_000, top1=67.8,
                paper=_PAPER, weights=_MEGVII_WEIGHTS, remap_state_dict=_remap_megvii,
                **_MEGVII_PREPROC)
def shufflenet_v1_g3(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v1(3, 1.0, num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v1", params=1_968_344, macs=133_000_000, top1=67.2,
                paper=_PAPER, weights=_NO_WEIGHTS, remap_state_dict=_remap_megvii,
                **_MEGVII_PREPROC)
def shufflenet_v1_g4(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v1(4, 1.0, num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v1", params=2_434_768, macs=138_000_000, top1=68.0,
                paper=_PAPER, weights=_MEGVII_WEIGHTS, remap_state_dict=_remap_megvii,
                **_MEGVII_PREPROC)
def shufflenet_v1_g8(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v1(8, 1.0, num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v1", params=534_484, macs=38_000_000, top1=54.9,
                paper=_PAPER, weights=_NO_WEIGHTS, remap_state_dict=_remap_megvii,
                **_MEGVII_PREPROC)
def shufflenet_v1_g1_050(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v1(1, 0.5, num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v1", params=641_756, macs=38_000_000, top1=55.6,
                paper=_PAPER, weights=_NO_WEIGHTS, remap_state_dict=_remap_megvii,
                **_MEGVII_PREPROC)
def shufflenet_v1_g2_050(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v1(2, 0.5, num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v1", params=718_324, macs=38_000_000, top1=57.3,
                paper=_PAPER, weights=_MEGVII_WEIGHTS, remap_state_dict=_remap_megvii,
                **_MEGVII_PREPROC)
def shufflenet_v1_g3_050(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v1(3, 0.5, num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v1", params=777_592, macs=38_000_000, top1=58.4,
                paper=_PAPER, weights=_NO_WEIGHTS, remap_state_dict=_remap_megvii,
                **_MEGVII_PREPROC)
def shufflenet_v1_g4_050(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v1(4, 0.5, num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v1", params=1_010_448, macs=40_000_000, top1=58.8,
                paper=_PAPER, weights=_MEGVII_WEIGHTS, remap_state_dict=_remap_megvii,
                **_MEGVII_PREPROC)
def shufflenet_v1_g8_050(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v1(8, 0.5, num_classes=num_classes, **kwargs)
