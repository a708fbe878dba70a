"""The padded input plane of a window convolution (depthwise, pooling, strided or k x k):
how many of its rows are built at once, its de-interleaved layout for a stride > 1, and the
copy that builds it (conv.py schedules the window itself)."""
from __future__ import annotations

from tvm import s_tir
from tvm.sym import detect_linear_equation

from .common import int_extent, largest_divisor, maybe_parallel, split_vector, type_is, written_elements
from .tails import _vec_tail

# Bytes of a window kernel's padded plane (or band of it) that should stay in L1 (32-48 KB).
PLANE_BAND_BYTES = 16 * 1024


def plane_band(sch: s_tir.Schedule, pad, h_out: int, stride: int, kh: int) -> int:
    """Output rows per band of a depthwise or pooling window whose padded input plane is built
    band by band: the whole plane (h_out when it fits PLANE_BAND_BYTES), else the largest
    divisor of h_out whose input rows fit. A divisor: a partial band adds a guard to each row."""
    shape = [int(d) for d in sch.get(pad).writes[0].source.shape]
    row_bytes = 4
    for d in shape[3:]:
        row_bytes *= d
    # r output rows read (r - 1) * stride + kh input rows.
    most = (PLANE_BAND_BYTES // row_bytes - kh) // stride + 1
    if shape[2] * row_bytes <= PLANE_BAND_BYTES or most < 1:
        return h_out
    return largest_divisor(h_out, most)


def _row_bands(rows: int, planes: int, cores: int) -> int:
    """Row bands per plane so that a parallel loop over planes x bands has at least 4 iterations
    per core (an even split at 2-4 threads); 1 when the planes alone do. A divisor of the rows:
    a non-dividing band would add a guard to every row of the copy."""
    if cores < 2 or planes >= 4 * cores:
        return 1
    want = -(-4 * cores // planes)
    return min((d for d in range(want, rows + 1) if rows % d == 0), default=1)


def deinterleave(sch: s_tir.Schedule, pad, stride: int) -> None:
    """Store the padded input as [.., h, w % s, w // s] for a stride-s window.

    Output column x then reads column s*x + k, i.e. plane (k % s) at x + k // s: contiguous in x, so
    the vector loads stay plain loads (a stride-2 vector load is scalarised by TVM's codegen:
    measured 12 GFLOP/s on a stride-2 depthwise vs 50 at stride 1).
    """
    if stride <= 1:
        return
    width = int(sch.get(pad).writes[0].source.shape[3])
    if width % stride:
        return
    sch.transform_layout(pad, ("write", 0), lambda n, c, h, w: (n, c, h, w % stride, w // stride))


def align_phase_rows(sch: s_tir.Schedule, block, stride: int, lanes: int, plane_rows: int | None) -> None:
    """Start each phase row of a de-interleaved plane (written by ``block``) on a whole vector,
    unless that takes a per-channel plane of ``plane_rows`` past PLANE_BAND_BYTES. Alone, one Zen 4
    thread: stride-2 depthwise on 14 x 14 maps 1.65-1.7x faster (576 @14 27.1 -> 16.4 us, 1280
    59.8 -> 35.5), 96 @112 ~7%, 28 maps +-4%; but 192 @56, whose plane grows 15 -> 22 KB, 1.1x
    slower inside MobileNeXt."""
    shape = [int(d) for d in sch.get(block).writes[0].source.shape]
    if stride < 2 or len(shape) != 5:
        return
    aligned = -(-shape[4] // lanes) * lanes
    if plane_rows is None or plane_rows * shape[3] * aligned * 4 <= PLANE_BAND_BYTES:
        sch.storage_align(block, 0, 3, lanes, 0)


def vector_deinterleave(sch: s_tir.Schedule, pad, stride: int, lanes: int,
                         may_partition: bool = False, plane_rows: int | None = None) -> bool:
    """Build the de-interleaved plane as a fill (zero; -inf for max pooling) plus a copy
    vectorised along each phase row.

    Input column w = s * j + q lands in plane column w + left, i.e. phase (q + left) % s at
    j + (q + left) // s: for each q, one contiguous run of the plane, read as x[s * j + q], a
    stride-s vector load that strided_loads.py turns into a contiguous load and a shuffle. (The
    scalar, branching copy had taken 3 of the 5 us per channel of a 144 @56 stride-2 depthwise:
    2.0x ONNX Runtime's time for the layer, now 1.1x.) Needs the input width to be a multiple
    of the stride, so that every q has as many columns; returns False, changing nothing, when
    it is not (or the block is not a padded copy).
    """
    if stride <= 1:
        return False
    blk = sch.get(pad)
    if len(blk.reads) != 1 or len(blk.iter_vars) != 4 or len(blk.writes[0].source.shape) != 5:
        return False
    width = int(blk.reads[0].source.shape[3])
    if not _is_shifted(blk.reads[0].region[3].min, blk.iter_vars[3].var) or width % stride:
        return False
    loops = sch.get_loops(pad)
    try:
        fill = sch.decompose_padding(pad, loops[-2])
    except Exception:  # noqa: BLE001 - no padding to fill (a plain de-interleaving copy)
        fill = None
    align_phase_rows(sch, fill if fill is not None else pad, stride, lanes, plane_rows)  # its 1st writer
    for b in (fill, pad) if fill is not None else (pad,):
        w = sch.get_loops(b)[-1]
        j, q = sch.split(w, factors=[None, stride])
        sch.reorder(q, j)
        ext = int_extent(sch, j)
        if b == fill and ext and ext > 1 and split_vector(ext, lanes, 64)[1] < lanes:
            _vectorize_fill(sch, j, ext, lanes, may_partition)
        else:
            _vec_tail(sch, b, lanes)  # j is the innermost loop now
    return True


def row_parts(sch: s_tir.Schedule, pad, stride: int, lanes: int) -> tuple[int, int, int] | None:
    """Where a strided window's padded, de-interleaved plane row comes from the input: (lo, hi,
    ext), the columns [lo, hi) of each phase's ext that read the input in every phase; None where
    the plane is better built by vector_deinterleave (fill, then copy).

    Built in three parts (copy_row_parts), each plane element is written once: the zero fill of
    decompose_padding rewrote the whole plane first, a fifth of the layer's time (192 @56 s2:
    0.120 -> 0.097 ms without it, 96 @112 s2: 0.239 -> 0.195, one Zen 4 thread)."""
    blk = sch.get(pad)
    if stride < 2 or len(blk.reads) != 1 or len(blk.iter_vars) != 4:
        return None
    col, wvar = blk.reads[0].region[3].min, blk.iter_vars[3].var
    w_in = int(blk.reads[0].source.shape[3])
    w_plane = int(blk.iter_vars[3].dom.extent)
    if not _is_shifted(col, wvar) or w_in % stride or w_plane % stride:
        return None
    left = -int(detect_linear_equation(col, [wvar])[1])  # input column = plane column - left
    ext = w_plane // stride
    # Phase columns j that every phase q reads from the input: s*j >= left, s*j + s-1 < left + w_in.
    lo, hi = -(-left // stride), min(ext, (left + w_in - stride) // stride + 1)
    # Short rows (576 @14 s2: 6 columns, 0.027 -> 0.030 ms) keep the fill: a vector narrower than
    # a register costs more than the zeros. (Stride 1, no de-interleaving, gained nothing: 144 @56
    # 1.015x, 32 @112 0.98x, 58 @28 1.09x its time.)
    return (lo, hi, ext) if hi - lo >= lanes else None


def copy_row_parts(sch: s_tir.Schedule, pad, parts: tuple[int, int, int], lanes: int) -> None:
    """The plane row of each phase in parts: the left border, the input's columns in whole
    registers and the rest, the right border. In the middle parts only the row is tested (one
    branch per row; TVM's simplifier drops the column test), so the copy is vector loads and
    shuffles (strided_loads.py) and vector stores; the borders are a few scalar stores.
    One partition of the phase-column loop: TVM mis-sizes a partition of a partitioned loop
    (which does not start at 0), and a partition of a split loop is ill-formed TIR."""
    lo, hi, ext = parts
    j = sch.get_loops(pad)[-1]
    n_mid = hi - lo
    middle = [lanes] * (n_mid // lanes) + ([n_mid % lanes] if n_mid % lanes else [])
    sizes = [lo] * (lo > 0) + middle + [ext - hi] * (ext > hi)
    pieces = sch.loop_partition(j, factors=sizes[:-1] + [None]) if len(sizes) > 1 else [j]
    first = 1 if lo > 0 else 0
    for piece in pieces[first:first + len(middle)]:
        sch.vectorize(piece)


def _vectorize_fill(sch: s_tir.Schedule, loop, ext: int, lanes: int, may_partition: bool) -> None:
    """A constant fill of an extent no register width divides (29, 57, 113), never element by
    element: up to 64 lanes as one vector (LLVM stores a constant vector of 29 lanes as
    16 + 8 + 4 + 1), longer ones as whole registers plus the rest. Partitioning the loop is for
    a stage of its own only: under a compute-at it leaves a statement later steps reject."""
    if ext > 64:
        if not may_partition:
            return
        body, loop = sch.loop_partition(loop, factors=[ext - ext % lanes, None])
        _, inner = sch.split(body, factors=[None, lanes])
        sch.vectorize(inner)
    sch.vectorize(loop)


def _is_shifted(index, var) -> bool:
    """Is ``index`` var + c (a pad block reads its input column by column, shifted by the left
    padding)?"""
    res = detect_linear_equation(index, [var])
    return len(res) == 2 and type_is(res[0], "IntImm") and int(res[0]) == 1 and type_is(res[1], "IntImm")


def _split_pad(sch: s_tir.Schedule, pad, lanes: int, n_outer: int) -> None:
    """Zero the border, then copy the interior with plain vector loads (no per-element branch).

    Without this the if_then_else of TOPI's pad costs more than a stride-1 depthwise window itself.
    """
    loops = sch.get_loops(pad)
    try:
        fill = sch.decompose_padding(pad, loops[n_outer])
    except Exception:  # noqa: BLE001 - not a pad pattern (a plain copy): nothing to split
        fill = None
    for blk in (fill, pad):
        if blk is None:
            continue
        inner = sch.get_loops(blk)[-1]
        ext = int_extent(sch, inner)
        if ext and ext > 1:
            nv, vl = split_vector(ext, lanes, 64)
            if vl > 1:
                if vl != ext:
                    _, inner = sch.split(inner, factors=[None, vl])
                sch.vectorize(inner)


def schedule_pad_stage(sch: s_tir.Schedule, pad, lanes: int, stride: int, cores: int = 2) -> None:
    """A padded copy of the input, as its own parallel pass (regular k x k convs reuse it across
    all output-channel tiles, so building it once is cheaper than per tile)."""
    loops = sch.get_loops(pad)
    planes = (int_extent(sch, loops[0]) or 1) * (int_extent(sch, loops[1]) or 1)
    bands = _row_bands(int_extent(sch, loops[2]) or 1, planes, cores)
    if bands > 1:
        # A stem's 3 input planes: 2 + 1 per thread on two cores. Bands of rows as well.
        band, _ = sch.split(loops[2], factors=[bands, None])
        fused = sch.fuse(loops[0], loops[1], band)
    else:
        fused = sch.fuse(*loops[:2])  # (n, c): one padded plane per parallel iteration
    maybe_parallel(sch, fused, written_elements(sch, pad), cores)
    if not vector_deinterleave(sch, pad, stride, lanes, may_partition=True):
        _split_pad(sch, pad, lanes, 1)
