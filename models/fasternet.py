"""FasterNet: partial convolution (PConv) + pointwise MLP blocks.

Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks", CVPR 2023,
arXiv:2303.03667. Configurations follow the official repo's ``cfg/fasternet_*.yaml``
(JierunChen/FasterNet): mlp_ratio 2, n_div 4, 4x4/4 patch embedding, 2x2/2 patch merging,
1280-d pre-head feature, BatchNorm, no layer scale.

Module names mirror the official ``models/fasternet.py`` (``patch_embed.proj``,
``stages.{0,2,4,6}.blocks.M.spatial_mixing.partial_conv3``, ``stages.{1,3,5}.reduction``,
``avgpool_pre_head.1``, ``head``) so the released ``fasternet_*-epoch.*.pth`` files load
without renaming; ``remap_state_dict`` also accepts timm's re-organised layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._registry import register_model

__all__ = ["FasterNet", "PartialConv3", "MLPBlock", "remap_state_dict"]


class PartialConv3(nn.Module):
    """3x3 conv over the first ``dim // n_div`` channels; the rest pass through untouched.

    ``forward_type='split_cat'`` (default) is split -> conv -> concat, which exports to ONNX as
    Split/Conv/Concat and compiles cleanly. ``'slicing'`` is the official repo's inference-only
    variant (clone + in-place slice assignment); it exports as ScatterND / slice-assignment, which
    many edge compilers handle badly, so it is kept only for side-by-side comparison.
    """

    def __init__(self, dim: int, n_div: int = 4, forward_type: str = "split_cat") -> None:
        super().__init__()
        if forward_type not in ("split_cat", "slicing"):
            raise ValueError(f"forward_type must be 'split_cat' or 'slicing', got {forward_type!r}")
        self.dim_conv3 = dim // n_div
        self.dim_untouched = dim - self.dim_conv3
        self.forward_type = forward_type
        self.partial_conv3 = nn.Conv2d(self.dim_conv3, self.dim_conv3, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forward_type == "slicing":
            # Clone so the block's shortcut still sees the unmodified input.
            x = x.clone()
            x[:, : self.dim_conv3] = self.partial_conv3(x[:, : self.dim_conv3])
            return x
        x1, x2 = torch.split(x, [self.dim_conv3, self.dim_untouched], dim=1)
        return torch.cat((self.partial_conv3(x1), x2), dim=1)


class DropPath(nn.Module):
    """Per-sample stochastic depth; the identity in eval mode, so it never reaches an export."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class MLPBlock(nn.Module):
    """x + MLP(PConv(x)); the MLP is 1x1 expand -> BN -> act -> 1x1 project (no final norm)."""

    def __init__(
        self,
        dim: int,
        n_div: int,
        mlp_ratio: float,
        act_layer: type[nn.Module],
        drop_path: float = 0.0,
        pconv_forward: str = "split_cat",
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.spatial_mixing = PartialConv3(dim, n_div, pconv_forward)
        # Indices 0/1/2/3 match the official nn.Sequential (mlp.0 conv, mlp.1 BN, mlp.3 conv).
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            act_layer(),
            nn.Conv2d(hidden, dim, 1, bias=False),
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.spatial_mixing(x)))


class BasicStage(nn.Module):
    def __init__(
        self, dim: int, depth: int, drop_path: Sequence[float], **block_kwargs: Any
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[MLPBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` conv (stride = patch) + BN: the 4x stem."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, patch_stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_stride, bias=False)
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class PatchMerging(nn.Module):
    """2x2/2 conv doubling the channels + BN, between stages."""

    def __init__(self, dim: int, patch_size: int, patch_stride: int) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, patch_size, patch_stride, bias=False)
        self.norm = nn.BatchNorm2d(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


_ACTS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


class FasterNet(nn.Module):
    """FasterNet classifier.

    ``stages`` interleaves block stages and merging layers (stage, merge, stage, merge, ...),
    exactly like the official repo, so checkpoint indices are 0/2/4/6 for blocks and 1/3/5 for
    merging. The head pools *before* the 1x1 feature conv (``avgpool_pre_head``), which is why
    the 1280-d conv costs almost nothing at any resolution.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (1, 2, 8, 2),
        mlp_ratio: float = 2.0,
        n_div: int = 4,
        patch_size: int = 4,
        patch_stride: int = 4,
        patch_size2: int = 2,
        patch_stride2: int = 2,
        feature_dim: int = 1280,
        act: str = "relu",
        drop_path_rate: float = 0.0,
        pconv_forward: str = "split_cat",
    ) -> None:
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"act must be one of {sorted(_ACTS)}, got {act!r}")
        act_layer = _ACTS[act]
        self.num_classes = num_classes
        self.num_stages = len(depths)
        self.num_features = int(embed_dim * 2 ** (self.num_stages - 1))

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, patch_stride)

        # Linear stochastic-depth schedule over all blocks (training only; 0 by default).
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages: list[nn.Module] = []
        for i, depth in enumerate(depths):
            dim = int(embed_dim * 2**i)
            stages.append(
                BasicStage(
                    dim,
                    depth,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    n_div=n_div,
                    mlp_ratio=mlp_ratio,
                    act_layer=act_layer,
                    pconv_forward=pconv_forward,
                )
            )
            if i < self.num_stages - 1:
                stages.append(PatchMerging(dim, patch_size2, patch_stride2))
        self.stages = nn.Sequential(*stages)

        # Adaptive pooling keeps every input size valid (32 px gives a 1x1 final map).
        self.avgpool_pre_head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(self.num_features, feature_dim, 1, bias=False),
            act_layer(),
        )
        self.head = nn.Linear(feature_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # As the official repo: truncated normal (std 0.02) for convs and the classifier.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.patch_embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool_pre_head(self.forward_features(x))
        return self.head(torch.flatten(x, 1))


# timm (timm/models/fasternet.py) regroups the stages: stages.i.downsample (i >= 1) is the merge
# layer that *precedes* block stage i, and the head is conv_head / classifier.
_TIMM_STAGE = re.compile(r"^stages\.(\d+)\.(downsample|blocks)\.(.*)$")
_TIMM_HEAD = {
    "conv_head.weight": "avgpool_pre_head.1.weight",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def remap_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Map an official-repo checkpoint (identity) or a timm FasterNet state dict onto ours.

    The layout is detected from the keys: timm's has ``conv_head.*`` / ``classifier.*`` /
    ``stages.N.downsample.*``; the official one has ``avgpool_pre_head.*`` / ``head.*``.
    """
    is_timm = any(
        k in _TIMM_HEAD or ".downsample." in k for k in state_dict
    ) and not any(k.startswith("avgpool_pre_head.") for k in state_dict)
    if not is_timm:
        return dict(state_dict)
    out: dict[str, Any] = {}
    for k, v in state_dict.items():
        if k in _TIMM_HEAD:
            out[_TIMM_HEAD[k]] = v
            continue
        m = _TIMM_STAGE.match(k)
        if m is None:  # patch_embed.* is named the same in both layouts
            out[k] = v
            continue
        i, kind, rest = int(m.group(1)), m.group(2), m.group(3)
        if kind == "downsample":
            # timm stage i's downsample = official merge layer 2i-1 (reduction/norm keep names).
            out[f"stages.{2 * i - 1}.{rest}"] = v
        else:
            out[f"stages.{2 * i}.blocks.{rest}"] = v
    return out


def _create_fasternet(
    num_classes: int, embed_dim: int, depths: tuple[int, ...], act: str, **kwargs: Any
) -> FasterNet:
    cfg = dict(embed_dim=embed_dim, depths=depths, act=act)
    return FasterNet(num_classes=num_classes, **{**cfg, **kwargs})


_PAPER = (
    "Chen et al., Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks, "
    "CVPR 2023 (arXiv:2303.03667)"
)
_WEIGHTS = (
    "github.com/JierunChen/FasterNet/releases/download/v1.0/{file} "
    "(official layout: patch_embed/stages.{{0..6}}/avgpool_pre_head/head; loads as is; timm "
    "layout stages.N.downsample/blocks + conv_head/classifier is remapped)"
)
# Params/MACs are the paper's figures (fvcore multiply-adds at 224). Our conv + linear count
# reproduces the repo README's slightly lower FLOPs (1.90/4.55/8.72/15.49G for T2..L) to the
# digit; the paper's are ~0.2-0.3% higher, presumably fvcore's BN/pooling/GELU extras.
# crop_pct 0.9 is test_crop_ratio in the configs (bicubic resize, as in timm's cfg).
_META = dict(family="fasternet", paper=_PAPER, crop_pct=0.9, remap_state_dict=remap_state_dict)


@register_model(
    params=3_900_000, macs=340_000_000, top1=71.9,
    weights=_WEIGHTS.format(file="fasternet_t0-epoch.281-val_acc1.71.9180.pth"), **_META,
)
def fasternet_t0(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_fasternet(num_classes, 40, (1, 2, 8, 2), "gelu", **kwargs)


@register_model(
    params=7_600_000, macs=850_000_000, top1=76.2,
    weights=_WEIGHTS.format(file="fasternet_t1-epoch.291-val_acc1.76.2180.pth"), **_META,
)
def fasternet_t1(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_fasternet(num_classes, 64, (1, 2, 8, 2), "gelu", **kwargs)


@register_model(
    params=15_000_000, macs=1_910_000_000, top1=78.9,
    weights=_WEIGHTS.format(file="fasternet_t2-epoch.289-val_acc1.78.8860.pth"), **_META,
)
def fasternet_t2(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_fasternet(num_classes, 96, (1, 2, 8, 2), "relu", **kwargs)


@register_model(
    params=31_100_000, macs=4_560_000_000, top1=81.3,
    weights=_WEIGHTS.format(file="fasternet_s-epoch.299-val_acc1.81.2840.pth"), **_META,
)
def fasternet_s(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_fasternet(num_classes, 128, (1, 2, 13, 2), "relu", **kwargs)


@register_model(
    params=53_500_000, macs=8_740_000_000, top1=83.0,
    weights=_WEIGHTS.format(file="fasternet_m-epoch.291-val_acc1.82.9620.pth"), **_META,
)
def fasternet_m(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_fasternet(num_classes, 144, (3, 4, 18, 3), "relu", **kwargs)


@register_model(
    params=93_400_000, macs=15_520_000_000, top1=83.5,
    weights=_WEIGHTS.format(file="fasternet_l-epoch.299-val_acc1.83.5060.pth"), **_META,
)
def fasternet_l(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_fasternet(num_classes, 192, (3, 4, 18, 3), "relu", **kwargs)
