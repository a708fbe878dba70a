"""Stage 1: PyTorch module -> ONNX model."""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """Export in eval mode with BatchNorm kept as BatchNormalization nodes.

    The TorchScript exporter with constant folding on (and the dynamo exporter's optimiser)
    fold BN into Conv themselves; we switch that off so BN folding is our own stage, verified
    on graphs that really carry BN, whatever produced them.
    """
    model = model.eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice, not for users
        torch.onnx.export(
            model,
            (torch.zeros(input_shape),),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            do_constant_folding=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    return proto
