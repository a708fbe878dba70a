import os

import pytest

# Tests share the 2 cores with TVM's own thread pool; keep PyTorch from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def default_subset(items, default) -> list:
    """All ``items`` as parameters; those not in ``default`` carry the ``slow`` mark, so the
    default run keeps a representative few and `-m slow` covers the rest."""
    return [pytest.param(i, marks=() if i in default else pytest.mark.slow) for i in items]


@pytest.fixture(scope="session")
def emulated_rpi4():
    """One emulated Raspberry Pi 4 (qemu pinned to cortex-a72) for the whole run: a real
    tvm.exec.rpc_server on loopback. The rootfs is prepared by scripts/setup.sh (cached)."""
    from edgecompile import emulated_device as emu
    from edgecompile.targets import get_target

    emu.prepare(quiet=True)
    with emu.start(get_target("rpi4").device_core) as device:
        yield device
