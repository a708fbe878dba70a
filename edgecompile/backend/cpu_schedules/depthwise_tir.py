"""3x3 depthwise convolutions (padding 1, NCHW, stride 2 or 1), written as vector TIR.

The rules' window schedule builds a padded plane per channel with its columns de-interleaved
(even, odd: planes.py), then runs the window along contiguous rows of it. That copy was half of
the layer's time, and ONNX Runtime's NCHWc kernel needs none: a stride-2 depthwise layer ran
2.0-2.2x ONNX Runtime's time inside MobileNeXt (192 @56, 288 @28) and 1.4x inside MobileNet v2
(96 @112) on a Zen 4. Here each input row is read once per output row that needs it, as two
contiguous vectors of 2n columns, and split in registers: even columns (tap 1), odd columns
(tap 2) and the odd columns moved one lane right with the previous chunk's last one (tap 0, the
column left of the window; zero left of the map). No plane, no copy, no padding stored:
the top padding row is the first output row's, peeled; an even map has no bottom or right
padding that a window reads.

x [1, C, H, W] (H, W even), weights [C, 9] (ky * 3 + kx), bias [C] -> y [1, C, H/2, W/2],
with the bias and an optional clamp (ReLU, ReLU6) in its stores.

Stride 1 the same way: each window row is three loads of n columns (left, middle, right:
unaligned loads of the row itself), the map's edge columns shifted in as zeros, the top and
bottom rows peeled (their padding rows skipped); the residual add of a block (MobileNeXt's
second depthwise) can be in its stores too. The rules' kernel copied each channel's padded
plane first: alone, one Zen 4 thread, 192 @28 55 -> 39 us, 32 @112 135 -> 96, 144 @56 145 ->
123, 384 @14 30 -> 21, 288 @14 23 -> 16.
"""
from __future__ import annotations

from tvm import tirx

from .rules.common import overlapping_chunks
from .winograd_tir import F32, _func, _i, _row, _seq


def left_column(x0: int, n: int) -> tuple[int, int]:
    """(start, lane): the n columns from ``start`` hold column 2 x0 - 1 at ``lane``; they end at
    2 x0 where the row has room before, else start at the row's first column: a chunk that
    overlaps the one before it (x0 < n) must not read before its row (the map's first row:
    before the tensor)."""
    start = max(2 * x0 - n, 0)
    return start, 2 * x0 - 1 - start


def _clamp(acc, lo: float | None, hi: float | None, n: int):
    if lo is not None:
        acc = tirx.Max(acc, tirx.Broadcast(tirx.FloatImm(F32, lo), _i(n)))
    if hi is not None:
        acc = tirx.Min(acc, tirx.Broadcast(tirx.FloatImm(F32, hi), _i(n)))
    return acc


def depthwise_s2(c: int, h: int, w: int, lanes: int, lo: float | None, hi: float | None) -> tirx.PrimFunc:
    ho, wo = h // 2, w // 2
    n, starts = overlapping_chunks(lanes, wo)
    xbuf = tirx.decl_buffer((1, c, h, w), F32, "x")
    wbuf = tirx.decl_buffer((c, 9), F32, "weights")
    bbuf = tirx.decl_buffer((c,), F32, "bias")
    ybuf = tirx.decl_buffer((1, c, ho, wo), F32, "y")
    ch = tirx.Var("c", "int32")
    ty = tirx.Var("y", "int32")
    even = [_i(2 * j) for j in range(n)]
    odd = [_i(2 * j + 1) for j in range(n)]
    zero = tirx.Broadcast(tirx.FloatImm(F32, 0.0), _i(n))

    def tap(ky: int, kx: int):
        return tirx.Broadcast(tirx.BufferLoad(wbuf, [ch, _i(ky * 3 + kx)]), _i(n))

    def row(y, top: bool) -> tirx.Stmt:
        """Output row y: every chunk of n columns; top: y = 0, whose first window row is padding."""
        stmts = []
        for x0 in starts:
            acc = tirx.Broadcast(tirx.BufferLoad(bbuf, [ch]), _i(n))
            for ky in range(1 if top else 0, 3):
                r = 2 * y + (ky - 1)
                lo_v = tirx.BufferLoad(xbuf, _row(xbuf, (0, ch, r), 2 * x0, n))
                hi_v = tirx.BufferLoad(xbuf, _row(xbuf, (0, ch, r), 2 * x0 + n, n))
                ev = tirx.Shuffle([lo_v, hi_v], even)
                od = tirx.Shuffle([lo_v, hi_v], odd)
                # Column 2x - 1: the odd columns one lane right, the chunk's first from column
                # 2 x0 - 1 (a lane of n columns loaded before 2 x0), zero at the map's edge.
                if x0 == 0:
                    before, lane = zero, 0
                else:
                    start, lane = left_column(x0, n)
                    before = tirx.BufferLoad(xbuf, _row(xbuf, (0, ch, r), start, n))
                left = tirx.Shuffle([before, od], [_i(lane)] + [_i(n + j) for j in range(n - 1)])
                acc = acc + left * tap(ky, 0) + ev * tap(ky, 1) + od * tap(ky, 2)
            stmts.append(tirx.BufferStore(ybuf, _clamp(acc, lo, hi, n), _row(ybuf, (0, ch, y), x0, n)))
        return _seq(stmts)

    rows = [row(_i(0), True)]
    if ho > 1:
        rows.append(tirx.For(ty, _i(1), _i(ho - 1), tirx.ForKind.SERIAL, row(ty, False)))
    body = tirx.For(ch, _i(0), _i(c), tirx.ForKind.PARALLEL, _seq(rows))
    return _func([xbuf, wbuf, bbuf, ybuf], body)


def depthwise_s1(c: int, h: int, w: int, lanes: int, lo: float | None, hi: float | None,
                 residual: bool) -> tirx.PrimFunc:
    """x [1, C, H, W] (H >= 2), weights [C, 9], bias [C] (, residual [1, C, H, W]) -> y [1, C, H, W]."""
    n, starts = overlapping_chunks(lanes, w)
    xbuf = tirx.decl_buffer((1, c, h, w), F32, "x")
    wbuf = tirx.decl_buffer((c, 9), F32, "weights")
    bbuf = tirx.decl_buffer((c,), F32, "bias")
    rbuf = tirx.decl_buffer((1, c, h, w), F32, "residual")
    ybuf = tirx.decl_buffer((1, c, h, w), F32, "y")
    ch = tirx.Var("c", "int32")
    ty = tirx.Var("y", "int32")
    zero = tirx.Broadcast(tirx.FloatImm(F32, 0.0), _i(n))

    def tap(ky: int, kx: int):
        return tirx.Broadcast(tirx.BufferLoad(wbuf, [ch, _i(ky * 3 + kx)]), _i(n))

    def row(y, kys: tuple[int, ...]) -> tirx.Stmt:
        """Output row y from the window rows kys (the first and last rows skip their padding)."""
        stmts = []
        for x0 in starts:
            acc = tirx.Broadcast(tirx.BufferLoad(bbuf, [ch]), _i(n))
            for ky in kys:
                r = y + (ky - 1)
                mid = tirx.BufferLoad(xbuf, _row(xbuf, (0, ch, r), x0, n))
                left = (tirx.Shuffle([zero, mid], [_i(n - 1 + j) for j in range(n)]) if x0 == 0
                        else tirx.BufferLoad(xbuf, _row(xbuf, (0, ch, r), x0 - 1, n)))
                right = (tirx.Shuffle([mid, zero], [_i(1 + j) for j in range(n)]) if x0 + n == w
                         else tirx.BufferLoad(xbuf, _row(xbuf, (0, ch, r), x0 + 1, n)))
                acc = acc + left * tap(ky, 0) + mid * tap(ky, 1) + right * tap(ky, 2)
            if residual:
                acc = acc + tirx.BufferLoad(rbuf, _row(rbuf, (0, ch, y), x0, n))
            stmts.append(tirx.BufferStore(ybuf, _clamp(acc, lo, hi, n), _row(ybuf, (0, ch, y), x0, n)))
        return _seq(stmts)

    rows = [row(_i(0), (1, 2))]
    if h > 2:
        rows.append(tirx.For(ty, _i(1), _i(h - 2), tirx.ForKind.SERIAL, row(ty, (0, 1, 2))))
    rows.append(row(_i(h - 1), (0, 1)))
    body = tirx.For(ch, _i(0), _i(c), tirx.ForKind.PARALLEL, _seq(rows))
    return _func([xbuf, wbuf, bbuf] + ([rbuf] if residual else []) + [ybuf], body)
