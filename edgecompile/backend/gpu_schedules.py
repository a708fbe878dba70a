"""GPU kernels' default schedules: dlight's rules, and the passes on either side of them.

What ``build`` and ``tune`` share for the OpenCL presets (mali, adreno): the module both see
before any kernel is scheduled (``prepare_passes``: TVM's own legalisation and fusion for the
target), the default schedule a tuning record must beat (``schedule_one``: dlight's rules, as a
build applies them), and the pipeline a build runs (``gpu_pipeline``), in which a kernel
scheduled from a record already keeps its schedule (dlight skips scheduled functions).

Adreno gets the rules of TVM's Adreno pipeline (its convolution, layout-transform and pooling
rules first, then the generic reduction and fallback rules); every other GPU dlight's generic
set.
"""

from __future__ import annotations

from edgecompile.backend.core import load_tvm

tvm = load_tvm()
from tvm.relax.backend.adreno import pipeline as adreno  # noqa: E402
from tvm.relax.backend.gpu_generic import pipeline as generic  # noqa: E402
from tvm.s_tir import dlight as dl  # noqa: E402

# TVM's name for dlight's scheduling pass: what ``prepare_passes`` leaves out of the target's
# legalisation passes (where TVM's pipelines schedule every kernel).
_SCHEDULE_PASS = "ApplyDefaultSchedule"


def is_adreno(target) -> bool:
    return "adreno" in [str(k) for k in target.keys]


def _backend(target):
    return adreno if is_adreno(target) else generic


class Guarded(dl.ScheduleRule):
    """A dlight rule that declines instead of raising: dlight's GEMV rule asserts on a small
    classifier kernel (10 classes at 32 px) and would take the whole compile down."""

    def __init__(self, rule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception:  # noqa: BLE001 -- the next rule (at worst Fallback) takes the kernel
            return None


def rule_groups(target, guarded: bool = False) -> list[list]:
    """dlight's rules for this GPU, in the order TVM's own pipeline for it applies them: one
    ApplyDefaultSchedule per group."""
    if is_adreno(target):
        groups = [[dl.adreno.Conv2d(), dl.adreno.LayoutTransform(), dl.adreno.Pool2D()],
                  [dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]]
    else:
        groups = [[dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                   dl.gpu.Fallback()]]
    return [[Guarded(r) for r in g] for g in groups] if guarded else groups


def _schedule_passes(target, guarded: bool) -> list:
    return [tvm.relax.transform.Normalize()] + [dl.ApplyDefaultSchedule(*g)
                                                for g in rule_groups(target, guarded)]


def prepare_passes(target) -> list:
    """The target's library dispatch, legalisation and fusion, no kernel scheduled: the module
    tasks are extracted from and tuning records are applied to."""
    b = _backend(target)
    legalize = [p for p in b.legalize_passes(target) if p.info.name != _SCHEDULE_PASS]
    return b.library_dispatch_passes(target) + legalize


def gpu_pipeline(target, guarded: bool = False, fused: bool = False, on_fused=None, on_lowered=None):
    """The whole GPU build: ``prepare_passes`` (skipped when ``fused``: the module is prepared
    already, some kernels scheduled from records), ``on_fused`` shown the fused module, dlight's
    rules, lowering (``on_lowered`` shown the result), finalisation. ``guarded``: rules that
    raise decline instead. A function no rule schedules stays host code, which
    compiler.device_kernels() then reports."""
    from edgecompile.backend.cpu_schedules import observer

    b = _backend(target)

    @tvm.transform.module_pass(opt_level=0, name="EdgeGPUPipeline")
    def _pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(
                ([] if fused else prepare_passes(target))
                + ([observer(on_fused)] if on_fused else [])
                + _schedule_passes(target, guarded)
                + b.dataflow_lower_passes(target)
                + ([observer(on_lowered)] if on_lowered else [])
                + b.finalize_passes(target)
            )(mod)

    return _pipeline


def schedule_one(func, target):
    """One kernel as a build schedules it (what a tuning record must beat), as {"main": func}."""
    mod = tvm.IRModule({"main": func})
    with target:
        return tvm.transform.Sequential(_schedule_passes(target, guarded=True))(mod)
