"""Dense / matmul with a batch of one (classifier head): y[j] = sum_k x[k] * W[k, j] (+ bias).

Weight-bandwidth bound: a tile of T output columns (up to 4 registers) accumulates over k,
parallel over tiles. Constant weights come re-blocked [J/T, K, T] (legalize.py, `edge_dense`), so
a tile streams one contiguous run of them; a plain [K, J] weight (not a constant) is read row by
row.
"""
from __future__ import annotations

from tvm import s_tir, tirx

from ..tags import DENSE_TAG
from ..target_info import CpuInfo
from .common import CpuRule, accumulate_locally, maybe_parallel, sole_reduction, split_vector


class Dense(CpuRule):
    def schedule(self, sch: s_tir.Schedule, blocks: list, info: CpuInfo):
        mm = sole_reduction(sch, blocks)
        if mm is None:
            return None
        ivs = sch.get(mm).iter_vars
        kinds = "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in ivs)
        if kinds not in ("SSR", "SR"):
            return None
        stmt = sch.get(mm)
        n_j = int(ivs[-2].dom.extent)
        if stmt.name_hint == DENSE_TAG:
            tile = int([r.source for r in stmt.reads if len(r.source.shape) == 3][0].shape[2])
            vl = info.lanes if tile % info.lanes == 0 else tile
            nv = tile // vl
        else:
            # Only the matmul form whose weight is indexed [k, j]; NT form stays with the fallback.
            jv, kv = ivs[-2].var, ivs[-1].var
            ok = any(
                len(r.region) == 2 and r.region[0].min.same_as(kv) and r.region[1].min.same_as(jv)
                for r in stmt.reads
            )
            if not ok:
                return None
            nv, vl = split_vector(n_j, info.lanes, 4)
        idx = blocks.index(mm)
        for b in blocks[:idx]:
            sch.compute_inline(b)
        last = accumulate_locally(sch, blocks, mm)
        loops = sch.get_loops(mm)
        j, k = loops[-2], loops[-1]
        jo, ju, jvl = sch.split(j, factors=[None, nv, vl])
        sch.reorder(jo, k, ju, jvl)
        outer = sch.fuse(*loops[:-2], jo) if len(loops) > 2 else jo
        work = 1
        for iv in ivs:
            work *= int(iv.dom.extent)
        maybe_parallel(sch, outer, work, info.cores)
        sch.reverse_compute_at(last, outer)
        sch.unroll(ju)
        sch.vectorize(jvl)
        init = sch.decompose_reduction(mm, k)
        for b in (init, last):
            lp = sch.get_loops(b)[-1]
            sch.vectorize(lp)
        return sch
