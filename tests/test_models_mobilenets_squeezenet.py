"""Family-specific checks for SqueezeNet, MobileNet V1 and MobileNet V2.

Published checkpoints are not downloaded: the tests build synthetic state dicts from the
published key names and shapes (written out here independently of the model code) and load
them with ``strict=True`` after ``remap_state_dict``.
"""

from __future__ import annotations

import io

import pytest
import torch
from published_keys import bn_keys, load_published, synthetic
from torch import nn

from edgecompile.models import create_model, get_model_info, list_models
from edgecompile.models.mobilenet_v2 import InvertedResidual
from edgecompile.pipeline.flops import count_params

FAMILIES = ("squeezenet", "mobilenet_v1", "mobilenet_v2")





# ------------------------------------------------------------------ registry / sizes


def test_variants_registered():
    assert list_models("squeezenet") == ["squeezenet1_0", "squeezenet1_1"]
    assert list_models("mobilenet_v1") == [
        "mobilenet_v1_100", "mobilenet_v1_075", "mobilenet_v1_050", "mobilenet_v1_025"]
    assert sorted(list_models("mobilenet_v2")) == sorted([
        "mobilenet_v2_140", "mobilenet_v2_100", "mobilenet_v2_075", "mobilenet_v2_050",
        "mobilenet_v2_035"])


@pytest.mark.parametrize("family", FAMILIES)
def test_param_counts_match_registry(family):
    for name in list_models(family):
        info = get_model_info(name)
        n = count_params(create_model(name))
        if info.params_exact:
            assert n == info.params, name
        else:
            assert abs(n - info.params) <= 0.01 * info.params, (name, n, info.params)


@pytest.mark.parametrize(("name", "expected"), [
    ("squeezenet1_0", 1_248_424), ("squeezenet1_1", 1_235_496), ("mobilenet_v2_100", 3_504_872),
])
def test_torchvision_exact_counts(name, expected):
    info = get_model_info(name)
    assert info.params_exact and info.params == expected
    assert count_params(create_model(name)) == expected


def test_num_classes_changes_only_the_head():
    a, b = create_model("mobilenet_v2_050"), create_model("mobilenet_v2_050", num_classes=10)
    assert count_params(a) - count_params(b) == 1280 * 990 + 990
    assert create_model("squeezenet1_1", num_classes=10)(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1", "mobilenet_v1_025",
                                  "mobilenet_v2_035"])
def test_forward_smallest_input(name):
    # 32 px is the smallest size the pipeline uses: 1x1 before global pooling for the
    # MobileNets, and SqueezeNet's unpadded stem + ceil-mode pools must not run out of pixels.
    model = create_model(name).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 1000)
    assert torch.isfinite(y).all()


# ------------------------------------------------------------------ SqueezeNet


def test_squeezenet_torchvision_keys_and_spatial_sizes():
    m10, m11 = create_model("squeezenet1_0"), create_model("squeezenet1_1")
    k10, k11 = set(m10.state_dict()), set(m11.state_dict())
    # Fire modules sit at torchvision's Sequential indices (pools in between take an index).
    for i in (3, 4, 5, 7, 8, 9, 10, 12):
        assert f"features.{i}.squeeze.weight" in k10
        assert f"features.{i}.expand3x3.bias" in k10
    for i in (3, 4, 6, 7, 9, 10, 11, 12):
        assert f"features.{i}.expand1x1.weight" in k11
    assert {"features.0.weight", "classifier.1.weight", "classifier.1.bias"} <= k10 & k11
    assert m10.state_dict()["features.0.weight"].shape == (96, 3, 7, 7)
    assert m11.state_dict()["features.0.weight"].shape == (64, 3, 3, 3)
    # ceil_mode pooling: 224 -> 13x13 before the classifier (floor mode would give 12x12)
    with torch.no_grad():
        assert m10.features(torch.zeros(1, 3, 224, 224)).shape == (1, 512, 13, 13)
        assert m11.features(torch.zeros(1, 3, 224, 224)).shape == (1, 512, 13, 13)


def test_squeezenet_torchvision_checkpoint_loads():
    shapes = {"features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,)}
    fires = {3: (64, 16, 64), 4: (128, 16, 64), 6: (128, 32, 128), 7: (256, 32, 128),
             9: (256, 48, 192), 10: (384, 48, 192), 11: (384, 64, 256), 12: (512, 64, 256)}
    for i, (cin, sq, ex) in fires.items():
        p = f"features.{i}"
        shapes |= {f"{p}.squeeze.weight": (sq, cin, 1, 1), f"{p}.squeeze.bias": (sq,),
                   f"{p}.expand1x1.weight": (ex, sq, 1, 1), f"{p}.expand1x1.bias": (ex,),
                   f"{p}.expand3x3.weight": (ex, sq, 3, 3), f"{p}.expand3x3.bias": (ex,)}
    shapes |= {"classifier.1.weight": (1000, 512, 1, 1), "classifier.1.bias": (1000,)}
    load_published("squeezenet1_1", shapes)


# ------------------------------------------------------------------ MobileNet V1


def _timm_mobilenetv1_shapes(stem: int, stages: list[tuple[int, int]]) -> dict:
    """timm mobilenetv1_* keys: conv_stem/bn1, blocks.i.j.{conv_dw,bn1,conv_pw,bn2}, classifier."""
    shapes = {"conv_stem.weight": (stem, 3, 3, 3), **bn_keys("bn1", stem)}
    cin = stem
    for i, (cout, n) in enumerate(stages):
        for j in range(n):
            p = f"blocks.{i}.{j}"
            shapes |= {f"{p}.conv_dw.weight": (cin, 1, 3, 3), **bn_keys(f"{p}.bn1", cin),
                       f"{p}.conv_pw.weight": (cout, cin, 1, 1), **bn_keys(f"{p}.bn2", cout)}
            cin = cout
    shapes |= {"classifier.weight": (1000, cin), "classifier.bias": (1000,)}
    return shapes


def test_mobilenet_v1_timm_checkpoint_loads():
    stages = [(64, 1), (128, 2), (256, 2), (512, 6), (1024, 2)]
    load_published("mobilenet_v1_100", _timm_mobilenetv1_shapes(32, stages))
    quarter = [(c // 4, n) for c, n in stages]
    load_published("mobilenet_v1_025", _timm_mobilenetv1_shapes(8, quarter))


def test_mobilenet_v1_structure():
    model = create_model("mobilenet_v1_100")
    blocks = [b for stage in model.blocks for b in stage]
    assert len(blocks) == 13  # paper Table 1
    assert [b.stride for b in blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 27  # stem + 2 per block
    # no residual: with zeroed BN shifts and weights the output of a block is exactly zero
    blk = blocks[4].eval()  # 256 -> 256, stride 1: a residual would be possible shape-wise
    for mod in blk.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.zeros_(mod.weight)
    with torch.no_grad():
        assert torch.count_nonzero(blk(torch.rand(1, 256, 8, 8))) == 0
        # overall stride 32 (the paper's last "s2" is effectively stride 1): 64 px -> 2x2
        assert model.eval().forward_features(torch.zeros(1, 3, 64, 64)).shape == (1, 1024, 2, 2)


# ------------------------------------------------------------------ MobileNet V2


def test_inverted_residual_uses_shortcut_only_when_shapes_match():
    cases = {(32, 32, 1): True, (32, 32, 2): False, (32, 64, 1): False, (16, 24, 2): False}
    for (cin, cout, stride), expected in cases.items():
        blk = InvertedResidual(cin, cout, stride, expand_ratio=6).eval()
        assert blk.use_res_connect is expected
        # behavioural check: with the projection zeroed, the block output is x (shortcut) or 0
        nn.init.zeros_(blk.conv[-2].weight)
        nn.init.zeros_(blk.conv[-1].bias)
        x = torch.randn(1, cin, 8, 8)
        with torch.no_grad():
            y = blk(x)
        if expected:
            assert torch.equal(y, x)
        else:
            assert y.shape == (1, cout, 8 // stride, 8 // stride)
            assert torch.count_nonzero(y) == 0


def test_inverted_residual_linear_bottleneck():
    blk = InvertedResidual(16, 24, 2, expand_ratio=6)
    # expand (ConvBNReLU6), depthwise (ConvBNReLU6), projection conv, BN -- nothing after BN
    assert isinstance(blk.conv[-1], nn.BatchNorm2d) and isinstance(blk.conv[-2], nn.Conv2d)
    assert blk.conv[1][0].groups == 96 and blk.conv[0][0].out_channels == 96


def test_mobilenet_v2_channels_and_head():
    def chans(name):
        m = create_model(name)
        return m.features[0][0].out_channels, m.features[17].conv[-2].out_channels, m.last_channel

    assert chans("mobilenet_v2_100") == (32, 320, 1280)
    assert chans("mobilenet_v2_140") == (48, 448, 1792)  # head scaled for width > 1
    assert chans("mobilenet_v2_050") == (16, 160, 1280)  # head kept at 1280 for width < 1
    # 0.35: 32*0.35 = 11.2 rounds up to 16 (8 would be >10% below), 320*0.35 = 112
    assert chans("mobilenet_v2_035") == (16, 112, 1280)
    m = create_model("mobilenet_v2_100")
    assert [b.use_res_connect for b in m.features[1:18]] == [
        False, False, True, False, True, True, False, True, True, True,
        False, True, True, False, True, True, False]


def _torchvision_mobilenetv2_shapes(stem: int, stages: list[tuple[int, int]], head: int) -> dict:
    shapes = {"features.0.0.weight": (stem, 3, 3, 3), **bn_keys("features.0.1", stem)}
    cin, idx = stem, 1
    for s, (cout, n) in enumerate(stages):
        for _ in range(n):
            p = f"features.{idx}.conv"
            if s == 0:
                shapes |= {f"{p}.0.0.weight": (cin, 1, 3, 3), **bn_keys(f"{p}.0.1", cin),
                           f"{p}.1.weight": (cout, cin, 1, 1), **bn_keys(f"{p}.2", cout)}
            else:
                h = cin * 6
                shapes |= {f"{p}.0.0.weight": (h, cin, 1, 1), **bn_keys(f"{p}.0.1", h),
                           f"{p}.1.0.weight": (h, 1, 3, 3), **bn_keys(f"{p}.1.1", h),
                           f"{p}.2.weight": (cout, h, 1, 1), **bn_keys(f"{p}.3", cout)}
            cin, idx = cout, idx + 1
    shapes |= {f"features.{idx}.0.weight": (head, cin, 1, 1), **bn_keys(f"features.{idx}.1", head),
               "classifier.1.weight": (1000, head), "classifier.1.bias": (1000,)}
    return shapes


def _timm_mobilenetv2_shapes(stem: int, stages: list[tuple[int, int]], head: int) -> dict:
    shapes = {"conv_stem.weight": (stem, 3, 3, 3), **bn_keys("bn1", stem)}
    cin = stem
    for s, (cout, n) in enumerate(stages):
        for j in range(n):
            p = f"blocks.{s}.{j}"
            if s == 0:  # timm's DepthwiseSeparableConv
                shapes |= {f"{p}.conv_dw.weight": (cin, 1, 3, 3), **bn_keys(f"{p}.bn1", cin),
                           f"{p}.conv_pw.weight": (cout, cin, 1, 1), **bn_keys(f"{p}.bn2", cout)}
            else:  # timm's InvertedResidual
                h = cin * 6
                shapes |= {f"{p}.conv_pw.weight": (h, cin, 1, 1), **bn_keys(f"{p}.bn1", h),
                           f"{p}.conv_dw.weight": (h, 1, 3, 3), **bn_keys(f"{p}.bn2", h),
                           f"{p}.conv_pwl.weight": (cout, h, 1, 1), **bn_keys(f"{p}.bn3", cout)}
            cin = cout
    shapes |= {"conv_head.weight": (head, cin, 1, 1), **bn_keys("bn2", head),
               "classifier.weight": (1000, head), "classifier.bias": (1000,)}
    return shapes


_V2_100 = (32, [(16, 1), (24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1)], 1280)
_V2_050 = (16, [(8, 1), (16, 2), (16, 3), (32, 4), (48, 3), (80, 3), (160, 1)], 1280)
_V2_140 = (48, [(24, 1), (32, 2), (48, 3), (88, 4), (136, 3), (224, 3), (448, 1)], 1792)


def test_mobilenet_v2_torchvision_checkpoint_loads_identity():
    shapes = _torchvision_mobilenetv2_shapes(*_V2_100)
    sd = synthetic(shapes)
    assert get_model_info("mobilenet_v2_100").remap_state_dict(sd).keys() == sd.keys()
    load_published("mobilenet_v2_100", shapes)


@pytest.mark.parametrize(("name", "cfg"), [
    ("mobilenet_v2_100", _V2_100), ("mobilenet_v2_050", _V2_050), ("mobilenet_v2_140", _V2_140),
])
def test_mobilenet_v2_timm_checkpoint_remaps(name, cfg):
    model = load_published(name, _timm_mobilenetv2_shapes(*cfg))
    # Same-shaped tensors (e.g. the two BNs of the hidden width) could be swapped and still
    # load, so check where each kind of timm module lands, by value.
    sd = synthetic(_timm_mobilenetv2_shapes(*cfg))
    ours = model.state_dict()
    expected = {
        "conv_stem.weight": "features.0.0.weight",
        "bn1.running_mean": "features.0.1.running_mean",
        "blocks.0.0.conv_dw.weight": "features.1.conv.0.0.weight",
        "blocks.0.0.bn1.weight": "features.1.conv.0.1.weight",
        "blocks.0.0.conv_pw.weight": "features.1.conv.1.weight",
        "blocks.0.0.bn2.bias": "features.1.conv.2.bias",
        "blocks.3.2.conv_pw.weight": "features.9.conv.0.0.weight",
        "blocks.3.2.bn1.weight": "features.9.conv.0.1.weight",
        "blocks.3.2.conv_dw.weight": "features.9.conv.1.0.weight",
        "blocks.3.2.bn2.weight": "features.9.conv.1.1.weight",
        "blocks.3.2.conv_pwl.weight": "features.9.conv.2.weight",
        "blocks.3.2.bn3.running_var": "features.9.conv.3.running_var",
        "blocks.6.0.conv_pwl.weight": "features.17.conv.2.weight",
        "conv_head.weight": "features.18.0.weight",
        "bn2.weight": "features.18.1.weight",
        "classifier.weight": "classifier.1.weight",
    }
    for timm_key, our_key in expected.items():
        assert torch.equal(ours[our_key], sd[timm_key]), (timm_key, our_key)


def test_mobilenet_v2_remap_rejects_unknown_timm_keys():
    sd = synthetic(_timm_mobilenetv2_shapes(*_V2_050))
    sd["blocks.1.0.se.conv_reduce.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="se.conv_reduce"):
        get_model_info("mobilenet_v2_050").remap_state_dict(sd)


# ------------------------------------------------------------------ export


def test_onnx_export_matches_pytorch():
    # MobileNetV2 covers the residual Add and ReLU6 (Clip); one model keeps this test fast.
    ort = pytest.importorskip("onnxruntime")
    model = create_model("mobilenet_v2_035")
    # Calibrate BN running stats with one train-mode pass (freshly initialised stats let the
    # activations vanish) and use O(1) logits, so 1e-4 is a tight bound.
    model.classifier[1].weight.data.normal_()
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32))
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    f = io.BytesIO()
    torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, do_constant_folding=False,
                      input_names=["x"], output_names=["y"])
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert ref.std() > 0.1
    assert abs(y - ref).max() < 1e-4
