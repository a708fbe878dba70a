"""Image preprocessing as timm / torchvision evaluate: resize, centre crop, scale, normalise.

The shorter side is resized (bilinear) to ``round(input_size / crop_pct)``, the centre
``input_size`` square is cut out, pixels go to [0, 1] and are normalised with the variant's
mean / std. Training scripts use this same function, so evaluation sees exactly what training
saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Preprocess:
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]
    crop_pct: float = 0.875

    @classmethod
    def from_manifest(cls, manifest: dict) -> Preprocess:
        i = manifest["input"]
        return cls(input_size=i["shape"][-1], mean=tuple(i["mean"]), std=tuple(i["std"]),
                   crop_pct=i.get("crop_pct", 0.875))

    def __call__(self, path: Path) -> np.ndarray:
        """(3, input_size, input_size) float32; raises OSError/ValueError on a bad image."""
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            scale_to = int(round(self.input_size / self.crop_pct))
            w, h = im.size
            if w <= h:
                size = (scale_to, max(1, int(round(h * scale_to / w))))
            else:
                size = (max(1, int(round(w * scale_to / h))), scale_to)
            im = im.resize(size, Image.BILINEAR)
            left = (size[0] - self.input_size) // 2
            top = (size[1] - self.input_size) // 2
            im = im.crop((left, top, left + self.input_size, top + self.input_size))
            x = np.asarray(im, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))
