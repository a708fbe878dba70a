"""dlight-style CPU schedule rules: each recognises one kernel class or returns None."""
from .conv import Conv2DNCHW
from .dense import Dense
from .depthwise_flat import DepthwiseFlat
from .fallback import Fallback
from .pointwise_fvec import PointwiseFVec
from .pool_separable import SeparablePool

__all__ = ["Conv2DNCHW", "Dense", "DepthwiseFlat", "Fallback", "PointwiseFVec", "SeparablePool"]
