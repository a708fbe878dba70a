"""The two transforms of a Winograd F(2x2, 3x3) convolution, written as vector TIR.

winograd.py turns a 3x3 stride-1 convolution into: input transform -> a grouped 1x1
convolution (16 GEMMs, one per point of the 4x4 transformed tile, legalised and scheduled like
any other conv) -> output transform. The transforms are pure data movement plus adds; written
here by hand, because their natural vector is a row of 2x2 output tiles: the input transform
reads the padded rows with stride 2 (strided_loads.py makes those contiguous loads and a
permute) and the output transform writes each output row as the lane interleave of its tiles'
even and odd columns. A TE compute of either vectorised by TVM would scalarise on the odd maps
(55, 27, 13: the last tile is half outside) or gather.

Tiles along a row are taken ``n`` at a time, n a power of two up to the register width; the last
chunk of a row starts early and overlaps the one before it (it recomputes and rewrites the same
values), so every vector is whole (rules/common.overlapping_chunks). Shapes are NCHW, batch 1:
  x [1, C, H, W] -> V [1, 16 C, tH, tW]   (channel t * C + c, t = 4 xi + nu)
  M [1, 16 K, tH, tW] -> y [1, K, H, W]    (+ bias, optional ReLU)
with tH = ceil(H / 2), tW = ceil(W / 2).
"""
from __future__ import annotations

from tvm import s_tir, tirx

from .rules.common import overlapping_chunks
from .tags import OP_PATTERN_ATTR, OPAQUE, SCHEDULED_ATTR

F32 = "float32"


def tiles(h: int, w: int) -> tuple[int, int]:
    return -(-h // 2), -(-w // 2)


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


def input_transform(c: int, h: int, w: int, lanes: int) -> tirx.PrimFunc:
    """V = B^T d B for every 4x4 window d at stride 2 of the input padded by one."""
    th, tw = tiles(h, w)
    n, tile_starts = overlapping_chunks(lanes, tw)
    # Each channel's plane inside a zero border: one row and column before the map, and after it
    # up to the last tile's window (rows 2 th + 1, columns 2 tw + 1 of the padded plane), so that
    # every window's 16 vector loads are in bounds and read zeros outside the map.
    ph, pw = 2 * th + 2, 2 * tw + 2
    xbuf = tirx.decl_buffer((1, c, h, w), F32, "x")
    vbuf = tirx.decl_buffer((1, 16 * c, th, tw), F32, "V")
    pad = tirx.decl_buffer((ph * pw,), F32, "plane", scope="global")
    ch = tirx.Var("c", "int32")
    row = tirx.Var("r", "int32")
    ty = tirx.Var("y", "int32")
    zero = tirx.Var("z", "int32")

    zero_plane = tirx.For(zero, _i(0), _i(ph * pw), tirx.ForKind.SERIAL,
                          tirx.BufferStore(pad, tirx.FloatImm(F32, 0.0), [zero]))
    m, row_starts = overlapping_chunks(lanes, w)
    copy_row = _seq([tirx.BufferStore(pad, tirx.BufferLoad(xbuf, _row(xbuf, (0, ch, row), s, m)),
                                      [tirx.Ramp((row + 1) * pw + 1 + s, _i(1), _i(m))])
                     for s in row_starts])
    copy = tirx.For(row, _i(0), _i(h), tirx.ForKind.SERIAL, copy_row)

    per_chunk = []
    for x0 in tile_starts:
        stmts: list = []
        d = [[_bind(stmts, f"d{i}{j}", tirx.BufferLoad(
            pad, [tirx.Ramp((2 * ty + i) * pw + 2 * x0 + j, _i(2), _i(n))])) for j in range(4)]
            for i in range(4)]
        # B^T d B with B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]: columns, then rows.
        u = [[_bind(stmts, f"u{i}{k}", e) for k, e in enumerate(_bt(d[i]))] for i in range(4)]
        for nu in range(4):
            for xi, value in enumerate(_bt([u[i][nu] for i in range(4)])):
                t = 4 * xi + nu
                stmts.append(tirx.BufferStore(vbuf, value, _row(vbuf, (0, t * c + ch, ty), x0, n)))
        per_chunk.append(_seq(stmts))
    rows = tirx.For(ty, _i(0), _i(th), tirx.ForKind.SERIAL, _seq(per_chunk))
    body = tirx.For(ch, _i(0), _i(c), tirx.ForKind.PARALLEL,
                    tirx.SeqStmt([tirx.AllocBuffer(pad), zero_plane, copy, rows]))
    return _func([xbuf, vbuf], body)


def _bt(v: list) -> list:
    return [v[0] - v[2], v[1] + v[2], v[2] - v[1], v[1] - v[3]]


def _at(v: list) -> list:
    return [v[0] + v[1] + v[2], v[1] - v[2] - v[3]]


def output_transform(k: int, h: int, w: int, lanes: int, relu: bool) -> tirx.PrimFunc:
    """y = A^T M A (+ bias, ReLU) for every tile; a tile row's two output rows written whole."""
    th, tw = tiles(h, w)
    n, tile_starts = overlapping_chunks(lanes, tw)
    mbuf = tirx.decl_buffer((1, 16 * k, th, tw), F32, "M")
    bbuf = tirx.decl_buffer((k,), F32, "bias")
    ybuf = tirx.decl_buffer((1, k, h, w), F32, "y")
    ch = tirx.Var("k", "int32")
    ty = tirx.Var("y", "int32")

    per_chunk = []
    for x0 in tile_starts:
        stmts: list = []
        mv = [[_bind(stmts, f"m{xi}{nu}", tirx.BufferLoad(
            mbuf, _row(mbuf, (0, (4 * xi + nu) * k + ch, ty), x0, n)))
               for nu in range(4)] for xi in range(4)]
        # A^T = [[1,1,1,0],[0,1,-1,-1]]: along xi (rows of the tile), then along nu (columns).
        s = [[_bind(stmts, f"s{i}{nu}", e) for nu, e in enumerate(col)]
             for i, col in enumerate(zip(*[_at([mv[xi][nu] for xi in range(4)]) for nu in range(4)],
                                         strict=True))]
        width = min(2 * n, w - 2 * x0)  # the last chunk of an odd row drops its last column
        bias = tirx.Broadcast(tirx.BufferLoad(bbuf, [ch]), _i(n))
        for i in range(2):
            even, odd = (_act(e + bias, relu, n) for e in _at(s[i]))
            value = tirx.Shuffle([even, odd], [_i(lane // 2 + (lane % 2) * n) for lane in range(width)])
            store = tirx.BufferStore(ybuf, value, _row(ybuf, (0, ch, 2 * ty + i), 2 * x0, width))
            if i == 1 and h % 2:
                store = tirx.IfThenElse(2 * ty + 1 < h, store, None)
            stmts.append(store)
        per_chunk.append(_seq(stmts))
    rows = tirx.For(ty, _i(0), _i(th), tirx.ForKind.SERIAL, _seq(per_chunk))
    body = tirx.For(ch, _i(0), _i(k), tirx.ForKind.PARALLEL, rows)
    return _func([mbuf, bbuf, ybuf], body)


def _act(e, relu: bool, n: int):
    return tirx.Max(e, tirx.Broadcast(tirx.FloatImm(F32, 0.0), _i(n))) if relu else e
