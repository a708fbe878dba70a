"""The reference initialisation shared by the torchvision-style families.

He-normal (fan-out) convolutions, BatchNorm at identity, classifier N(0, 0.01), zero biases:
what torchvision's MobileNetV2 / ShuffleNetV2 and the megvii / MobileNeXt references use for
training from scratch. (Published or our trained weights replace it; parity tests use
edgecompile.weights.init_for_parity.)
"""

from __future__ import annotations

from torch import nn


def init_reference_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
