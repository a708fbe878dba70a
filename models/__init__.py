"""The seven model families, installed as ``edgecompile.models``.

Importing this package registers every variant; see ``_registry`` for the API.
"""

from ._registry import (
    FLAGSHIPS,
    ModelInfo,
    create_model,
    get_model_info,
    list_families,
    list_models,
    register_model,
)

# Families register their variants on import, so this order is the listing order
# (chronological, as the field developed): keep the import sorter away from it.
# isort: off
from . import squeezenet, mobilenet_v1, mobilenet_v2  # noqa: E402,F401
from . import shufflenet_v1, shufflenet_v2  # noqa: E402,F401
from . import fasternet, mobilenext  # noqa: E402,F401
# isort: on

__all__ = [
    "FLAGSHIPS",
    "ModelInfo",
    "create_model",
    "get_model_info",
    "list_families",
    "list_models",
    "register_model",
]
