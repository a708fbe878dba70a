"""Every registered variant against its published figures, and alive under the parity init."""

import pytest
import torch
from torch import nn

from edgecompile.models import create_model, get_model_info, list_families, list_models
from edgecompile.pipeline import flops
from edgecompile.pipeline.numerics import parity_inputs
from edgecompile.pipeline.weights import init_for_parity

ALL = list_models()
FAMILIES = ["squeezenet", "mobilenet_v1", "mobilenet_v2", "shufflenet_v1", "shufflenet_v2",
            "fasternet", "mobilenext"]


def test_seven_families_with_their_published_variants():
    assert list_families() == FAMILIES
    expected = {
        "squeezenet": 2, "mobilenet_v1": 4, "mobilenet_v2": 5, "shufflenet_v1": 10,
        "shufflenet_v2": 4, "fasternet": 6, "mobilenext": 4,
    }
    assert {f: len(list_models(f)) for f in FAMILIES} == expected


@pytest.mark.parametrize("name", ALL)
def test_params_and_macs_match_the_reference(name):
    info = get_model_info(name)
    model = create_model(name)
    params = flops.count_params(model)
    if info.params_exact:
        assert params == info.params
    else:  # rounded published figure (e.g. "3.9M")
        assert abs(params - info.params) <= 0.01 * info.params, (params, info.params)
    macs = flops.count_macs(model, 224)
    assert abs(macs - info.macs) <= 0.05 * info.macs, (macs, info.macs)


@pytest.mark.parametrize("name", ALL)
def test_metadata_is_complete(name):
    info = get_model_info(name)
    assert info.paper and info.weights and info.input_size >= 32
    assert len(info.mean) == len(info.std) == 3 and 0 < info.crop_pct <= 1
    assert info.top1 is None or 20 < info.top1 < 90


@pytest.mark.parametrize("name", ALL)
def test_parity_init_keeps_activations_alive(name):
    # A parity test on near-constant outputs tests nothing: the logits must vary with the
    # input, and every BN must see non-trivial statistics.
    model = init_for_parity(create_model(name, num_classes=100), seed=0, input_size=64)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(float(m.running_var.mean()) > 1e-3 for m in bns)
    with torch.no_grad():
        logits = model(torch.from_numpy(parity_inputs(4, (3, 64, 64))))
    scale = float(logits.abs().max())
    assert 1e-2 < scale < 1e4
    assert float(logits.std(dim=0).max()) > 0.05 * scale  # different inputs, different logits
    assert float(logits.std(dim=1).min()) > 1e-3 * scale  # no sample collapses to a constant


def test_unknown_model_lists_candidates():
    from edgecompile.errors import UnknownNameError

    with pytest.raises(UnknownNameError) as e:
        get_model_info("mobilenetv2_100")
    assert e.value.suggestion == "mobilenet_v2_100"


def test_duplicate_registration_raises():
    from edgecompile.models import register_model

    with pytest.raises(ValueError, match="registered twice"):
        @register_model(family="squeezenet", params=1, macs=1)
        def squeezenet1_0(**kwargs):
            return None
