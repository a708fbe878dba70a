"""Target presets are data: built-ins resolve, user files add boards, bad files name the problem."""

import pytest

from edgecompile.backend import compiler, core
from edgecompile.errors import UnknownNameError
from edgecompile.targets import PresetError, get_target, list_targets


def test_builtin_presets_resolve_and_tvm_accepts_them():
    for name in list_targets():
        p = get_target(name)
        assert p.description and p.target["kind"]
        compiler.make_target(p.target, p.host)  # TVM itself validates every field


def test_rpi4_inherits_arm64_and_overrides_the_core():
    p = get_target("rpi4")
    assert p.target["mtriple"] == "aarch64-linux-gnu" and p.target["mattr"] == ["+neon"]
    assert p.target["mcpu"] == p.device_core == "cortex-a72"
    assert p.cross_compiler == "aarch64-linux-gnu-g++"
    assert "arm64.toml" in p.source and "rpi4.toml" in p.source


def test_x86_native_cpu_is_resolved_to_this_host():
    t = compiler.target_to_dict(compiler.make_target(get_target("x86").target))
    assert t["mcpu"] == core.host_cpu() != "native"


def test_unknown_target_suggests_the_closest():
    with pytest.raises(UnknownNameError) as e:
        get_target("rpi44")
    assert e.value.suggestion == "rpi4" and "x86" in str(e.value)


def test_user_board_file_in_search_path(tmp_path, monkeypatch):
    (tmp_path / "myboard.toml").write_text(
        'description = "my board"\ninherits = "arm64"\ndevice_core = "cortex-a55"\n'
        '[target]\nmcpu = "cortex-a55"\n'
    )
    monkeypatch.setenv("EDGECOMPILE_TARGETS", str(tmp_path))
    assert "myboard" in list_targets()
    p = get_target("myboard")
    assert p.target["mcpu"] == "cortex-a55" and p.target["mtriple"] == "aarch64-linux-gnu"


def test_preset_by_path(tmp_path):
    f = tmp_path / "lab.toml"
    f.write_text('description = "lab x86"\n[target]\nkind = "llvm"\nmcpu = "znver3"\n')
    assert get_target(str(f)).target == {"kind": "llvm", "mcpu": "znver3"}


@pytest.mark.parametrize("text, field", [
    ('[target]\nkind = "llvm"\n', "description"),
    ('description = "x"\n', "target"),
    ('description = "x"\nthreads = "four"\n[target]\nkind = "llvm"\n', "threads"),
    ('description = "x"\nbogus = 1\n[target]\nkind = "llvm"\n', "bogus"),
    ('description = "x"\n[target]\nmcpu = "a"\n', "target.kind"),
    ('description = "x"\ndevice = "npu"\n[target]\nkind = "llvm"\n', "device"),
    ('description = "x"\ninherits = "nope"\n[target]\nkind = "llvm"\n', "inherits"),
    ('description = "x\n', "not valid TOML"),
])
def test_malformed_preset_names_file_and_field(tmp_path, text, field):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(PresetError) as e:
        get_target(str(f))
    assert str(f) in str(e.value) and field in str(e.value)


def test_inheritance_cycle_is_reported(tmp_path, monkeypatch):
    (tmp_path / "a.toml").write_text('description = "a"\ninherits = "b"\n[target]\nkind = "llvm"\n')
    (tmp_path / "b.toml").write_text('description = "b"\ninherits = "a"\n[target]\nkind = "llvm"\n')
    monkeypatch.setenv("EDGECOMPILE_TARGETS", str(tmp_path))
    with pytest.raises(PresetError, match="cycle"):
        get_target("a")
