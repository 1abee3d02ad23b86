"""Target files: loading, aliases, and clear errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from target_files import copy_shipped

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
    assert load_target("x86-avx2").variants == ("fp32", "int8", "int7", "laaq")
    assert load_target("x86").variants == ("fp32", "int8", "laaq")  # host-native: int7 only pays on AVX2
    assert load_target("x86-vnni").variants == ("fp32", "int8", "laaq")  # vpdpbusd: 7 bits gain nothing
    assert load_target("rpi4").variants == ("fp32", "int8", "laaq")
    copy_shipped(tmp_path, "x86")
    (tmp_path / "bad.toml").write_text('extends = "x86"\nvariants = "int8"\n')
    with pytest.raises(TargetError, match="key 'variants' must be"):
        load_target("bad", tmp_path)


def test_x86_is_this_machine_at_its_own_isa_and_portable_targets_stay() -> None:
    """`x86` compiles for the CPU it runs on (resolved once, LLVM's name), gets that CPU's scheme and roofline
    and keeps its tuning records per CPU; `x86-avx2` / `x86-vnni` mean the same code on every machine."""
    from harness.profile import host_cpu

    native, avx2, vnni = resolve("x86"), resolve("x86-avx2"), resolve("x86-vnni")
    cpu = host_cpu()
    assert native.host_native and native.mcpu == cpu and native.database_name == f"x86-{cpu}"
    assert not avx2.host_native and avx2.mcpu == "x86-64-v3" and avx2.database_name == "x86-avx2"
    assert vnni.mcpu == "znver4" and avx2.scheme.name == "nchwc_avx2" and vnni.scheme.name == "nchwc_vnni"
    has_vnni = "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    assert native.scheme.name == ("nchwc_vnni" if has_vnni else "nchwc_avx2")
    assert native.target.peak_int8_gmacs == (1536.0 if has_vnni else 384.0)
    assert native.cpu == f"{cpu}, {native.scheme.name}/{native.scheme.instruction}"
    assert load_target("x86").tvm["mcpu"] == "host"  # the file says "host"; only the profile resolves it
