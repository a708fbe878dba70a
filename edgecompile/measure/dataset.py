"""Labelled image sets on disk: the ImageFolder layout and ImageNet's synset folders.

    DIR/<class>/<image>      ImageFolder: classes in sorted order, or the order the artifact's
                             checkpoint recorded (its "classes"), matched by name
    DIR/n01440764/<image>    ImageNet validation in synset folders: the 1000-class index is the
                             sorted order of all 1000 wnids; a subset of them needs
                             --class-index (torchvision's imagenet_class_index.json, or a JSON
                             list of wnids in index order), since sorted order would be wrong
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from edgecompile.errors import EdgeCompileError, UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
WNID = re.compile(r"^n\d{8}$")
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class LabelledImages:
    samples: list[tuple[Path, int]]  # (image, class index)
    classes: list[str]  # index -> class name, as the model numbers them
    layout: str  # "imagefolder" or "imagenet"


def _read_class_index(path: Path) -> list[str]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"--class-index {path}: cannot read ({e})") from None
    if isinstance(data, dict):  # torchvision: {"0": ["n01440764", "tench"], ...}
        return [data[str(i)][0] for i in range(len(data))]
    if isinstance(data, list) and all(isinstance(w, str) for w in data):
        return data
    raise UsageError(f"--class-index {path}: expected a list of wnids or torchvision's index")


def scan(root: Path, model_classes: list[str] | None = None, num_classes: int | None = None,
         class_index: Path | None = None) -> LabelledImages:
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--data {root}: no such directory")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UsageError(f"--data {root}: no class folders (expected DIR/<class>/<image>)")

    if all(WNID.match(f) for f in folders):
        layout = "imagenet"
        if class_index is not None:
            classes = _read_class_index(class_index)
        elif len(folders) == IMAGENET_CLASSES:
            classes = folders
        else:
            raise UsageError(
                f"--data {root}: {len(folders)} ImageNet synset folders, not all 1000; their "
                "sorted order is not the 1000-class index: give --class-index FILE"
            )
    else:
        layout = "imagefolder"
        classes = list(model_classes) if model_classes else folders
    index = {c: i for i, c in enumerate(classes)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise UsageError(f"--data {root}: folders the model has no class for: {', '.join(unknown[:5])}")
    if num_classes is not None and len(classes) > num_classes:
        raise UsageError(f"--data {root}: {len(classes)} classes, but the model has {num_classes} outputs")

    samples = [
        (img, index[f])
        for f in folders
        for img in sorted((root / f).iterdir())
        if img.is_file() and img.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise EdgeCompileError(f"--data {root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return LabelledImages(samples, classes, layout)
