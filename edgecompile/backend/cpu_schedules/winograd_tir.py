"""The two transforms of a Winograd F(m x m, 3x3) convolution (m = 2 or 4), written as vector TIR.

winograd.py turns a 3x3 stride-1 convolution into: input transform -> a grouped 1x1
convolution (a = m + 2: a^2 GEMMs, one per point of the a x a transformed tile, legalised and
scheduled like any other conv) -> output transform. The transforms are pure data movement plus
adds; written here by hand, because their natural vector is a row of m x m output tiles: the
input transform reads the padded rows with stride m (strided_loads.py makes those contiguous
loads and a permute) and the output transform writes each output row as the lane interleave of
its tiles' m columns. A TE compute of either vectorised by TVM would scalarise on the odd maps
(55, 27, 13: the last tile is partly outside) or gather.

Tiles along a row are taken ``n`` at a time, n a power of two up to the register width; the last
chunk of a row starts early and overlaps the one before it (it recomputes and rewrites the same
values), so every vector is whole (rules/common.overlapping_chunks). Shapes are NCHW, batch 1:
  x [1, C, H, W] -> V [1, a^2 C, tH, tW]   (channel t * C + c, t = a xi + nu)
  M [1, a^2 K, tH, tW] -> y [1, K, H, W]    (+ bias, optional ReLU)
with tH = ceil(H / m), tW = ceil(W / m). The matrices are Lavin and Gray's (2016); B^T d and
A^T M are spelled out with their shared terms (_bt, _at), and the tests check them against the
matrices themselves (BT, AT).
"""
from __future__ import annotations

import numpy as np
from tvm import s_tir, tirx

from .rules.common import overlapping_chunks
from .tags import OP_PATTERN_ATTR, OPAQUE, SCHEDULED_ATTR

F32 = "float32"

# B^T (input), G (weights, winograd.py) and A^T (output) of F(m x m, 3x3), by m.
BT = {2: np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
      4: np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)}
G = {2: np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
     4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)}
AT = {2: np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
      4: np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                   [0, 1, -1, 8, -8, 1]], np.float64)}


def tiles(h: int, w: int, m: int) -> tuple[int, int]:
    return -(-h // m), -(-w // m)


def _i(v: int) -> tirx.IntImm:
    return tirx.IntImm("int32", v)


def _row(buf, index: tuple, start, n: int) -> list:
    """Indices of n consecutive elements along the last axis of ``buf`` from ``start``."""
    return [*(_i(v) if isinstance(v, int) else v for v in index), tirx.Ramp(start, _i(1), _i(n))]


def _func(buffers: list[tirx.Buffer], body) -> tirx.PrimFunc:
    # Relax's passes read a kernel's root block (RewriteDataflowReshape); TVM's lowering drops it.
    root = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", body))
    func = tirx.PrimFunc(buffers, root)
    # op_pattern opaque: FuseOps fuses nothing into it (and TVM analyses no blocks it has not)
    return func.with_attrs({"tirx.noalias": True, SCHEDULED_ATTR: True, OP_PATTERN_ATTR: OPAQUE})


def _seq(stmts: list) -> tirx.Stmt:
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


def _bind(stmts: list, name: str, value):
    var = tirx.Var(name, value.ty)
    stmts.append(tirx.Bind(var, value))
    return var


def input_transform(c: int, h: int, w: int, lanes: int, m: int) -> tirx.PrimFunc:
    """V = B^T d B for every a x a window d at stride m of the input padded by one."""
    a = m + 2
    th, tw = tiles(h, w, m)
    n, tile_starts = overlapping_chunks(lanes, tw)
    # Each channel's plane inside a zero border: one row and column before the map, and after it
    # up to the last tile's window (rows m th + 1, columns m tw + 1 of the padded plane), so that
    # every window's a^2 vector loads are in bounds and read zeros outside the map.
    ph, pw = m * th + 2, m * tw + 2
    xbuf = tirx.decl_buffer((1, c, h, w), F32, "x")
    vbuf = tirx.decl_buffer((1, a * a * c, th, tw), F32, "V")
    pad = tirx.decl_buffer((ph * pw,), F32, "plane", scope="global")
    ch = tirx.Var("c", "int32")
    row = tirx.Var("r", "int32")
    ty = tirx.Var("y", "int32")
    zero = tirx.Var("z", "int32")

    zero_plane = tirx.For(zero, _i(0), _i(ph * pw), tirx.ForKind.SERIAL,
                          tirx.BufferStore(pad, tirx.FloatImm(F32, 0.0), [zero]))
    rn, row_starts = overlapping_chunks(lanes, w)
    copy_row = _seq([tirx.BufferStore(pad, tirx.BufferLoad(xbuf, _row(xbuf, (0, ch, row), s, rn)),
                                      [tirx.Ramp((row + 1) * pw + 1 + s, _i(1), _i(rn))])
                     for s in row_starts])
    copy = tirx.For(row, _i(0), _i(h), tirx.ForKind.SERIAL, copy_row)

    per_chunk = []
    for x0 in tile_starts:
        stmts: list = []
        d = [[_bind(stmts, f"d{i}{j}", tirx.BufferLoad(
            pad, [tirx.Ramp((m * ty + i) * pw + m * x0 + j, _i(m), _i(n))])) for j in range(a)]
            for i in range(a)]
        # B^T d B: along each window row (its columns), then along the rows.
        u = [[_bind(stmts, f"u{i}{k}", e) for k, e in enumerate(_bt(d[i], n))] for i in range(a)]
        for nu in range(a):
            for xi, value in enumerate(_bt([u[i][nu] for i in range(a)], n)):
                t = a * xi + nu
                stmts.append(tirx.BufferStore(vbuf, value, _row(vbuf, (0, t * c + ch, ty), x0, n)))
        per_chunk.append(_seq(stmts))
    rows = tirx.For(ty, _i(0), _i(th), tirx.ForKind.SERIAL, _seq(per_chunk))
    body = tirx.For(ch, _i(0), _i(c), tirx.ForKind.PARALLEL,
                    tirx.SeqStmt([tirx.AllocBuffer(pad), zero_plane, copy, rows]))
    return _func([xbuf, vbuf], body)


def _times(v, coef: float, n: int):
    return v * tirx.Broadcast(tirx.FloatImm(F32, coef), _i(n))


def _bt(v: list, n: int) -> list:
    """B^T v for a column v of a (= 4 or 6) vectors of n lanes."""
    if len(v) == 4:
        return [v[0] - v[2], v[1] + v[2], v[2] - v[1], v[1] - v[3]]
    p, q = v[4] - _times(v[2], 4, n), v[3] - _times(v[1], 4, n)
    r, s = v[4] - v[2], _times(v[3] - v[1], 2, n)
    return [_times(v[0], 4, n) - _times(v[2], 5, n) + v[4], p + q, p - q, r + s, r - s,
            _times(v[1], 4, n) - _times(v[3], 5, n) + v[5]]


def _at(v: list, n: int) -> list:
    """A^T v for a column v of a (= 4 or 6) vectors of n lanes."""
    if len(v) == 4:
        return [v[0] + v[1] + v[2], v[1] - v[2] - v[3]]
    p, q, r, s = v[1] + v[2], v[1] - v[2], v[3] + v[4], v[3] - v[4]
    return [v[0] + p + r, q + _times(s, 2, n), p + _times(r, 4, n), q + _times(s, 8, n) + v[5]]


def output_transform(k: int, h: int, w: int, lanes: int, relu: bool, m: int) -> tirx.PrimFunc:
    """y = A^T M A (+ bias, ReLU) for every tile; a tile row's m output rows written whole."""
    a = m + 2
    th, tw = tiles(h, w, m)
    n, tile_starts = overlapping_chunks(lanes, tw)
    mbuf = tirx.decl_buffer((1, a * a * k, th, tw), F32, "M")
    bbuf = tirx.decl_buffer((k,), F32, "bias")
    ybuf = tirx.decl_buffer((1, k, h, w), F32, "y")
    ch = tirx.Var("k", "int32")
    ty = tirx.Var("y", "int32")

    per_chunk = []
    for x0 in tile_starts:
        stmts: list = []
        mv = [[_bind(stmts, f"m{xi}{nu}", tirx.BufferLoad(
            mbuf, _row(mbuf, (0, (a * xi + nu) * k + ch, ty), x0, n)))
               for nu in range(a)] for xi in range(a)]
        # A^T M A: along xi (rows of the tile), then along nu (columns).
        s = [[_bind(stmts, f"s{i}{nu}", e) for nu, e in enumerate(col)]
             for i, col in enumerate(zip(*[_at([mv[xi][nu] for xi in range(a)], n) for nu in range(a)],
                                         strict=True))]
        width = min(m * n, w - m * x0)  # the last chunk of a row the tiles overhang drops columns
        bias = tirx.Broadcast(tirx.BufferLoad(bbuf, [ch]), _i(n))
        for i in range(m):
            cols = [_act(e + bias, relu, n) for e in _at(s[i], n)]
            # lane l of the row: column l % m of tile l // m
            value = tirx.Shuffle(cols, [_i(lane // m + (lane % m) * n) for lane in range(width)])
            store = tirx.BufferStore(ybuf, value, _row(ybuf, (0, ch, m * ty + i), m * x0, width))
            if h % m and i >= h % m:  # the last tile row overhangs the map
                store = tirx.IfThenElse(m * ty + i < h, store, None)
            stmts.append(store)
        per_chunk.append(_seq(stmts))
    rows = tirx.For(ty, _i(0), _i(th), tirx.ForKind.SERIAL, _seq(per_chunk))
    body = tirx.For(ch, _i(0), _i(k), tirx.ForKind.PARALLEL, rows)
    return _func([mbuf, bbuf, ybuf], body)


def _act(e, relu: bool, n: int):
    return tirx.Max(e, tirx.Broadcast(tirx.FloatImm(F32, 0.0), _i(n))) if relu else e
