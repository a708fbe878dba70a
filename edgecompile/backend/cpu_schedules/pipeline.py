"""`cpu_pipeline(target)`: TVM's CPU passes, with our legalisation and schedule rules.

Usage: tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target)).
The graph stays NCHW (see rules/conv.py for why); only the TIR of each fused kernel changes.
A kernel that is already scheduled (tuning records applied before) keeps its schedule.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import dlight
from tvm.target import Target

from . import knobs
from .concat_split import keep_parts_unfused, split_concat
from .depthwise_3x3 import depthwise_3x3_convs
from .legalize import make_legalize_map
from .rules import Conv2DNCHW, Dense, DepthwiseFlat, Fallback, PointwiseFVec, SeparablePool
from .rules.common import SafeRule
from .tags import is_scheduled
from .winograd import winograd_convs


def schedule_rules() -> list:
    # Order matters: the first rule that recognises a kernel schedules it; Fallback takes the rest.
    return [SafeRule(PointwiseFVec()), SafeRule(DepthwiseFlat()), SafeRule(Conv2DNCHW()), SafeRule(Dense()),
            SafeRule(SeparablePool()), SafeRule(Fallback())]


def fuse_passes(target: Target) -> list:
    """No concat before a conv or max-pool (concat_split.py), legalise (our conv2d / erf: weights
    re-blocked here, once) and fuse: the kernels the
    rules schedule, and the tasks tuning searches (backend.metaschedule.prepare)."""
    return [
        split_concat(),
        # A Gemm's weight arrives as permute_dims(constant): fold it, so that the legaliser sees
        # the constant it re-blocks (legalize.py, _dense).
        relax.transform.FoldConstant(),
        winograd_convs(target),
        depthwise_3x3_convs(target),
        relax.transform.LegalizeOps(customize_legalize_map=make_legalize_map(target)),
        relax.transform.AnnotateTIROpPattern(),
        keep_parts_unfused(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def schedule_passes(target: Target, fused: bool = False, on_fused=None) -> list:
    """Fuse (unless the module already is), then schedule every kernel not yet scheduled.
    ``on_fused(mod)`` sees the fused module before scheduling (the kernel table)."""
    rules = [dlight.ApplyDefaultSchedule(*schedule_rules())]
    if on_fused is not None:
        rules.insert(0, observer(on_fused))
    return rules if fused else fuse_passes(target) + rules


def observer(on_module) -> tvm.transform.Pass:
    """A pass that shows the module to ``on_module`` and changes nothing."""
    @tvm.transform.module_pass(opt_level=0, name="EdgeObserve")
    def _observe(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        on_module(mod)
        return mod

    return _observe


def cpu_pipeline(target: Target, fused: bool = False, on_fused=None, on_lowered=None):
    """``fused``: the module comes from ``fuse_passes`` already, some kernels scheduled from
    tuning records; fusing again could merge a tuned kernel into a new, untuned one.
    ``on_lowered(mod)`` sees the module once Relax is lowered (which kernels main still calls:
    a reshape kernel, for one, becomes a view)."""
    @tvm.transform.module_pass(opt_level=0, name="EdgeCPUPipeline")
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                cpu_generic.library_dispatch_passes(target)
                + schedule_passes(target, fused, on_fused)
                + cpu_generic.dataflow_lower_passes(target)
                + ([observer(on_lowered)] if on_lowered else [])
                + cpu_generic.finalize_passes(target)
            )
            mod = seq(mod)
        return mod

    return _pipeline


def schedule_one(func: tvm.tirx.PrimFunc, target: Target) -> tvm.ir.IRModule:
    """One kernel as the rules schedule it (what a tuning record must beat), as {"main": func}."""
    mod = tvm.IRModule({"main": func})
    with target:
        return dlight.ApplyDefaultSchedule(*schedule_rules())(mod)


def schedule_variants(func: tvm.tirx.PrimFunc, target: Target, limit: int) -> list:
    """The rules' schedules of one kernel under each combination of the choices their cost
    models ranked (knobs.py), the default first: [(choices, traced Schedule)], each schedule
    once (with K chunks, how cores split the tiles is moot), of the first ``limit``
    combinations; [] where no rule takes the kernel."""
    def first_rule():
        with target:
            for rule in schedule_rules():
                sch = rule.apply(func, target, False)
                if sch is not None:
                    return sch
        return None

    seen, out = set(), []
    for choices, sch in knobs.explore(first_rule, limit):
        key = None if sch is None else tvm_ffi.structural_hash(sch.mod)
        if key is not None and key not in seen:
            seen.add(key)
            out.append((choices, sch))
    return out


def unscheduled_kernels(mod: tvm.ir.IRModule, target: Target) -> list[str]:
    """Names of the kernels no rule scheduled: they would run as TVM's naive loops."""
    with target:
        mod = tvm.transform.Sequential(cpu_generic.library_dispatch_passes(target)
                                       + schedule_passes(target))(mod)
    return sorted(gv.name_hint for gv, f in mod.functions.items()
                  if isinstance(f, tvm.tirx.PrimFunc)
                  and not is_scheduled(f))
