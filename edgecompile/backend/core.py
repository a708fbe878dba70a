"""Loading TVM, and what it tells about this machine.

Every call into Apache TVM lives in this package (``edgecompile.backend``). TVM moved its
Python APIs twice in a year (Relay -> Relax, tvm.contrib -> tvm.support, meta_schedule ->
s_tir.meta_schedule); keeping them here means the next move is absorbed in one place.
tests/test_architecture.py fails on an ``import tvm`` anywhere else in the package.
"""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """Cores this process may use, SMT siblings counted once: what ONNX Runtime and PyTorch
    run on by default."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(),
                       (topo / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def load_tvm():
    """The tvm module, imported once, with its CPU thread pool sized from the real cores."""
    # TVM sizes its CPU thread pool once, from TVM_NUM_THREADS or, on x86, *half* the logical
    # CPUs (it assumes SMT): a 2-core VM without SMT got one thread, and config_threadpool
    # cannot grow the pool later, so `--threads 2` silently ran on one. Size it from the real
    # core count before anything starts the pool (RPC servers we start inherit it).
    os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))
    # After a parallel kernel, TVM's idle workers spin (and yield) for 300,000 rounds before
    # they sleep: long after an inference ends they hold a core that whatever runs next needs.
    # Measured on 2 cores, mobilenet_v2_100: ONNX Runtime beside it went from 2.4 to 8.3 ms;
    # with 10,000 rounds it stays at 2.4 and TVM's own latency is unchanged (3.17 vs 3.24 ms).
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "10000")
    # Imported lazily: `edgecompile list` and the CLI's error paths should not pay TVM's import.
    import tvm
    import tvm.relax  # noqa: F401

    return tvm


def warm_import() -> None:
    load_tvm()


def version() -> str:
    return load_tvm().__version__


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. 'skylake-avx512')."""
    tvm = load_tvm()
    return str(tvm.target.codegen.llvm_get_system_cpu())


def host_cpu_model() -> str:
    """This machine's CPU as the OS names it (e.g. 'AMD EPYC 9B45'), for reports: never a key
    (LLVM's name and the features are what decide the code)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") or line.startswith("Model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_caches() -> dict[str, int]:
    """This machine's per-core data caches in KB, {"l1d_kb": 48, "l2_kb": 2048}, from Linux's
    sysfs (empty where it does not say): what decides which of the rules' choices wins."""
    from pathlib import Path

    out: dict[str, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        name = {("1", "Data"): "l1d_kb", ("2", "Unified"): "l2_kb"}.get((level, kind))
        if name and size.endswith("K") and size[:-1].isdigit():
            out[name] = int(size[:-1])
    return out
