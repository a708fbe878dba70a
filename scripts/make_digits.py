#!/usr/bin/env python3
"""Build a small, real image-classification data set from scikit-learn's bundled digits.

``sklearn.datasets.load_digits`` ships inside scikit-learn (``sklearn/datasets/data/digits.csv.gz``,
the UCI "Optical Recognition of Handwritten Digits" test set): 1797 grey 8x8 images with values
0..16, ten classes. Nothing is downloaded.

Output: an ImageFolder tree ``OUT/{train,test}/<class>/<index>.png`` with classes "0".."9" and
``<index>`` the image's 4-digit index in ``load_digits()`` (e.g. ``test/7/0042.png``), plus
``OUT/split.json`` listing the indices of each split.

Images: value v (0..16) -> grey level round(v * 255 / 16) (ink bright on a black background, as
in the source data), upscaled 8x8 -> 32x32 with PIL's ``Image.BILINEAR`` resampling, stored as
8-bit RGB PNG (three equal channels). 32 px is the smallest input every family accepts (they all
downsample by 32).

Split (fixed; re-running gives byte-identical files): stratified 80/20. For each class c in
0..9, the indices of that class (in ascending order) are permuted with
``numpy.random.RandomState(SEED + c).permutation`` (SEED = 0; the legacy RandomState stream is
stable across numpy versions) and the first round(n_c / 5) go to test, the rest to train.
That is 1438 train / 359 test images (test per class: 36 36 35 37 36 36 36 36 35 36).

Idempotent: files whose bytes already match are left alone, stale PNGs in the tree are removed.

    python scripts/make_digits.py [--out DIR]      # default $EDGECOMPILE_CACHE/digits or
                                                   # ~/.cache/edgecompile/digits
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

SEED = 0
TEST_FRACTION_DENOM = 5  # 1/5 = 20% of each class goes to test
IMAGE_SIZE = 32
CLASSES = [str(i) for i in range(10)]
N_TOTAL, N_TRAIN, N_TEST = 1797, 1438, 359
SPLIT_DOC = ("sklearn load_digits (1797 images); stratified 80/20: per class c the ascending "
             "indices permuted with numpy RandomState(0 + c), first round(n_c/5) -> test; "
             "1438 train / 359 test; 8x8 0..16 -> round(v*255/16) uint8, PIL BILINEAR to 32x32 RGB")


def default_out() -> Path:
    from edgecompile.paths import cache_dir

    return cache_dir() / "digits"


def split_indices(targets: np.ndarray) -> dict[str, list[int]]:
    train: list[int] = []
    test: list[int] = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(targets == c)  # ascending
        perm = idx[np.random.RandomState(SEED + c).permutation(len(idx))]
        n_test = (2 * len(idx) + TEST_FRACTION_DENOM) // (2 * TEST_FRACTION_DENOM)  # round(n/5)
        test += perm[:n_test].tolist()
        train += perm[n_test:].tolist()
    return {"train": sorted(train), "test": sorted(test)}


def render_png(img8: np.ndarray) -> bytes:
    from PIL import Image

    grey = np.rint(img8.astype(np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(grey).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def build(out: Path) -> dict[str, int]:
    """Write (or refresh) the tree under ``out``; returns counts {"train", "test", "written"}."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images, targets = np.asarray(d.images), np.asarray(d.target)
    if images.shape != (N_TOTAL, 8, 8):
        raise RuntimeError(f"unexpected load_digits shape {images.shape}")
    splits = split_indices(targets)
    if (len(splits["train"]), len(splits["test"])) != (N_TRAIN, N_TEST):
        raise RuntimeError(f"split sizes {len(splits['train'])}/{len(splits['test'])} "
                           f"!= documented {N_TRAIN}/{N_TEST}")
    wanted: dict[Path, bytes] = {}
    for split, indices in splits.items():
        for i in indices:
            wanted[out / split / CLASSES[targets[i]] / f"{i:04d}.png"] = render_png(images[i])
    written = 0
    for path, data in wanted.items():
        if path.is_file() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        written += 1
    for split in splits:
        for stale in (out / split).rglob("*"):
            if stale.is_file() and stale not in wanted:
                stale.unlink()
    split_json = json.dumps({"dataset": "sklearn-digits", "split": SPLIT_DOC, "seed": SEED,
                             "classes": CLASSES, **splits}, indent=None).encode() + b"\n"
    sj = out / "split.json"
    if not (sj.is_file() and sj.read_bytes() == split_json):
        sj.write_bytes(split_json)
        written += 1
    return {"train": len(splits["train"]), "test": len(splits["test"]), "written": written}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default: $EDGECOMPILE_CACHE/digits or "
                         "~/.cache/edgecompile/digits)")
    args = ap.parse_args(argv)
    out = (args.out or default_out()).expanduser()
    counts = build(out)
    print(f"{out}: {counts['train']} train / {counts['test']} test images "
          f"({counts['written']} files written)", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
