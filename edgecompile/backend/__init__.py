"""Every call into Apache TVM lives in this package; nothing else in edgecompile imports tvm.

TVM moved its Python APIs twice in a year (Relay -> Relax, tvm.contrib -> tvm.support,
meta_schedule -> s_tir.meta_schedule); keeping them here means the next move is absorbed in one
place (tests/test_architecture.py enforces it).

- core.py: importing TVM (thread pool sized from the real cores), its version, this host's CPU;
- compiler.py: targets, ONNX -> Relax, Relax -> executable -> library, GPU kernel checks;
- runtime.py: a compiled library in a Relax VM, locally or on an RPC session's device;
- rpc_client.py: RPC sessions, direct or leased from a tracker;
- gpu_schedules.py: the GPU presets' default schedules (dlight's rules, Adreno's for Adreno) and
  the passes around them, shared by build and tune;
- metaschedule.py: MetaSchedule tasks, the tuning loop, records applied to a module;
- ms_measure.py: how candidates are built here and timed here or on a device over RPC;
- opencl.py: our OpenCL plug-in loaded into this process's TVM; a remote device's OpenCL GPU.
- kernels.py: the kernel table (class, FLOPs, bytes of each fused kernel);
- tir_exprs.py: questions about TIR expressions that kernels.py and cpu_schedules both ask.
"""
