"""The kernel table: every compiled kernel's operator class, read from the real fused module.

Checked against what the architectures are, counted from their ONNX graphs: FasterNet's partial
convolutions are PConv, MobileNet's layers depthwise and pointwise, ShuffleNet v1's 1x1s
grouped, ShuffleNet's channel shuffles data movement. (Compiling is not needed: the table is
read from the same fused module the build schedules.)
"""

from collections import Counter

import pytest

from edgecompile.backend import compiler, kernels, metaschedule
from edgecompile.backend.cpu_schedules.concat_split import splits_pay
from edgecompile.pipeline.build import final_graph
from edgecompile.pipeline.spec import BuildOptions
from edgecompile.pipeline.stages.export import INPUT_NAME
from edgecompile.targets import get_target

pytestmark = pytest.mark.tvm
SIZE = 64


def _table(name: str, size: int = SIZE):
    g = final_graph(BuildOptions(name, "x86", input_size=size))
    preset = get_target("x86")
    target = compiler.make_target(preset.target, preset.host)
    table = kernels.kernel_table(metaschedule.prepare(g.folded, INPUT_NAME, g.spec.input_shape, target).mod)
    return g.folded, table


def _calls(table) -> Counter:
    c = Counter()
    for k in table["kernels"]:
        c[k["op_class"]] += k["calls"]
    return c


def _pieces(model) -> list[int]:
    """Per ONNX Conv, the kernels it compiles to: a groups-1 conv that reads a Concat (directly
    or through a MaxPool) becomes one partial conv per concatenated tensor where that pays
    (concat_split.splits_pay: the squeeze convs, not the classifier or FasterNet's expansions)."""
    nodes = {o: n for n in model.graph.node for o in n.output}
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    weights.update({n.output[0]: list(n.attribute[0].t.dims) for n in model.graph.node
                    if n.op_type == "Constant" and n.attribute[0].name == "value"})
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        attrs = {a.name: a for a in n.attribute}
        src = nodes.get(n.input[0])
        if src is not None and src.op_type == "MaxPool":
            src = nodes.get(src.input[0])
        grouped = "group" in attrs and attrs["group"].i > 1
        c_out, c_in = weights[n.input[1]][:2]
        split = (src is not None and src.op_type == "Concat" and not grouped
                 and splits_pay(len(src.input), c_out, c_in))
        out.append(len(src.input) if split else 1)
    return out


def _convs(model) -> list:
    """(group, kernel taps, input is a Split output, output goes to a Concat) per ONNX Conv."""
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    consumed: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumed.setdefault(i, []).append(n.op_type)
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        attrs = {a.name: a for a in n.attribute}
        group = attrs["group"].i if "group" in attrs else 1
        taps = 1
        for k in attrs["kernel_shape"].ints:
            taps *= k
        out.append((group, taps, produced.get(n.input[0]) in ("Split", "Slice"),
                    "Concat" in consumed.get(n.output[0], [])))
    return out


def test_every_call_is_in_the_sequence_and_counted():
    _, table = _table("mobilenet_v2_100")
    assert sum(k["calls"] for k in table["kernels"]) == len(table["sequence"])
    assert {k["name"] for k in table["kernels"]} == set(table["sequence"])
    for k in table["kernels"]:
        assert k["op_class"] in kernels.OP_CLASSES and k["bytes"] > 0 and k["args"]


def test_fasternet_partial_convolutions_are_pconv():
    model, table = _table("fasternet_t0")
    convs = _convs(model)
    partial = sum(1 for g, taps, sliced, joined in convs if sliced and joined)
    assert partial == 1 + 2 + 8 + 2  # one PConv per FasterNet block, depths (1, 2, 8, 2)
    c = _calls(table)
    assert c["pconv"] == partial
    assert c["pointwise"] == sum(k for (g, taps, s, j), k in zip(convs, _pieces(model), strict=True)
                                 if taps == 1 and not (s and j))
    assert c["conv"] == sum(1 for g, taps, s, j in convs if taps > 1 and not (s and j))
    assert c["depthwise"] == c["grouped"] == 0


@pytest.mark.parametrize("name", ["mobilenet_v1_100", "mobilenet_v2_100", "mobilenext_100"])
def test_mobilenets_are_depthwise_and_pointwise(name):
    model, table = _table(name)
    convs = _convs(model)
    c = _calls(table)
    assert c["depthwise"] == sum(1 for g, *_ in convs if g > 1) > 0
    assert c["pointwise"] == sum(1 for g, taps, *_ in convs if g == 1 and taps == 1) > 0
    assert c["conv"] == sum(1 for g, taps, *_ in convs if g == 1 and taps > 1)
    assert c["dense"] == 1 and c["pconv"] == c["grouped"] == 0


def test_shufflenet_v1_group_convolutions_and_shuffles():
    model, table = _table("shufflenet_v1_g3")
    convs = _convs(model)
    c = _calls(table)
    grouped_1x1 = sum(1 for g, taps, *_ in convs if g > 1 and taps == 1)
    assert c["grouped"] == grouped_1x1 > 0
    assert c["depthwise"] == sum(1 for g, taps, *_ in convs if g > 1 and taps > 1)
    shuffles = [k for k in table["kernels"] if "transpose" in k["name"]]
    assert shuffles and all(k["op_class"] == "data_movement" for k in shuffles)


def test_shufflenet_v2_shared_pointwise_kernel_is_not_pconv():
    """ShuffleNet v2 splits the channels and concatenates them again, but its convolutions are
    not partial ones: the 1x1 after the split feeds a depthwise, not the concat (one kernel
    serves both 1x1s of a unit)."""
    model, table = _table("shufflenet_v2_x1_0")
    c = _calls(table)
    assert c["pconv"] == 0
    assert c["depthwise"] == sum(1 for g, *_ in _convs(model) if g > 1)
    moves = [k for k in table["kernels"] if "transpose" in k["name"] or "split" in k["name"]]
    assert moves and all(k["op_class"] == "data_movement" for k in moves)


def test_squeezenet_fire_modules():
    model, table = _table("squeezenet1_1")
    convs = _convs(model)
    c = _calls(table)
    # At 64 px the first fires' 3x3 expands (@15: 64 tiles) are Winograd's: two transform
    # kernels and a grouped GEMM conv each; the later ones (@7, @3: too few tiles) are direct.
    winograd = c["winograd"] // 2
    assert winograd == 2 and c["grouped"] == winograd
    assert c["conv"] + winograd == sum(1 for g, taps, *_ in convs if taps > 1)
    # The squeeze convs read a concat: one partial conv per expand branch. The classifier
    # (1000 channels out of 512) reads the one concat left.
    pieces = _pieces(model)
    assert c["pointwise"] == sum(k for (g, taps, *_), k in zip(convs, pieces, strict=True)
                                 if taps == 1)
    assert c["pointwise"] > sum(1 for g, taps, *_ in convs if taps == 1)
    concats = [k for k in table["kernels"] if "concat" in k["name"]]
    assert sum(k["calls"] for k in concats) == 1 and pieces[-1] == 1 and max(pieces) == 2
    assert c["pooling"] >= 3  # three max pools, the global average


def test_flops_are_the_models_macs_times_two():
    """The conv / dense FLOPs of the table against the MACs counted on the PyTorch model (a
    different counter): the same network, so the same arithmetic within epilogue ops."""
    from edgecompile.pipeline import flops as counting

    g = final_graph(BuildOptions("mobilenet_v2_100", "x86", input_size=SIZE))
    _, table = _table("mobilenet_v2_100")
    heavy = sum(k["flops"] * k["calls"] for k in table["kernels"]
                if k["op_class"] in ("conv", "pointwise", "depthwise", "dense"))
    macs = counting.count_macs(g.model, SIZE)
    assert heavy == pytest.approx(2 * macs, rel=0.05)

