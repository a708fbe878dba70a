import contextlib
import os
import socket
import threading
import time

import pytest

# The run is spread over pytest-xdist workers, one per core (pyproject's addopts): each worker
# then runs TVM, PyTorch and ONNX Runtime on one thread, or their thread pools (TVM's spins
# while it waits) would fight over the same cores. A run without workers keeps two threads.
# Set here, before any runtime starts; RPC servers started by tests inherit it.
_THREADS = "1" if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else "2"
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
os.environ.setdefault("TVM_NUM_THREADS", _THREADS)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests on the shared emulated Pi go to one worker (xdist's loadgroup), so the run boots
    one emulated device, not one per worker."""
    for item in items:
        if "emulated_rpi4" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("emulated_rpi4"))


def default_subset(items, default) -> list:
    """All ``items`` as parameters; those not in ``default`` carry the ``slow`` mark, so the
    default run keeps a representative few and `-m slow` covers the rest."""
    return [pytest.param(i, marks=() if i in default else pytest.mark.slow) for i in items]


def act_when(condition, action, settle_s: float, poll_s: float, timeout_s: float) -> threading.Thread:
    """In a background thread: poll ``condition()`` and, once it holds, wait ``settle_s`` (to be
    well inside what it signals, e.g. a job on a device) and run ``action()``. Used to kill or
    freeze a device mid-job; if the moment never comes, the action never runs."""
    def watch():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                time.sleep(settle_s)
                action()
                return
            time.sleep(poll_s)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@contextlib.contextmanager
def refused_address(host: str = "127.0.0.1"):
    """``HOST:PORT`` where nothing listens, for as long as the block runs: the port is bound (not
    listening, so connections are refused) and held, so no server another pytest-xdist worker
    starts meanwhile can take it. Pick it inside the test, never at collection time."""
    with socket.socket() as s:
        s.bind((host, 0))
        yield f"{host}:{s.getsockname()[1]}"


@pytest.fixture(scope="session")
def emulated_rpi4():
    """One emulated Raspberry Pi 4 (qemu pinned to cortex-a72) for the whole run: a real
    tvm.exec.rpc_server on loopback. The rootfs is prepared by scripts/setup.sh (cached)."""
    from edgecompile.devices import emulated as emu
    from edgecompile.targets import get_target

    emu.prepare(quiet=True)
    with emu.start(get_target("rpi4").device_core) as device:
        yield device


@pytest.fixture(scope="module")
def pocl_cache(tmp_path_factory):
    """One pocl kernel cache for a test module, inherited by the RPC servers it starts: pocl
    compiles each kernel source once and caches it, so a kernel run locally, then over RPC,
    or timed again, is compiled once."""
    path = tmp_path_factory.mktemp("pocl")
    old = os.environ.get("POCL_CACHE_DIR")
    os.environ["POCL_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("POCL_CACHE_DIR", None)
    else:
        os.environ["POCL_CACHE_DIR"] = old


@pytest.fixture
def rules_for_depthwise_3x3(monkeypatch):
    """3x3 depthwise convolutions left to the rules' window kernel (its padded plane,
    de-interleaved at stride 2), as on the maps the depthwise_3x3 rewrite does not take: that
    kernel's own tests."""
    from edgecompile.backend.cpu_schedules import depthwise_3x3

    monkeypatch.setattr(depthwise_3x3, "applies", lambda *_: False)
