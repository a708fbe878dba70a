"""Target presets: data, not code.

A preset is a TOML file: the TVM target in dict form, the host (for GPU targets), the cross
compiler, the device's core (for emulation), the default RPC key and thread count. A preset may
``inherits = "other"`` and override fields; tables (``[target]``) merge key by key.

Built-in presets live beside this file. Users add boards without touching code: drop a file in
``~/.config/edgecompile/targets/``, in a directory listed in ``$EDGECOMPILE_TARGETS``
(``os.pathsep``-separated), or pass the file's path as the target name.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompile.errors import EdgeCompileError, UnknownNameError

BUILTIN_DIR = Path(__file__).parent
DEVICES = ("cpu", "opencl", "cuda")


class PresetError(EdgeCompileError):
    """A preset file that is not valid; the message names the file and the field."""


@dataclass(frozen=True)
class TargetPreset:
    name: str
    description: str
    target: dict[str, Any]  # TVM target, dict form
    device: str = "cpu"  # which TVM device the artifact runs on
    host: dict[str, Any] | None = None  # TVM host target for GPU presets
    # None: this host's compiler; "ndk": the Android NDK's clang from $TVM_NDK_CC
    cross_compiler: str | None = None
    device_core: str | None = None  # qemu -cpu for the emulated device
    rpc_key: str = ""
    threads: int | None = None  # None: the runtime's default
    source: str = field(default="", compare=False)  # file(s) it came from

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# field -> (type, required)
_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "description": (str, True),
    "target": (dict, True),
    "device": (str, False),
    "host": (dict, False),
    "cross_compiler": (str, False),
    "device_core": (str, False),
    "rpc_key": (str, False),
    "threads": (int, False),
}


def search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("EDGECOMPILE_TARGETS", "").split(os.pathsep) if p]
    dirs.append(Path.home() / ".config" / "edgecompile" / "targets")
    dirs.append(BUILTIN_DIR)  # last: a user's file of the same name overrides a built-in
    return dirs


def _preset_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in search_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found.setdefault(f.stem, f)
    return found


def list_targets() -> list[str]:
    return sorted(_preset_files())


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"target preset {path}: not valid TOML: {e}") from None
    except OSError as e:
        raise PresetError(f"target preset {path}: cannot read: {e.strerror}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve(path: Path, files: dict[str, Path], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise PresetError(f"target preset {path}: field 'inherits' makes a cycle")
    raw = _read(path)
    parent = raw.pop("inherits", None)
    if parent is None:
        return raw | {"_source": [str(path)]}
    if not isinstance(parent, str) or parent not in files:
        raise PresetError(
            f"target preset {path}: field 'inherits' names unknown preset {parent!r} "
            f"(known: {', '.join(sorted(files))})"
        )
    base = _resolve(files[parent], files, seen + (path,))
    merged = _merge(base, raw)
    merged["_source"] = base["_source"] + [str(path)]
    return merged


def _validate(name: str, data: dict[str, Any], path: Path) -> TargetPreset:
    sources = data.pop("_source")
    for key in data:
        if key not in _FIELDS:
            raise PresetError(
                f"target preset {path}: unknown field '{key}' (fields: {', '.join(_FIELDS)})"
            )
    for key, (typ, required) in _FIELDS.items():
        if key not in data:
            if required:
                raise PresetError(f"target preset {path}: missing required field '{key}'")
            continue
        if not isinstance(data[key], typ) or (typ is int and isinstance(data[key], bool)):
            raise PresetError(
                f"target preset {path}: field '{key}' must be a {typ.__name__}, "
                f"got {type(data[key]).__name__}"
            )
    if "kind" not in data["target"]:
        raise PresetError(f"target preset {path}: field 'target.kind' is missing")
    if data.get("device", "cpu") not in DEVICES:
        raise PresetError(
            f"target preset {path}: field 'device' must be one of {', '.join(DEVICES)}"
        )
    return TargetPreset(name=name, source=" <- ".join(reversed(sources)), **data)


def get_target(name: str) -> TargetPreset:
    """A preset by name, or by the path of a TOML file."""
    files = _preset_files()
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise PresetError(f"target preset {path}: no such file")
        return _validate(path.stem, _resolve(path, files), path)
    if name not in files:
        raise UnknownNameError("target", name, files)
    return _validate(name, _resolve(files[name], files), files[name])
