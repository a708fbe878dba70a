"""MobileNeXt: the sandglass block (identity mapping and depthwise convs at the wide ends).

Zhou et al., "Rethinking Bottleneck Structure for Efficient Mobile Network Design", ECCV 2020,
arXiv:2007.02269. The layer table (t, c, n, s) and the block variants follow the authors' code
(``mobilenext/codebase/models/mnext.py`` in yitu-opensource/MobileNeXt, which
zhoudaquan/rethinking_bottleneck_design adapts, and the same network in the authors' SSDLite
repo houqb/ssdlite-pytorch-mobilenext). ``t`` is a *reduction* ratio there: the bottleneck is
``in // t`` wide, never narrower than ``out / 6`` (rounded up to a multiple of 16).

Module names mirror that code -- ``features.0.{0,1}`` stem, ``features.N.conv.M`` flat
Sequentials whose indices count the ReLU6 layers too, ``classifier.1`` -- so the authors'
``mnext.pth.tar`` loads without renaming.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._init import init_reference_weights
from ._layers import make_divisible as _make_divisible
from ._registry import register_model

__all__ = ["MobileNeXt", "SandGlass", "remap_state_dict"]


class SandGlass(nn.Module):
    """dw3x3 (BN, ReLU6) -> 1x1 reduce (BN, linear) -> 1x1 expand (BN, ReLU6) -> dw3x3 (BN, linear).

    The stride sits on the second depthwise conv, so the first one still sees full resolution.
    As in the authors' code, a block that changes the channel count drops depthwise convs it
    cannot use at the wide end: no first dw (its input is the previous, differently-sized
    tensor) and, at stride 1, no second dw either. The first block (``reduction == 2``) and
    ``keep_3x3`` blocks (single-block stages at stride 1) always keep both.

    ``identity_tensor_multiplier`` (paper Sec. 3.3) adds the shortcut to only the first
    ``round(C * m)`` channels. It is done as split + add + concat rather than in-place slice
    assignment, so the ONNX graph has Split/Add/Concat and no ScatterND.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        reduction: int,
        keep_3x3: bool = False,
        identity_tensor_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if not 0.0 <= identity_tensor_multiplier <= 1.0:
            raise ValueError(
                f"identity_tensor_multiplier must be in [0, 1], got {identity_tensor_multiplier}"
            )
        hidden = in_chs // reduction
        if hidden < out_chs / 6.0:
            # Keep the bottleneck from collapsing where the block widens a lot.
            hidden = _make_divisible(math.ceil(out_chs / 6.0), 16)

        full = reduction == 2 or in_chs == out_chs or keep_3x3
        layers: list[nn.Module] = []
        if full:
            layers += [
                nn.Conv2d(in_chs, in_chs, 3, 1, 1, groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            # Linear bottleneck: no activation after the reduction (information-loss argument).
            nn.Conv2d(in_chs, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Conv2d(hidden, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU6(inplace=True),
        ]
        if full or stride == 2:
            layers += [
                nn.Conv2d(out_chs, out_chs, 3, stride, 1, groups=out_chs, bias=False),
                nn.BatchNorm2d(out_chs),
            ]
        self.conv = nn.Sequential(*layers)

        self.use_res_connect = stride == 1 and in_chs == out_chs
        self.out_chs = out_chs
        self.identity_channels = int(round(out_chs * identity_tensor_multiplier))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if not self.use_res_connect or self.identity_channels == 0:
            return out
        if self.identity_channels == self.out_chs:
            return out + x
        rest = self.out_chs - self.identity_channels
        out_id, out_rest = torch.split(out, [self.identity_channels, rest], dim=1)
        x_id, _ = torch.split(x, [self.identity_channels, rest], dim=1)
        return torch.cat((out_id + x_id, out_rest), dim=1)


# t (bottleneck reduction), c (out channels), n (blocks), s (first block's stride):
# paper Table 2 / the authors' mnext.py.
_CFG: tuple[tuple[int, int, int, int], ...] = (
    (2, 96, 1, 2),
    (6, 144, 1, 1),
    (6, 192, 3, 2),
    (6, 288, 3, 2),
    (6, 384, 4, 1),
    (6, 576, 4, 2),
    (6, 960, 3, 1),
    (6, 1280, 1, 1),
)


class MobileNeXt(nn.Module):
    """3x3/2 stem, 20 sandglass blocks, global pool, dropout, linear classifier.

    There is no separate 1x1 "last conv": the final sandglass block already outputs 1280
    channels (kept at 1280 for width < 1, scaled above 1, like MobileNetV2's last layer).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        identity_tensor_multiplier: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        divisor = 4 if width_mult == 0.1 else 8
        in_chs = _make_divisible(32 * width_mult, divisor)
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_chans, in_chs, 3, 2, 1, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.ReLU6(inplace=True),
            )
        ]
        for t, c, n, s in _CFG:
            out_chs = _make_divisible(c * width_mult, divisor)
            if c == 1280 and width_mult < 1.0:
                out_chs = 1280
            for i in range(n):
                layers.append(
                    SandGlass(
                        in_chs,
                        out_chs,
                        stride=s if i == 0 else 1,
                        reduction=t,
                        keep_3x3=(i == 0 and n == 1 and s == 1),
                        identity_tensor_multiplier=identity_tensor_multiplier,
                    )
                )
                in_chs = out_chs
        self.features = nn.Sequential(*layers)
        self.num_features = in_chs
        # Adaptive pooling: any input size (32 px leaves a 1x1 map after the 32x downsampling).
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # Sequential(Dropout, Linear) keeps the authors' key name classifier.1.*.
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_chs, num_classes))
        init_reference_weights(self)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def remap_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The authors' checkpoint already uses our names (features.N.conv.M, classifier.1).

    Only the SSDLite detection checkpoints carry extra keys (``extras.*``, box heads); drop
    anything outside the classifier network so a backbone-only load stays strict.
    """
    return {k: v for k, v in state_dict.items() if k.startswith(("features.", "classifier."))}


def _create_mobilenext(num_classes: int, width_mult: float, **kwargs: Any) -> MobileNeXt:
    return MobileNeXt(num_classes=num_classes, width_mult=width_mult, **kwargs)


_PAPER = (
    "Zhou et al., Rethinking Bottleneck Structure for Efficient Mobile Network Design, "
    "ECCV 2020 (arXiv:2007.02269)"
)
_WEIGHTS_100 = (
    "authors' ImageNet weights mnext.pth.tar (github.com/Andrew-Qibin/ssdlite-pytorch, "
    "weights/mnext.pth.tar, linked from houqb/ssdlite-pytorch-mobilenext); layout of "
    "yitu-opensource/MobileNeXt mnext.py: features.N.conv.M, classifier.1 (loads as is)"
)
_WEIGHTS_NONE = (
    "none published for this width (layout as mnext.py: features.N.conv.M, classifier.1)"
)
_META = dict(family="mobilenext", paper=_PAPER, remap_state_dict=remap_state_dict)

# Parameter counts are the authors' code's (yitu-opensource/MobileNeXt mnext.py, rebuilt
# layer for layer: same counts, same outputs), registered exactly. The paper's rounded
# figures disagree with that code: 3.5M for 1.0 (code 3,535,416: +1.01%), 2.5M for 0.75
# (code 2,766,168: +10.6%, no reading of the code fits), 2.1M for 0.5 (code 2,152,304:
# +2.5%); 6.1M for 1.4 fits. MACs are the paper's where the code is within 5% of them; for
# 0.5 the paper's 110M is 6.1% above the code's 103.3M, so the code's count is registered.


@register_model(
    params=3_535_416, params_exact=True, macs=300_000_000, top1=74.02, weights=_WEIGHTS_100, **_META
)
def mobilenext_100(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenext(num_classes, 1.0, **kwargs)


@register_model(params=6_100_000, macs=590_000_000, top1=76.1, weights=_WEIGHTS_NONE, **_META)
def mobilenext_140(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenext(num_classes, 1.4, **kwargs)


@register_model(
    params=2_766_168, params_exact=True, macs=210_000_000, top1=72.0, weights=_WEIGHTS_NONE, **_META
)
def mobilenext_075(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenext(num_classes, 0.75, **kwargs)


@register_model(
    params=2_152_304, params_exact=True, macs=103_300_000, top1=67.7, weights=_WEIGHTS_NONE, **_META
)
def mobilenext_050(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_mobilenext(num_classes, 0.5, **kwargs)
