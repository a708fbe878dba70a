"""Synthetic checkpoints in a published key layout (names and shapes as the reference code
publishes them), to test that remap_state_dict + a strict load put every tensor in place."""

from __future__ import annotations

import torch
from torch import nn

from edgecompile.models import create_model, get_model_info


def bn_keys(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def synthetic(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: (torch.tensor(7) if s == () else torch.randn(s, generator=g))
            for k, s in shapes.items()}


def load_published(name: str, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """``name`` loaded strictly from a synthetic checkpoint with these keys; every tensor must
    land unchanged (a remap that swaps two same-shaped tensors fails here)."""
    model = create_model(name)
    remapped = get_model_info(name).remap_state_dict(synthetic(shapes))
    model.load_state_dict(remapped, strict=True)
    ours = model.state_dict()
    for k, v in remapped.items():
        assert torch.equal(ours[k], v), k
    return model
