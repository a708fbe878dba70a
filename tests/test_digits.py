"""The digits data set (scripts/make_digits.py) and the committed checkpoints trained on it.

No training here: the data set is rebuilt from scikit-learn's bundled copy (a few seconds) and
every checkpoint in ``checkpoints/digits`` is re-scored in PyTorch through ``Preprocess``, the
way evaluation reads images, against the top-1 its meta and ``results.jsonl`` record.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompile.models import create_model, get_model_info, list_families
from edgecompile.paths import file_sha256
from edgecompile.pipeline.preprocess import Preprocess
from edgecompile.pipeline.weights import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
CKPT_DIR = REPO / "checkpoints" / "digits"
CLASSES = [str(i) for i in range(10)]
TEST_PER_CLASS = [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]  # as documented in make_digits.py
N_TRAIN, N_TEST = 1438, 359
MIN_TOP1 = 95.0


def _load_make_digits():
    spec = importlib.util.spec_from_file_location("make_digits", REPO / "scripts" / "make_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_digits = _load_make_digits()


def _meta(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]


def _results() -> dict[str, dict]:
    lines = (CKPT_DIR / "results.jsonl").read_text().splitlines()
    return {r["model"]: r for r in (json.loads(line) for line in lines if line.strip())}


CHECKPOINTS = sorted(p.name for p in CKPT_DIR.glob("*.pth"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    make_digits.build(out)
    return out


def test_split_has_the_documented_sizes(digits):
    assert (make_digits.N_TRAIN, make_digits.N_TEST) == (N_TRAIN, N_TEST)
    train = sorted(digits.glob("train/*/*.png"))
    test = sorted(digits.glob("test/*/*.png"))
    assert (len(train), len(test)) == (N_TRAIN, N_TEST)
    assert [len(list((digits / "test" / c).glob("*.png"))) for c in CLASSES] == TEST_PER_CLASS
    # Disjoint, together every image of load_digits exactly once, each in its true class.
    from sklearn.datasets import load_digits

    target = load_digits().target
    seen = [(int(p.stem), int(p.parent.name)) for p in train + test]
    assert sorted(i for i, _ in seen) == list(range(N_TRAIN + N_TEST))
    assert all(target[i] == c for i, c in seen)
    split = json.loads((digits / "split.json").read_text())
    assert split["test"] == sorted(int(p.stem) for p in test)
    assert split["train"] == sorted(int(p.stem) for p in train)


def test_images_are_32px_rgb(digits):
    from PIL import Image

    for p in sorted(digits.glob("test/*/*.png"))[:20]:
        with Image.open(p) as im:
            assert (im.mode, im.size) == ("RGB", (32, 32))


def test_second_build_is_byte_identical_and_repairs(digits, tmp_path):
    first = _files(digits)
    make_digits.build(tmp_path)
    assert _files(tmp_path) == first
    # Idempotent in place: nothing rewritten; a damaged file is restored, a stray one removed.
    assert make_digits.build(tmp_path)["written"] == 0
    victim = tmp_path / next(k for k in first if k.endswith(".png"))
    victim.write_bytes(b"broken")
    (tmp_path / "train" / "3" / "stray.png").write_bytes(b"x")
    assert make_digits.build(tmp_path)["written"] == 1
    assert _files(tmp_path) == first


def test_one_checkpoint_per_family_and_results_match_the_files():
    results = _results()
    assert sorted(results) == sorted(n[:-4] for n in CHECKPOINTS)
    assert sorted(get_model_info(m).family for m in results) == sorted(list_families())
    for name in CHECKPOINTS:
        r = results[name[:-4]]
        assert r["sha256"] == file_sha256(CKPT_DIR / name), name
        assert r["size_bytes"] == (CKPT_DIR / name).stat().st_size, name
    total = sum(r["size_bytes"] for r in results.values())
    assert total < 30e6, f"checkpoints total {total / 1e6:.1f} MB"


_test_sets: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _test_set(root: Path, pre: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(root), pre)
    if key not in _test_sets:
        xs, ys = [], []
        for ci, cls in enumerate(CLASSES):
            for f in sorted((root / "test" / cls).glob("*.png")):
                xs.append(pre(f))
                ys.append(ci)
        _test_sets[key] = torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    return _test_sets[key]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_checkpoint_scores_what_it_records(name, digits):
    path = CKPT_DIR / name
    meta = _meta(path)
    assert meta["model"] == name[:-4]
    assert meta["num_classes"] == 10 and meta["classes"] == CLASSES
    assert meta["dataset"] == "sklearn-digits" and meta["split"] == make_digits.SPLIT_DOC
    assert meta["test_samples"] == N_TEST
    assert meta["input_size"] >= 32 and meta["crop_pct"] == 1.0

    model = create_model(meta["model"], num_classes=10)
    state = read_checkpoint(path)
    if meta.get("dtype") == "float16":
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.eval()

    pre = Preprocess(meta["input_size"], tuple(meta["mean"]), tuple(meta["std"]), meta["crop_pct"])
    x, y = _test_set(digits, pre)
    assert len(y) == meta["test_samples"]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 128]).argmax(1) for i in range(0, len(x), 128)])
    top1 = 100.0 * float((pred == y).float().mean())
    assert abs(top1 - meta["test_top1"]) <= 0.01, (top1, meta["test_top1"])
    assert abs(_results()[meta["model"]]["test_top1"] - meta["test_top1"]) <= 0.01
    assert top1 >= MIN_TOP1, f"{name}: {top1:.2f}% < {MIN_TOP1}%"
