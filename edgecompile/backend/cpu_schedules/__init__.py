"""Default CPU schedules for TVM 0.27 Relax, which has none of its own.

Untuned, TVM's CPU code is naive loops (30-180x slower than ONNX Runtime on these models).
These rules give every kernel a register-blocked, vectorised, parallel schedule without
tuning, parameterised by the target's vector width and core count (target_info.py), never by
a CPU name, so x86 (AVX2, AVX-512) and arm64 (NEON) get the same rules:

- legalize.py: conv2d as our own TE computes (vector along the output row, or along output
  channels with the weights re-blocked once at build time; an expanding pointwise conv on a large
  map no register width divides, along the flattened map rounded up to whole registers), erf as
  TOPI's fast_erf, an unpadded max pool as two passes over the rows (separable_pool.py);
- winograd.py: a 3x3 stride-1 conv as Winograd F(4x4, 3x3) or F(2x2, 3x3) -- hand-written vector
  TIR transforms (winograd_tir.py) around a grouped 1x1 conv (its 36 or 16 GEMMs) that the rules
  schedule;
- rules/: one dlight-style rule per kernel class (PointwiseFVec, DepthwiseFlat, Conv2DNCHW for
  regular / grouped / depthwise / pooling windows, Dense, SeparablePool, Fallback for everything
  else); a rule that fails on a kernel declines (SafeRule) and the next one tries; rules/planes.py
  builds a window's padded input plane (bands, the stride-2 de-interleaved layout, the copy);
- pipeline.py: TVM's CPU passes with the above, ``unscheduled_kernels`` for tests, and
  ``schedule_variants``: a kernel under each combination of the choices the rules' cost models
  ranked (knobs.py), which `tune --search rules` times;
- tir_pipeline.py: the TIR pipeline ``TIR_PIPELINE`` of every CPU compile (builds, tuning
  candidates, kernels.so): vector_tails.py (a loop guarded per lane vectorised wherever its last
  lane passes), TVM's lowering, then strided_loads.py (a strided vector load as a contiguous
  load and a shuffle) and stack_buffers.py (scratch buffers as allocas, not workspace calls).
"""

from .pipeline import (
    cpu_pipeline,
    fuse_passes,
    observer,
    schedule_one,
    schedule_variants,
    unscheduled_kernels,
)
from .target_info import isa_class
from .tir_pipeline import PIPELINE as TIR_PIPELINE

__all__ = ["TIR_PIPELINE", "cpu_pipeline", "fuse_passes", "isa_class", "observer", "schedule_one",
           "schedule_variants", "unscheduled_kernels"]
