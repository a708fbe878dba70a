"""The TIR pipeline of every CPU compile (builds, tuning candidates, kernels.so): our pass on the
scheduled TIR (vector_tails.py), TVM's lowering, our two passes on the lowered TIR
(strided_loads.py, stack_buffers.py), then TVM's host and device passes.

    tvm.compile(mod, target, relax_pipeline=..., tir_pipeline=PIPELINE)
"""
from __future__ import annotations

import tvm

from .stack_buffers import stack_buffers
from .strided_loads import strided_loads_to_shuffles
from .vector_tails import vector_tails

PIPELINE = "edgecompile-cpu"


def _pipeline_factory():
    from tvm.s_tir.pipeline import default_s_tir_pipeline

    lower, finalize_host, finalize_device = default_s_tir_pipeline()
    ours = tvm.transform.Sequential([vector_tails, lower, strided_loads_to_shuffles, stack_buffers])
    return ours, finalize_host, finalize_device


tvm.tirx.compilation_pipeline.register_tir_pipeline(PIPELINE, _pipeline_factory)
