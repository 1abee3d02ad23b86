"""Target files: loading, aliases, and clear errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.profile import resolve
from harness.targets import TargetError, available_targets, load_target


def test_shipped_targets_load() -> None:
    names = available_targets()
    assert "x86" in names
    for n in names:
        t = load_target(n)
        assert t.name == n and t.threads >= 1 and "kind" in t.tvm
    x86 = load_target("x86")
    assert x86.device.kind == "local" and x86.measured_as == "native"
    assert str(resolve(x86).tvm_target.kind) == "llvm"


def test_unknown_target_lists_available() -> None:
    with pytest.raises(TargetError, match=r"unknown target 'pi9'.*x86"):
        load_target("pi9")


def test_malformed_files_name_file_and_key(tmp_path) -> None:
    (tmp_path / "bad.toml").write_text("description = 'x'\nthreads = 'two'\n[tvm]\nkind='llvm'\n")
    with pytest.raises(TargetError, match=r"bad\.toml.*'threads'"):
        load_target("bad", tmp_path)
    (tmp_path / "broken.toml").write_text("description = \n")
    with pytest.raises(TargetError, match=r"broken\.toml: not valid TOML"):
        load_target("broken", tmp_path)
    (tmp_path / "extra.toml").write_text("description='x'\nthreads=1\nturbo=true\n[tvm]\nkind='llvm'\n")
    with pytest.raises(TargetError, match=r"extra\.toml: unknown key.*turbo"):
        load_target("extra", tmp_path)
    (tmp_path / "emu.toml").write_text("description='x'\nthreads=1\n[tvm]\nkind='llvm'\n[device]\nkind='emulated'\n")
    with pytest.raises(TargetError, match="qemu_cpu"):
        load_target("emu", tmp_path)


def test_extends_inherits_and_overrides(tmp_path) -> None:
    (tmp_path / "board.toml").write_text(
        "description='a board'\nthreads=4\ncross_compiler='cc'\n[tvm]\nkind='llvm'\nmcpu='cortex-a72'\n")
    (tmp_path / "alias.toml").write_text("extends='board'\nthreads=2\n[tvm]\nmattr=['+neon']\n")
    t = load_target("alias", tmp_path)
    assert t.name == "alias" and t.threads == 2 and t.cross_compiler == "cc"
    assert t.tvm == {"kind": "llvm", "mcpu": "cortex-a72", "mattr": ["+neon"]}


def test_default_variants_are_target_data(tmp_path) -> None:
    """x86 measures its vpmaddubsw path (int7) by default; a file may set its own list, checked on load."""
    assert load_target("x86").variants == ("fp32", "int8", "int7", "laaq")
    assert load_target("x86-vnni").variants == ("fp32", "int8", "laaq")  # vpdpbusd: 7 bits gain nothing
    assert load_target("rpi4").variants == ("fp32", "int8", "laaq")
    (tmp_path / "x86.toml").write_text((Path(load_target("x86").path)).read_text())
    (tmp_path / "bad.toml").write_text('extends = "x86"\nvariants = "int8"\n')
    with pytest.raises(TargetError, match="variants"):
        load_target("bad", tmp_path)
