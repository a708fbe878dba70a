"""Family-specific checks for ShuffleNet v1 (megvii layout) and v2 (torchvision layout).

Published checkpoints are not downloaded: the expected key names and shapes are written out
here from the references (megvii ShuffleNetV1/network.py + blocks.py, torchvision
shufflenetv2.py), independently of the model code, and loaded with ``strict=True`` after
``remap_state_dict``.
"""

from __future__ import annotations

import io

import pytest
import torch
from published_keys import bn_keys, load_published, synthetic
from torch import nn

from edgecompile.models import create_model, get_model_info, list_models
from edgecompile.models.shufflenet_v1 import channel_shuffle_v1
from edgecompile.models.shufflenet_v2 import channel_shuffle
from edgecompile.pipeline.flops import count_params


def _channels(x: torch.Tensor) -> list[int]:
    return [int(v) for v in x[0, :, 0, 0]]


# ------------------------------------------------------------------ channel shuffle


def test_v1_shuffle_is_megvii_permutation():
    # megvii blocks.py: reshape(b, C // g, g, h, w) -> permute(0, 2, 1, 3, 4) -> reshape.
    # Output channel i * n + j comes from input channel j * g + i (n = C // g).
    c, g = 12, 3
    x = torch.arange(c, dtype=torch.float32).reshape(1, c, 1, 1).expand(2, c, 2, 2)
    n = c // g
    expected = [j * g + i for i in range(g) for j in range(n)]
    assert _channels(channel_shuffle_v1(x, g)) == expected == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
    # ... which is the inverse of the (g, n) transpose the paper's text / torchvision use
    paper = _channels(channel_shuffle(x, g))
    assert paper == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11] != expected
    assert _channels(channel_shuffle(channel_shuffle_v1(x, g), g)) == list(range(c))


def test_v2_shuffle_interleaves_the_two_halves():
    x = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1, 1)
    assert _channels(channel_shuffle(x, 2)) == [0, 4, 1, 5, 2, 6, 3, 7]


# ------------------------------------------------------------------ ShuffleNet v1


def test_v1_variants_registered():
    groups = ("g1", "g2", "g3", "g4", "g8")
    assert list_models("shufflenet_v1") == (
        [f"shufflenet_v1_{g}" for g in groups] + [f"shufflenet_v1_{g}_050" for g in groups])


def _megvii_v1_shapes(groups: int, widths: tuple[int, int, int, int]) -> dict:
    """megvii ShuffleNetV1 keys: first_conv.{0,1}, features.N.branch_main_{1,2}, classifier.0."""
    stem, *stages = widths
    shapes = {"first_conv.0.weight": (stem, 3, 3, 3), **bn_keys("first_conv.1", stem)}
    cin, idx = stem, 0
    for s, (cout, repeats) in enumerate(zip(stages, (4, 8, 4), strict=True)):
        for i in range(repeats):
            mid = cout // 4
            main_out = cout - cin if i == 0 else cout
            g1 = 1 if (s == 0 and i == 0) else groups
            p = f"features.{idx}"
            shapes |= {f"{p}.branch_main_1.0.weight": (mid, cin // g1, 1, 1),
                       **bn_keys(f"{p}.branch_main_1.1", mid),
                       f"{p}.branch_main_1.3.weight": (mid, 1, 3, 3),
                       **bn_keys(f"{p}.branch_main_1.4", mid),
                       f"{p}.branch_main_2.0.weight": (main_out, mid // groups, 1, 1),
                       **bn_keys(f"{p}.branch_main_2.1", main_out)}
            cin, idx = cout, idx + 1
    shapes["classifier.0.weight"] = (1000, cin)  # no bias in megvii's classifier
    return shapes


@pytest.mark.parametrize(("name", "groups", "widths"), [
    # megvii network.py's stage_out_channels for the checkpoints it publishes
    ("shufflenet_v1_g3", 3, (24, 240, 480, 960)),
    ("shufflenet_v1_g8", 8, (24, 384, 768, 1536)),
    ("shufflenet_v1_g3_050", 3, (12, 120, 240, 480)),
    ("shufflenet_v1_g8_050", 8, (16, 192, 384, 768)),
])
def test_v1_megvii_checkpoint_loads(name, groups, widths):
    shapes = _megvii_v1_shapes(groups, widths)
    sd = synthetic(shapes)
    remapped = get_model_info(name).remap_state_dict(sd)
    assert remapped.keys() == sd.keys()  # names match: identity
    assert all(remapped[k] is sd[k] for k in sd)  # ... and values are not touched
    load_published(name, shapes)


def test_v1_first_stage2_unit_is_not_grouped():
    feats = create_model("shufflenet_v1_g3").features
    first, second = feats[0].branch_main_1[0], feats[1].branch_main_1[0]
    assert first.groups == 1 and first.in_channels == 24  # 24 stem channels: too few to group
    assert second.groups == 3 and feats[4].branch_main_1[0].groups == 3  # stage 3 first unit
    assert all(b.branch_main_2[0].groups == 3 for b in feats)


def test_v1_stride2_unit_concats_avgpooled_shortcut_first():
    model = create_model("shufflenet_v1_g8").eval()
    blk = model.features[4]  # stage 3, first unit: 384 -> 768
    x = torch.randn(1, 384, 8, 8)
    with torch.no_grad():
        y = blk(x)
    assert y.shape == (1, 768, 4, 4)
    pooled = nn.functional.avg_pool2d(x, 3, 2, 1)  # count_include_pad, as megvii
    assert torch.allclose(y[:, :384], pooled, atol=1e-6)  # shortcut, no ReLU on it
    assert (y[:, 384:] >= 0).all()  # main branch after ReLU


def test_v1_stride1_unit_is_residual():
    blk = create_model("shufflenet_v1_g2").features[1].eval()
    nn.init.zeros_(blk.branch_main_2[1].weight)  # main branch outputs only its BN shift
    nn.init.zeros_(blk.branch_main_2[1].bias)
    x = torch.randn(1, 200, 7, 7)
    with torch.no_grad():
        assert torch.equal(blk(x), torch.relu(x))


@pytest.mark.parametrize(("name", "widths"), [
    ("shufflenet_v1_g2_050", (12, 96, 200, 400)),
    ("shufflenet_v1_g4_050", (12, 144, 272, 544)),
])
def test_v1_half_width_g2_g4_are_group_divisible(name, widths):
    # 0.5x of Table 1 gives 100 / 136 for stage 2, whose out/4 bottlenecks do not split into
    # 2 / 4 groups; we round those (see _CHANNELS in the model file).
    model = create_model(name)
    groups = model.features[1].groups
    assert model.first_conv[0].out_channels == widths[0]
    outs, cin = [], widths[0]
    for blk in model.features:
        cin = blk.branch_main_2[0].out_channels + (cin if blk.stride == 2 else 0)
        outs.append(cin)
        assert blk.branch_main_1[0].out_channels % groups == 0  # bottleneck = out / 4
    assert (outs[3], outs[11], outs[15]) == widths[1:]
    assert count_params(model) == get_model_info(name).params


# ------------------------------------------------------------------ ShuffleNet v2


def _torchvision_v2_shapes(widths: tuple[int, int, int, int, int]) -> dict:
    """torchvision ShuffleNetV2 keys: conv1, stage2-4 (branch1 / branch2), conv5, fc."""
    stem, *stages, last = widths
    shapes = {"conv1.0.weight": (stem, 3, 3, 3), **bn_keys("conv1.1", stem)}
    cin = stem
    for s, (cout, repeats) in enumerate(zip(stages, (4, 8, 4), strict=True)):
        half = cout // 2
        for i in range(repeats):
            p = f"stage{s + 2}.{i}"
            if i == 0:
                shapes |= {f"{p}.branch1.0.weight": (cin, 1, 3, 3), **bn_keys(f"{p}.branch1.1", cin),
                           f"{p}.branch1.2.weight": (half, cin, 1, 1),
                           **bn_keys(f"{p}.branch1.3", half)}
            shapes |= {f"{p}.branch2.0.weight": (half, cin if i == 0 else half, 1, 1),
                       **bn_keys(f"{p}.branch2.1", half),
                       f"{p}.branch2.3.weight": (half, 1, 3, 3), **bn_keys(f"{p}.branch2.4", half),
                       f"{p}.branch2.5.weight": (half, half, 1, 1), **bn_keys(f"{p}.branch2.6", half)}
            cin = cout
    shapes |= {"conv5.0.weight": (last, cin, 1, 1), **bn_keys("conv5.1", last),
               "fc.weight": (1000, last), "fc.bias": (1000,)}
    return shapes


_V2 = {
    "shufflenet_v2_x0_5": ((24, 48, 96, 192, 1024), 1_366_792),
    "shufflenet_v2_x1_0": ((24, 116, 232, 464, 1024), 2_278_604),
    "shufflenet_v2_x1_5": ((24, 176, 352, 704, 1024), 3_503_624),
    "shufflenet_v2_x2_0": ((24, 244, 488, 976, 2048), 7_393_996),
}


@pytest.mark.parametrize("name", list(_V2))
def test_v2_torchvision_keys_shapes_and_counts(name):
    widths, n_params = _V2[name]
    info = get_model_info(name)
    assert info.params_exact and info.params == n_params
    shapes = _torchvision_v2_shapes(widths)
    model = create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == shapes  # same keys, same order-independent shapes
    assert count_params(model) == n_params
    load_published(name, shapes)


def test_v2_split_unit_passes_half_through():
    blk = create_model("shufflenet_v2_x0_5").stage3[1].eval()  # stride 1, 96 channels
    x = torch.randn(1, 96, 6, 6)
    with torch.no_grad():
        y = blk(x)
    # first half untouched, interleaved by the shuffle to the even output channels
    assert torch.equal(y[:, 0::2], x[:, :48])


# ------------------------------------------------------------------ forward / export


@pytest.mark.parametrize("name", ["shufflenet_v1_g8_050", "shufflenet_v2_x0_5"])
def test_onnx_export_at_smallest_input_matches_pytorch(name):
    # 32 px is the smallest size the pipeline uses: 1x1 before global pooling, where megvii's
    # fixed AvgPool2d(7) would fail.
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    f = io.BytesIO()
    torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, do_constant_folding=False,
                      input_names=["x"], output_names=["y"])
    ops = {n.op_type for n in onnx.load_from_string(f.getvalue()).graph.node}
    if name.startswith("shufflenet_v2"):
        assert "Split" in ops and "Slice" not in ops  # the channel split is one Split node
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert y.shape == (2, 10) and abs(y - ref).max() < 1e-4
