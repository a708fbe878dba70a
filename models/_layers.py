"""Small helpers shared by the model definitions."""

from __future__ import annotations


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never more than 10% below ``v``.

    The TF-slim rule the MobileNet references (TF-slim, torchvision, timm) and MobileNeXt use
    for scaled channel counts, so every layer stays a multiple of 8 (SIMD-friendly). E.g. at
    width 0.35 MobileNetV2's 32-channel stage gets 16 channels, not 8: rounding 11.2 down to 8
    would lose more than 10%. For MobileNetV1's four published widths every count is already a
    multiple of 8, so there it only matters for custom multipliers.
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v
