"""Artifacts built before a refactor still load: the manifest's schema is a contract.

``data/manifest-before-subpackages.json`` is the manifest of a real fasternet_t0 x86 artifact
built by the code before the package moved into subpackages. A build today must write every
field it has, with the same type, and today's readers (ModelSpec, `info`'s description, the
preprocessing) must accept it as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecompile.listing import describe
from edgecompile.pipeline.artifact import Artifact
from edgecompile.pipeline.build import build
from edgecompile.pipeline.preprocess import Preprocess
from edgecompile.pipeline.spec import BuildOptions, ModelSpec

OLD = json.loads((Path(__file__).parent / "data" / "manifest-before-subpackages.json").read_text())


def _shape(value, path="manifest"):
    """Key paths and value types of a JSON document (list items by their first element)."""
    if isinstance(value, dict):
        out = {path: "object"}
        for k, v in value.items():
            out |= _shape(v, f"{path}.{k}")
        return out
    if isinstance(value, list):
        return {path: "array"} | (_shape(value[0], f"{path}[]") if value else {})
    return {path: "number" if isinstance(value, (int, float)) and not isinstance(value, bool)
            else type(value).__name__}


def test_readers_accept_the_old_manifest(tmp_path):
    spec = ModelSpec(**OLD["spec"])
    assert spec.input_shape == tuple(OLD["input"]["shape"])
    assert Preprocess.from_manifest(OLD).mean == tuple(OLD["input"]["mean"])
    (tmp_path / "manifest.json").write_text(json.dumps(OLD))
    text = describe(Artifact(tmp_path, OLD))
    assert "fasternet_t0" in text and OLD["files"]["model.so"]["sha256"] in text


@pytest.mark.tvm
def test_a_build_today_writes_every_old_field_with_its_type(tmp_path):
    new = build(BuildOptions("fasternet_t0", "x86", output_dir=tmp_path, input_size=64), quiet=True)
    old_shape, new_shape = _shape(OLD), _shape(new.manifest)
    # Free-form sections: the TVM target's canonical fields and the tuning section's reason
    # vary with the machine and the records, not with the schema.
    free = ("manifest.target.tvm_target.", "manifest.tuning.", "manifest.checkpoint_meta")
    changed = {k: (v, new_shape.get(k)) for k, v in old_shape.items()
               if not k.startswith(free) and new_shape.get(k) != v}
    assert changed == {}, f"fields gone or retyped since the old schema: {changed}"
    assert new.manifest["schema"] == OLD["schema"]
