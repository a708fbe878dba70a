"""An unpadded max pool as two passes over the rows, as a TE compute (legalize.py picks it,
rules/pool_separable.py schedules it).

A k x k window of stride s is a max over k rows, then over k columns of that: for each output
row, its k input rows are combined once, as contiguous vectors along the input row, and the
stride-s columns are taken from that row of maxima in L1. TOPI's single window reduction reads all
k x k taps with stride-s vector loads: a contiguous load and a lane shuffle each
(strided_loads.py), on 11-lane vectors for SqueezeNet's 55-wide rows (8 + 2 + 1 pieces), nine
times per output vector. Only pools with no padding (SqueezeNet's ceil-mode pools are floor-mode
ones, see legalize.py): with padding, the rows' border would need the plane the window rule
builds.
"""
from __future__ import annotations

import functools

from tvm import te, tirx

from .tags import POOL_COLS_TAG, POOL_ROWS_TAG


def separable_max_pool(data: te.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> te.Tensor:
    """max over a (kh, kw) window of stride (sh, sw), no padding, of NCHW ``data``."""
    (kh, kw), (sh, sw) = kernel, stride
    n, c, h, w = (int(d) for d in data.shape)
    h_out, w_out = (h - kh) // sh + 1, (w - kw) // sw + 1
    used = sw * (w_out - 1) + kw  # input columns some window reads
    # Spelled out as k-term maxima, not reductions: no init to split off, so each row can be
    # vectorised as whole registers plus one shorter vector (a partitioned reduction cannot).
    rows = te.compute((n, c, h_out, used), lambda b, ch, y, x: functools.reduce(
        tirx.max, [data[b, ch, y * sh + i, x] for i in range(kh)]), name=POOL_ROWS_TAG)
    return te.compute((n, c, h_out, w_out), lambda b, ch, y, x: functools.reduce(
        tirx.max, [rows[b, ch, y, x * sw + j] for j in range(kw)]), name=POOL_COLS_TAG)
