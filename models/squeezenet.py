"""SqueezeNet 1.0 and 1.1 (Iandola et al., arXiv:1602.07360).

Layout and module names follow torchvision (``features.N.*``, ``classifier.1.*``), so
torchvision's ImageNet checkpoints load with identical keys and the reference parameter
counts (1,248,424 / 1,235,496) are matched exactly.

The network is all convolutions: the classifier is a 1x1 conv to ``num_classes`` channels
followed by a ReLU and a global average pool, so any input from ~21 px (1.0) / ~17 px (1.1)
upwards works. Max-pools use ``ceil_mode=True`` as in the Caffe original; ONNX ``MaxPool``
supports ``ceil_mode`` since opset 10.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._registry import register_model

__all__ = ["Fire", "SqueezeNet", "squeezenet1_0", "squeezenet1_1"]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class Fire(nn.Module):
    """Fire module: a 1x1 "squeeze" conv, then parallel 1x1 and 3x3 "expand" convs concatenated.

    The squeeze layer cuts the channels the 3x3 filters see (the paper's strategy 2), and
    replacing most 3x3 filters with 1x1 ones is strategy 1; both are how SqueezeNet gets
    AlexNet accuracy with ~50x fewer parameters.
    """

    def __init__(self, in_chs: int, squeeze_chs: int, expand1x1_chs: int, expand3x3_chs: int):
        super().__init__()
        self.in_chs = in_chs
        self.out_chs = expand1x1_chs + expand3x3_chs
        # Attribute names are torchvision's: they are the checkpoint keys.
        self.squeeze = nn.Conv2d(in_chs, squeeze_chs, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_chs, expand1x1_chs, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_chs, expand3x3_chs, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        a = self.expand1x1_activation(self.expand1x1(x))
        b = self.expand3x3_activation(self.expand3x3(x))
        return torch.cat([a, b], dim=1)


def _pool() -> nn.MaxPool2d:
    # ceil_mode=True reproduces Caffe's pooling arithmetic, which the published weights and the
    # torchvision layout assume (spatial sizes 55 -> 27 -> 13 at 224 for 1.0).
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------

# Fire configs: (in, squeeze, expand1x1, expand3x3); "M" marks a max-pool. The index of each
# entry in ``features`` is fixed by this list, so it must not be reordered (checkpoint keys).
_CFGS: dict[str, dict[str, Any]] = {
    # SqueezeNet 1.0 (paper Table 1): 7x7/2 stem with 96 filters, pools after fire4 and fire8.
    "1_0": {
        "stem": (96, 7),
        "layers": [
            "M",
            (96, 16, 64, 64),
            (128, 16, 64, 64),
            (128, 32, 128, 128),
            "M",
            (256, 32, 128, 128),
            (256, 48, 192, 192),
            (384, 48, 192, 192),
            (384, 64, 256, 256),
            "M",
            (512, 64, 256, 256),
        ],
    },
    # SqueezeNet 1.1 (DeepScale repo): 3x3/2 stem with 64 filters and the pools moved earlier
    # (after fire3 and fire5), which cuts compute 2.4x at the same accuracy.
    "1_1": {
        "stem": (64, 3),
        "layers": [
            "M",
            (64, 16, 64, 64),
            (128, 16, 64, 64),
            "M",
            (128, 32, 128, 128),
            (256, 32, 128, 128),
            "M",
            (256, 48, 192, 192),
            (384, 48, 192, 192),
            (384, 64, 256, 256),
            (512, 64, 256, 256),
        ],
    },
}


class SqueezeNet(nn.Module):
    """SqueezeNet with torchvision's module layout.

    ``features``: stem conv (0), ReLU (1), then pools and Fire modules as in ``_CFGS``.
    ``classifier``: Dropout (0), 1x1 conv to classes (1), ReLU (2), global avg pool (3).
    """

    def __init__(self, version: str = "1_0", num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        if version not in _CFGS:
            raise ValueError(f"unknown SqueezeNet version '{version}', expected {list(_CFGS)}")
        cfg = _CFGS[version]
        self.num_classes = num_classes
        stem_chs, stem_k = cfg["stem"]
        layers: list[nn.Module] = [
            nn.Conv2d(3, stem_chs, kernel_size=stem_k, stride=2),  # no padding, as in Caffe
            nn.ReLU(inplace=True),
        ]
        for entry in cfg["layers"]:
            layers.append(_pool() if entry == "M" else Fire(*entry))
        self.features = nn.Sequential(*layers)

        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        # The classifier is a conv + global average pool (no FC layer): the paper's
        # "no fully-connected layers" design, which also makes the net resolution-agnostic.
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            final_conv,
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        self._init_weights(final_conv)

    def _init_weights(self, final_conv: nn.Conv2d) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    # Small init on the class conv keeps the post-ReLU logits from dying early.
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)


# --------------------------------------------------------------------------------------------
# Builder and registered variants
# --------------------------------------------------------------------------------------------


def _remap_torchvision(state_dict: dict[str, Any]) -> dict[str, Any]:
    """torchvision checkpoints already use our key names: identity (returns a shallow copy)."""
    return dict(state_dict)


def _create_squeezenet(version: str, num_classes: int, **kwargs: Any) -> SqueezeNet:
    return SqueezeNet(version=version, num_classes=num_classes, **kwargs)


_PAPER = ("Iandola et al., SqueezeNet: AlexNet-level accuracy with 50x fewer parameters, "
          "arXiv:1602.07360")


# params / MACs / top-1 are torchvision's published figures for the weights we point to
# (the paper gives 57.5% top-1 for 1.0 and no figures for 1.1, which came later in the
# DeepScale repo). torchvision's "GFLOPS" are multiply-adds of conv layers, our convention.
@register_model(
    family="squeezenet",
    params=1_248_424,
    params_exact=True,
    macs=819_000_000,
    top1=58.092,
    paper=_PAPER,
    weights="torchvision SqueezeNet1_0_Weights.IMAGENET1K_V1 (torchvision keys, identity remap)",
    remap_state_dict=_remap_torchvision,
)
def squeezenet1_0(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_squeezenet("1_0", num_classes, **kwargs)


@register_model(
    family="squeezenet",
    params=1_235_496,
    params_exact=True,
    macs=349_000_000,
    top1=58.178,
    paper=_PAPER + " (v1.1: github.com/DeepScale/SqueezeNet)",
    weights="torchvision SqueezeNet1_1_Weights.IMAGENET1K_V1 (torchvision keys, identity remap)",
    remap_state_dict=_remap_torchvision,
)
def squeezenet1_1(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    return _create_squeezenet("1_1", num_classes, **kwargs)
