"""How alike two CPUs of one ISA class are: the order in which a build tries other CPUs' records.

Every database of the class is valid on this CPU (the kernels are the same), but which of the
rules' choices wins depends on the cores and caches: MobileNet v1's 512->512 @14 in K chunks ran
0.78-0.88x the default's time on a 48 KB-L1D Xeon, 1.06x on a 32 KB-L1D Zen 4. So a build for
this machine's own CPU tries the likest CPU's records first. Never a gate: a record still
applies only where it beat the default schedule.
"""
from __future__ import annotations

from typing import Any

from edgecompile.backend import core


def vendor(cpu: str) -> str | None:
    """'AMD' or 'Intel' from a CPU's description (key.json's ``cpu``, the OS's model name)."""
    return next((v for v in ("AMD", "Intel") if v.lower() in cpu.lower()), None)


def this_cpu(mcpu: str | None) -> dict[str, Any] | None:
    """This machine's vendor and caches where a build for LLVM CPU ``mcpu`` runs on it; None
    for a GPU (``mcpu`` None) or a cross build (nothing is known of that device but its target)."""
    if mcpu is None or mcpu != core.host_cpu():
        return None
    return {"vendor": vendor(core.host_cpu_model()), "caches": core.host_caches()}


def likeness(key: dict[str, Any], here: dict[str, Any] | None) -> int:
    """How alike the CPU that records (``key``: their key.json) were measured on is to ``here``
    (``this_cpu``): the same vendor's cores 2, the same L1D and L2 size per core 1 each."""
    if here is None:
        return 0
    score = 2 if here["vendor"] and vendor(key.get("cpu", "")) == here["vendor"] else 0
    caches = key.get("caches") or {}
    return score + sum(1 for c, kb in here["caches"].items() if caches.get(c) == kb)
