"""ShuffleNet v2 (Ma et al. 2018, arXiv 1807.11164), laid out like torchvision's.

Module names and ordering follow ``torchvision.models.shufflenetv2`` (``conv1``, ``maxpool``,
``stage2``..``stage4`` of ``InvertedResidual`` blocks with ``branch1`` / ``branch2``,
``conv5``, ``fc``), so torchvision's ImageNet checkpoints load with identical keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._init import init_reference_weights
from ._registry import register_model

__all__ = ["InvertedResidual", "ShuffleNetV2", "channel_shuffle"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Paper / torchvision shuffle: channels viewed as ``(groups, C // groups)``, transposed.

    Output channel ``j * groups + i`` is input ``i * (C // groups) + j``; with 2 groups the
    two halves are interleaved. Reshape -> Transpose -> Reshape exports as plain ONNX ops.
    """
    b, c, h, w = x.shape
    x = x.reshape(b, groups, c // groups, h, w)
    x = x.transpose(1, 2)
    return x.reshape(b, c, h, w)


def _dw_conv(chs: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(chs, chs, 3, stride, 1, groups=chs, bias=False)


class InvertedResidual(nn.Module):
    """ShuffleNet v2 unit (paper Fig. 3c/d).

    Stride 1: split the channels in half; one half passes through untouched, the other goes
    through 1x1 -> 3x3 dw -> 1x1; concat, then shuffle. Stride 2: no split, both branches see
    all channels (``branch1``: 3x3 dw -> 1x1; ``branch2`` as above), so the width doubles.
    Neither branch uses group convs: the paper's guideline G2 (group convs cost memory access).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        branch_chs = out_chs // 2
        if stride == 1 and in_chs != 2 * branch_chs:
            raise ValueError(f"a stride-1 unit needs in_chs == out_chs, got {in_chs} -> {out_chs}")
        self.stride = stride
        self.split_chs = branch_chs

        if stride == 2:
            self.branch1 = nn.Sequential(
                _dw_conv(in_chs, stride),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, branch_chs, 1, 1, 0, bias=False),
                nn.BatchNorm2d(branch_chs),
                nn.ReLU(inplace=True),
            )
        else:
            # Empty, as in torchvision: keeps the module tree (and printed repr) identical.
            self.branch1 = nn.Sequential()

        # No ReLU after the depthwise conv (as in MobileNetV2 / the paper's Fig. 3).
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_chs if stride == 2 else branch_chs, branch_chs, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_chs),
            nn.ReLU(inplace=True),
            _dw_conv(branch_chs, stride),
            nn.BatchNorm2d(branch_chs),
            nn.Conv2d(branch_chs, branch_chs, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_chs),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            # The channel split, as torch.split with a static (Python int) size: it exports as
            # one ONNX Split. torch.chunk(2) computes the same halves, but the TorchScript
            # exporter (torch 2.13, opset 17) lowers it to Shape/Gather/Div/Mul + two Slices.
            x1, x2 = torch.split(x, self.split_chs, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """conv1 (3x3 s2) -> max pool -> stages [4, 8, 4] -> conv5 (1x1) -> global mean -> fc."""

    def __init__(self, stage_out_channels: tuple[int, int, int, int, int], *,
                 stage_repeats: tuple[int, int, int] = (4, 8, 4), num_classes: int = 1000,
                 in_chans: int = 3) -> None:
        super().__init__()
        if len(stage_out_channels) != 5 or len(stage_repeats) != 3:
            raise ValueError("expected 5 stage widths and 3 stage repeats")
        stem_chs = stage_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem_chs),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_chs = stem_chs
        self.stage2: nn.Sequential
        self.stage3: nn.Sequential
        self.stage4: nn.Sequential
        stages = zip(stage_repeats, stage_out_channels[1:4], strict=True)
        for idx, (repeats, out_chs) in enumerate(stages):
            blocks = [InvertedResidual(in_chs, out_chs, 2)]
            blocks += [InvertedResidual(out_chs, out_chs, 1) for _ in range(repeats - 1)]
            # Named stage2..stage4 after the paper's Table 5 (stage 1 is conv1 + max pool).
            setattr(self, f"stage{idx + 2}", nn.Sequential(*blocks))
            in_chs = out_chs

        self.num_features = stage_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(in_chs, self.num_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(self.num_features),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(self.num_features, num_classes)
        init_reference_weights(self)


    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        return self.conv5(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        # Global average pool over any spatial size (exports as ReduceMean).
        x = x.mean((2, 3))
        return self.fc(x)


def _remap_torchvision(state_dict: dict[str, Any]) -> dict[str, Any]:
    """torchvision checkpoint -> ours: identity, the key names match by construction."""
    return dict(state_dict)


def _create_shufflenet_v2(stage_out_channels: tuple[int, int, int, int, int], *,
                          num_classes: int = 1000, **kwargs: Any) -> ShuffleNetV2:
    return ShuffleNetV2(stage_out_channels, num_classes=num_classes, **kwargs)


_PAPER = "Ma et al. 2018, ShuffleNet V2, arXiv 1807.11164"


def _tv_weights(fname: str) -> str:
    return (f"torchvision ShuffleNet_V2 IMAGENET1K_V1 "
            f"(https://download.pytorch.org/models/{fname}); plain state dict, "
            "keys conv1.*, stageN.M.branch1/branch2.*, conv5.*, fc.*")


# params: torchvision's exact num_params. macs: the paper's complexity (Table 5 / megvii's
# README: 41M, 146M, 299M, 591M; torchvision's "_ops" 0.04 / 0.145 / 0.296 / 0.583 GFLOPs
# agree). top1: torchvision's acc@1 for the weights it publishes (paper: 60.3 / 69.4 / 72.6 /
# 74.9). x1_5 and x2_0 weights were evaluated with a 232 resize (crop_pct 224 / 232).
@register_model(family="shufflenet_v2", params=1_366_792, params_exact=True, macs=41_000_000,
                top1=60.552, paper=_PAPER, weights=_tv_weights("shufflenetv2_x0.5-f707e7126e.pth"),
                remap_state_dict=_remap_torchvision)
def shufflenet_v2_x0_5(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v2((24, 48, 96, 192, 1024), num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v2", params=2_278_604, params_exact=True, macs=146_000_000,
                top1=69.362, paper=_PAPER, weights=_tv_weights("shufflenetv2_x1-5666bf0f80.pth"),
                remap_state_dict=_remap_torchvision)
def shufflenet_v2_x1_0(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v2((24, 116, 232, 464, 1024), num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v2", params=3_503_624, params_exact=True, macs=299_000_000,
                top1=72.996, crop_pct=224 / 232, paper=_PAPER,
                weights=_tv_weights("shufflenetv2_x1_5-3c479a10.pth"),
                remap_state_dict=_remap_torchvision)
def shufflenet_v2_x1_5(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v2((24, 176, 352, 704, 1024), num_classes=num_classes, **kwargs)


@register_model(family="shufflenet_v2", params=7_393_996, params_exact=True, macs=591_000_000,
                top1=76.230, crop_pct=224 / 232, paper=_PAPER,
                weights=_tv_weights("shufflenetv2_x2_0-8be3c8ee.pth"),
                remap_state_dict=_remap_torchvision)
def shufflenet_v2_x2_0(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_shufflenet_v2((24, 244, 488, 976, 2048), num_classes=num_classes, **kwargs)
