"""How outputs are compared between PyTorch, ONNX Runtime and TVM, and why these tolerances.

All three run the same float32 graph, but sum in different orders (im2col vs direct conv,
blocked reductions, BN folded into weights in float64 then rounded), so logits differ by
float32 rounding accumulated over the network's depth: ~1e-6 relative per layer, i.e. around
1e-5 of the logits' scale after 50-100 layers. We allow 1e-4 of the logits' scale (plus 1e-5
absolute for logits near zero): ten times the expected drift, far below any real bug (a
mis-folded BN or a wrong layout moves logits by O(1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RTOL = 1e-4  # of max |reference logit|
ATOL = 1e-5


@dataclass(frozen=True)
class Comparison:
    max_abs_diff: float
    scale: float  # max |reference|
    top1_agreement: float  # fraction of samples whose argmax agrees
    samples: int

    @property
    def tolerance(self) -> float:
        return ATOL + RTOL * self.scale

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        return (f"max abs diff {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}, "
                f"logit scale {self.scale:.3g}), top-1 agreement "
                f"{self.top1_agreement * 100:.1f}% over {self.samples} inputs")


def compare(reference: np.ndarray, actual: np.ndarray) -> Comparison:
    """Compare (N, classes) logits: N independent inputs."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    act = np.asarray(actual, dtype=np.float64).reshape(len(actual), -1)
    return Comparison(
        max_abs_diff=float(np.abs(ref - act).max()),
        scale=float(np.abs(ref).max()),
        top1_agreement=float((ref.argmax(1) == act.argmax(1)).mean()),
        samples=len(ref),
    )


def parity_inputs(n: int, shape: tuple[int, ...], seed: int = 1234) -> np.ndarray:
    """n image-like inputs (C, H, W), about zero mean and unit variance, one per row.

    Pure i.i.d. noise is a poor test input: global average pooling averages it away, so every
    sample gives nearly the same logits and a parity check compares constants. Like real
    images, these have coarse structure (4x4 blocks), a per-sample colour cast, and fine detail.
    """
    rng = np.random.default_rng(seed)
    c, h, w = shape
    coarse = rng.standard_normal((n, c, 4, 4))
    coarse = coarse.repeat(-(-h // 4), axis=2)[:, :, :h].repeat(-(-w // 4), axis=3)[:, :, :, :w]
    cast = rng.standard_normal((n, c, 1, 1)) * 0.5
    fine = rng.standard_normal((n, c, h, w))
    return (0.6 * coarse + 0.6 * fine + cast).astype(np.float32)
