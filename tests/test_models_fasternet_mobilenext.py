"""Family-specific checks for FasterNet and MobileNeXt.

Published checkpoints are not downloaded: synthetic state dicts are built from the published
key names and shapes (written out here independently of the model code) and loaded with
``strict=True`` after ``remap_state_dict``.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from published_keys import bn_keys, synthetic
from torch import nn

from edgecompile.models import create_model, get_model_info, list_models
from edgecompile.models.fasternet import PartialConv3
from edgecompile.models.mobilenext import SandGlass
from edgecompile.pipeline.flops import count_params

# ------------------------------------------------------------------ registry / sizes


def test_variants_registered():
    assert list_models("fasternet") == [
        "fasternet_t0", "fasternet_t1", "fasternet_t2", "fasternet_s", "fasternet_m", "fasternet_l"]
    assert sorted(list_models("mobilenext")) == sorted(
        ["mobilenext_100", "mobilenext_140", "mobilenext_075", "mobilenext_050"])


@pytest.fixture(scope="module")
def t0() -> nn.Module:
    return create_model("fasternet_t0").eval()


@pytest.fixture(scope="module")
def mnext100() -> nn.Module:
    return create_model("mobilenext_100").eval()


@pytest.mark.parametrize("name", ["fasternet_t0", "fasternet_t1"])
def test_fasternet_params_within_1pct(name, t0):
    info = get_model_info(name)
    n = count_params(t0 if name == "fasternet_t0" else create_model(name))
    assert abs(n - info.params) <= 0.01 * info.params, (name, n, info.params)


def test_mobilenext_matches_authors_code_count(mnext100):
    # 3,535,416 is what the authors' mnext.py (MXNet, width 1.0) builds; the paper rounds to 3.5M.
    assert count_params(mnext100) == 3_535_416


# ------------------------------------------------------------------ FasterNet


def test_pconv_convolves_only_a_quarter_of_the_channels():
    torch.manual_seed(0)
    pconv = PartialConv3(dim=16, n_div=4)
    assert pconv.partial_conv3.weight.shape == (4, 4, 3, 3)
    x = torch.randn(2, 16, 8, 8)
    y = pconv(x)
    assert torch.equal(y[:, 4:], x[:, 4:])  # untouched channels pass through bit-exactly
    assert torch.allclose(y[:, :4], pconv.partial_conv3(x[:, :4]))
    assert not torch.allclose(y[:, :4], x[:, :4])
    # The official inference-only "slicing" forward computes the same thing, without
    # modifying the caller's tensor (the block's shortcut needs it).
    slicing = PartialConv3(dim=16, n_div=4, forward_type="slicing")
    slicing.load_state_dict(pconv.state_dict())
    x_before = x.clone()
    assert torch.allclose(slicing(x), y)
    assert torch.equal(x, x_before)


def test_fasternet_default_export_is_split_concat_not_scatter():
    onnx = pytest.importorskip("onnx")
    model = create_model("fasternet_t0", num_classes=10).eval()
    f = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), f, dynamo=False, opset_version=17,
                      do_constant_folding=False)
    ops = [n.op_type for n in onnx.load_from_string(f.getvalue()).graph.node]
    n_blocks = sum((1, 2, 8, 2))
    assert ops.count("Split") == n_blocks and ops.count("Concat") == n_blocks
    assert "ScatterND" not in ops


def _timm_fasternet_t0_shapes() -> dict[str, tuple[int, ...]]:
    """timm/models/fasternet.py layout for embed 40, depths (1, 2, 8, 2)."""
    shapes = {"patch_embed.proj.weight": (40, 3, 4, 4), **bn_keys("patch_embed.norm", 40)}
    for i, depth in enumerate((1, 2, 8, 2)):
        dim = 40 * 2**i
        if i > 0:  # the merge layer lives at the *start* of stage i in timm
            shapes[f"stages.{i}.downsample.reduction.weight"] = (dim, dim // 2, 2, 2)
            shapes.update(bn_keys(f"stages.{i}.downsample.norm", dim))
        for j in range(depth):
            p = f"stages.{i}.blocks.{j}"
            shapes[f"{p}.spatial_mixing.partial_conv3.weight"] = (dim // 4, dim // 4, 3, 3)
            shapes[f"{p}.mlp.0.weight"] = (2 * dim, dim, 1, 1)
            shapes.update(bn_keys(f"{p}.mlp.1", 2 * dim))
            shapes[f"{p}.mlp.3.weight"] = (dim, 2 * dim, 1, 1)
    shapes["conv_head.weight"] = (1280, 320, 1, 1)
    shapes["classifier.weight"] = (1000, 1280)
    shapes["classifier.bias"] = (1000,)
    return shapes


def test_timm_fasternet_state_dict_loads_strictly(t0):
    sd = synthetic(_timm_fasternet_t0_shapes())
    model = copy.deepcopy(t0)
    remapped = get_model_info("fasternet_t0").remap_state_dict(sd)
    model.load_state_dict(remapped, strict=True)
    ours = model.state_dict()
    # values land in the right place, not just somewhere with the right shape
    ds1, ds3 = "stages.1.downsample", "stages.3.downsample"
    assert torch.equal(ours["stages.1.reduction.weight"], sd[f"{ds1}.reduction.weight"])
    assert torch.equal(ours["stages.5.norm.running_var"], sd[f"{ds3}.norm.running_var"])
    assert torch.equal(ours["stages.4.blocks.7.mlp.3.weight"], sd["stages.2.blocks.7.mlp.3.weight"])
    assert torch.equal(ours["avgpool_pre_head.1.weight"], sd["conv_head.weight"])
    assert torch.equal(ours["head.bias"], sd["classifier.bias"])


def test_official_fasternet_keys_are_identity(t0):
    sd = t0.state_dict()
    for k in ("patch_embed.proj.weight", "stages.0.blocks.0.spatial_mixing.partial_conv3.weight",
              "stages.1.reduction.weight", "stages.6.blocks.1.mlp.3.weight",
              "avgpool_pre_head.1.weight", "head.weight"):
        assert k in sd, k
    remapped = get_model_info("fasternet_t0").remap_state_dict(sd)
    assert list(remapped) == list(sd)


# ------------------------------------------------------------------ MobileNeXt


def _sandglass(multiplier: float) -> SandGlass:
    torch.manual_seed(0)
    block = SandGlass(16, 16, stride=1, reduction=6, identity_tensor_multiplier=multiplier).eval()
    return block


@torch.no_grad()
def test_identity_tensor_multiplier_selects_shortcut_channels():
    x = torch.randn(2, 16, 8, 8)
    full, half = _sandglass(1.0), _sandglass(0.5)
    half.load_state_dict(full.state_dict())
    branch = full.conv(x)
    assert torch.allclose(full(x), branch + x)
    y = half(x)
    assert torch.allclose(y[:, :8], branch[:, :8] + x[:, :8])
    assert torch.allclose(y[:, 8:], branch[:, 8:])  # no shortcut on the second half
    assert not torch.allclose(y, full(x))


@torch.no_grad()
def test_no_shortcut_when_shape_changes():
    torch.manual_seed(0)
    down = SandGlass(16, 24, stride=2, reduction=6).eval()
    x = torch.randn(1, 16, 8, 8)
    assert torch.equal(down(x), down.conv(x))
    # stride sits on the last depthwise conv, the 1x1s run at full resolution
    convs = [m for m in down.conv if isinstance(m, nn.Conv2d)]
    assert convs[-1].stride == (2, 2) and convs[-1].groups == 24
    assert all(c.stride == (1, 1) for c in convs[:-1])


def test_mobilenext_block_layout_matches_authors_checkpoint(mnext100):
    m = mnext100
    assert len(m.features) == 21  # stem + 20 sandglass blocks (960-wide stage has 3)
    # authors' SSDLite taps features[13].conv[:5] (pre-stride) and features[20].conv[:8]
    assert len(m.features[13].conv) == 7 and m.features[13].conv[5].stride == (2, 2)
    assert len(m.features[20].conv) == 10
    sd = m.state_dict()
    assert "features.1.conv.8.weight" in sd and "classifier.1.weight" in sd
    assert sd["features.20.conv.3.weight"].shape == (208, 960, 1, 1)


def test_mobilenext_identity_multiplier_export_has_no_scatter():
    onnx = pytest.importorskip("onnx")
    model = create_model("mobilenext_050", num_classes=10, identity_tensor_multiplier=0.5).eval()
    f = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), f, dynamo=False, opset_version=17,
                      do_constant_folding=False)
    ops = [n.op_type for n in onnx.load_from_string(f.getvalue()).graph.node]
    assert "ScatterND" not in ops and ops.count("Concat") == 12  # one per residual block


@pytest.mark.parametrize("name", ["fasternet_t0", "mobilenext_050"])
def test_any_input_size(name):
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        for size in (32, 96):  # 32 px leaves a 1x1 map before the adaptive pool
            assert model(torch.randn(1, 3, size, size)).shape == (1, 7)
