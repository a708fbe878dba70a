"""The seven model families, installed as ``edgecompile.models``.

Importing this package registers every variant; see ``_registry`` for the API.
"""

# Families register their variants on import; order here is the listing order.
from . import (  # noqa: E402,F401  # noqa: E402,F401
    fasternet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenext,
    shufflenet_v1,
    shufflenet_v2,
    squeezenet,
)
from ._registry import (
    ModelInfo,
    create_model,
    get_model_info,
    list_families,
    list_models,
    register_model,
)

__all__ = [
    "ModelInfo",
    "create_model",
    "get_model_info",
    "list_families",
    "list_models",
    "register_model",
]
