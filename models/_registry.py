"""Model registry: every public variant is a tiny function whose name is the CLI name.

Each registration carries the variant's metadata (published params / MACs / top-1,
preprocessing, where published weights come from), so the rest of the pipeline
never has to know a family by its code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from edgecompile.errors import UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

StateDictRemap = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ModelInfo:
    """What a variant is, independent of how it is compiled."""

    name: str
    family: str
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)
    params: int  # published parameter count (1000 classes)
    macs: int  # published multiply-adds at ``input_size`` ("FLOPs" in the papers)
    # True where the reference publishes an exact count (torchvision): we must match it to the
    # parameter; otherwise the paper's rounded figure, matched within 1%.
    params_exact: bool = False
    top1: float | None = None  # published ImageNet top-1, %
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875  # resize to input_size / crop_pct, centre crop input_size
    num_classes: int = 1000
    paper: str = ""
    weights: str = ""  # where published weights come from (repo / file / key layout)
    # Maps a published checkpoint's keys onto ours (identity when they already match).
    remap_state_dict: StateDictRemap | None = field(default=None, repr=False, compare=False)

    def create(self, **kwargs: Any) -> nn.Module:
        return self.builder(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        keys = ("name", "family", "params", "params_exact", "macs", "top1", "input_size", "mean", "std",
                "crop_pct", "num_classes", "paper", "weights")
        return {k: getattr(self, k) for k in keys}


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    *, family: str, params: int, macs: int, **meta: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn`` under its own name; a second registration of a name raises."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelInfo(
            name=name, family=family, builder=fn, params=params, macs=macs, **meta
        )
        return fn

    return wrap


# One reference variant per family: what the benchmarks and the shipped tuning records cover.
FLAGSHIPS = ("squeezenet1_1", "mobilenet_v1_100", "mobilenet_v2_100", "shufflenet_v1_g3",
             "shufflenet_v2_x1_0", "fasternet_t0", "mobilenext_100")


def list_models(family: str | None = None) -> list[str]:
    if family is not None and family not in list_families():
        raise UnknownNameError("family", family, list_families())
    return [n for n, i in _REGISTRY.items() if family is None or i.family == family]


def list_families() -> list[str]:
    return list(dict.fromkeys(i.family for i in _REGISTRY.values()))


def get_model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("model", name, _REGISTRY) from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    return get_model_info(name).create(**kwargs)
