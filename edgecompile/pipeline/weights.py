"""Where a model's weights come from: a published checkpoint, or a seeded init for parity tests.

With PyTorch's default init, deep nets can produce near-constant outputs, so a parity test
against them passes while testing nothing. ``init_for_parity`` gives every layer O(1)
activations instead: He-normal weights, then BatchNorm running statistics calibrated on random
inputs (so eval-mode BN really normalises), then random BN affine parameters (so the BN fold
has non-trivial scales and shifts to get right).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompile.errors import EdgeCompileError
from edgecompile.models import ModelInfo

CALIBRATION_BATCH = 8
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "params", "net")
_PREFIXES = ("module.", "model.", "_orig_mod.")


@torch.no_grad()
def init_for_parity(model: nn.Module, seed: int, input_size: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    bns = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.2 - 0.1)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)  # [0.5, 1.5)
            m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)
            bns.append((m, m.momentum))
            m.momentum = None  # cumulative average over the calibration pass
    if bns:
        model.train()
        model(torch.randn(CALIBRATION_BATCH, 3, input_size, input_size, generator=gen))
        for m, momentum in bns:
            m.momentum = momentum
    return model.eval()


@functools.lru_cache(maxsize=2)
def _load(path: Path, mtime_ns: int, size: int) -> Any:
    # Keyed on the file's mtime and size too, so a rewritten file is read again. A build reads
    # the checkpoint's meta first and its state dict later: one torch.load serves both.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EdgeCompileError(f"weights file {path}: not a readable PyTorch checkpoint ({e})") from None


def _load_checkpoint(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise EdgeCompileError(f"weights file {path}: no such file")
    st = path.stat()
    return _load(path.resolve(), st.st_mtime_ns, st.st_size)


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """The ``meta`` dict our own checkpoints carry (model, classes, input size, mean/std...);
    empty for published checkpoints, which carry none."""
    obj = _load_checkpoint(path)
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file, unwrapped from the usual containers and prefixes."""
    obj = _load_checkpoint(path)
    for _ in range(3):  # {'state_dict': {...}}, {'model': {'state_dict': ...}}, ...
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EdgeCompileError(f"weights file {path}: holds no state dict of tensors")
    out = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def load_weights(model: nn.Module, info: ModelInfo, path: Path) -> nn.Module:
    """Load a published or our own checkpoint strictly, naming every mismatch."""
    state = read_checkpoint(path)
    if info.remap_state_dict is not None:
        state = info.remap_state_dict(state)
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs ours {tuple(v.shape)}"
        for k, v in ours.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        raise EdgeCompileError(
            f"weights file {path} does not fit {info.name}: "
            + "; ".join(
                f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("wrong shape", wrong))
                if keys
            )
            + (" (a different head? try --num-classes)" if wrong and len(wrong) <= 2 else "")
        )
    model.load_state_dict(state, strict=True)
    return model.eval()
