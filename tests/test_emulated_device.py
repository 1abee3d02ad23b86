"""The emulated Raspberry Pi end to end: cross-compile → RPC upload → run under qemu → same numbers.

Runs in CI (root there). The first run on a machine builds the arm64 rootfs (~7 min, then cached
in ``$LAAQ_EMU_CACHE``/``~/.cache/laaq-bench``); later runs start a server in ~10-15 s.
Skipped, with the reason, where the emulator cannot exist: not root, not Linux, or
``LAAQ_SKIP_EMULATED=1``.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.devices.emulated import (
    RASPBERRY_PI_4,
    EmulatedRPCServer,
    EmulatorUnavailable,
    ensure_rootfs,
)

pytestmark = pytest.mark.emulated

ARM_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
CROSS_CXX = "aarch64-linux-gnu-g++"
SESSION_TIMEOUT_S = 300


def _emulator_skip_reason() -> str | None:
    if os.environ.get("LAAQ_SKIP_EMULATED") == "1":
        return "LAAQ_SKIP_EMULATED=1"
    if not sys.platform.startswith("linux"):
        return f"the emulated board needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        missing = [t for t in (CROSS_CXX, "qemu-aarch64-static", "mmdebstrap") if shutil.which(t) is None]
        return (
            "the emulated board needs root (mount namespace, chroot; first use also apt-get and binfmt)"
            + (f"; missing tools: {', '.join(missing)}" if missing else "")
            + ". Run the tests as root (`make emu-device` as root builds the board once), or use a real board"
            " over RPC."
        )
    return None


@pytest.fixture(scope="module")
def rootfs() -> Path:
    """The cached rootfs; built here on a machine's first run (as root, a failure is a failure)."""
    reason = _emulator_skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        return ensure_rootfs(progress=True)
    except EmulatorUnavailable as exc:
        pytest.fail(f"emulated board unavailable although running as root:\n{exc}")


@pytest.fixture(scope="module")
def server(rootfs: Path) -> Iterator[EmulatedRPCServer]:
    with EmulatedRPCServer(RASPBERRY_PI_4) as srv:
        yield srv


# ---------------------------------------------------------------------------------------------
# Tiny models: a float torch model through the real importer, and an int8 conv (int32 accumulate)
# ---------------------------------------------------------------------------------------------
def _torch_module() -> tuple[Any, list[np.ndarray]]:
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        exported = torch.export.export(model, (x,))
    mod = from_exported_program(exported, unwrap_unit_return_tuple=True)
    return mod, [x.numpy()]


def _int8_conv_module() -> tuple[Any, list[np.ndarray]]:
    from tvm import relax

    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, size=(1, 8, 10, 10), dtype=np.int8)
    w = rng.integers(-128, 128, size=(16, 8, 3, 3), dtype=np.int8)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, 8, 10, 10), "int8"))
    wv = relax.Var("w", relax.TensorType((16, 8, 3, 3), "int8"))
    with bb.function("main", [xv, wv]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(xv, wv, padding=1, out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), [x, w]


MODELS: dict[str, Callable[[], tuple[Any, list[np.ndarray]]]] = {
    "torch_fp32": _torch_module,
    "relax_int8_conv": _int8_conv_module,
}


def _run_host(mod: Any, inputs: list[np.ndarray]) -> np.ndarray:
    import tvm
    from tvm import relax

    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


def _export_arm(mod: Any, out_dir: Path) -> Path:
    import tvm
    from tvm.support import cc

    ex = tvm.compile(mod, target=tvm.target.Target(ARM_TARGET))
    path = out_dir / "model_aarch64.so"
    ex.export_library(str(path), fcompile=cc.cross_compiler(CROSS_CXX))
    return path


def _remote_vm(srv: EmulatedRPCServer, lib_path: Path) -> tuple[Any, Any, Any]:
    from tvm import relax, rpc

    remote = rpc.connect(srv.host, srv.port, session_timeout=SESSION_TIMEOUT_S)
    remote.upload(str(lib_path))
    rlib = remote.load_module(lib_path.name)
    dev = remote.cpu()
    vm = relax.VirtualMachine(rlib, dev)
    return remote, dev, vm


def _to_remote(inputs: list[np.ndarray], dev: Any) -> list[Any]:
    import tvm

    return [tvm.runtime.tensor(a, dev) for a in inputs]


# ---------------------------------------------------------------------------------------------
# (a) same outputs as on the host
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_emulated_board_matches_host(name: str, server: EmulatedRPCServer, tmp_path: Path) -> None:
    mod, inputs = MODELS[name]()
    expected = _run_host(mod, inputs)
    lib = _export_arm(mod, tmp_path)
    remote, dev, vm = _remote_vm(server, lib)
    t0 = time.perf_counter()
    got = vm["main"](*_to_remote(inputs, dev)).numpy()
    call_s = time.perf_counter() - t0
    print(f"{name}: one emulated inference call {call_s * 1e3:.1f} ms (smoke test, not performance)")
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if np.issubdtype(expected.dtype, np.integer):
        np.testing.assert_array_equal(got, expected)
    else:
        # Same TIR, different ISA: only FMA contraction may differ.
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# (b) a dead board gives a clear error, fast; (c) nothing survives teardown
# ---------------------------------------------------------------------------------------------
def _call_with_deadline(fn: Callable[[], Any], deadline_s: float) -> tuple[bool, BaseException | None, float]:
    """Run fn in a daemon thread; (finished, exception, seconds). A hang is reported, not waited."""
    box: dict[str, BaseException | None] = {"exc": None}

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["exc"] = exc

    t0 = time.monotonic()
    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(deadline_s)
    return not th.is_alive(), box["exc"], time.monotonic() - t0


def _alive(pids: set[int]) -> list[str]:
    import psutil

    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            out.append(f"{pid} {p.name()} {p.status()}")
        except psutil.NoSuchProcess:
            pass
    return out


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(prefix)]


def test_killed_board_fails_fast_and_leaves_nothing(rootfs: Path, tmp_path: Path) -> None:
    mod, inputs = _int8_conv_module()
    lib = _export_arm(mod, tmp_path)
    with EmulatedRPCServer(RASPBERRY_PI_4) as srv:
        remote, dev, vm = _remote_vm(srv, lib)
        args = _to_remote(inputs, dev)
        vm["main"](*args)  # the session works before the fault
        pids = srv.pids
        assert len(pids) >= 3, f"expected unshare, server and its worker/session processes: {pids}"

        # The board dies in the middle of a long remote call (a timing loop of ~minutes)...
        vm.set_input("main", *args)
        timing = vm.time_evaluator("invoke_stateful", dev, number=1_000_000, repeat=1)
        killer = threading.Timer(2.0, srv.kill)
        killer.start()
        finished, exc, took = _call_with_deadline(lambda: timing("main"), 60)
        killer.join()
        assert finished, "an in-flight call on a board that died hung for 60 s instead of failing"
        assert exc is not None, "an in-flight call on a board that died returned a result"
        print(f"in-flight call failed {took - 2.0:.2f} s after the kill: {type(exc).__name__}: {str(exc)[:200]}")
        assert took < 30
        assert not srv.alive
        assert not _alive(pids), f"kill() left processes: {_alive(pids)}"

        # ... and any later call on the dead session fails at once too.
        finished, exc, took = _call_with_deadline(lambda: vm["main"](*args).numpy(), 60)
        assert finished and exc is not None, "a call on a killed board hung or returned a result"
        assert took < 30
    assert not _alive(pids)


def test_teardown_kills_everything_and_unmounts(rootfs: Path) -> None:
    import tvm

    with EmulatedRPCServer(RASPBERRY_PI_4) as srv:
        remote = tvm.rpc.connect(srv.host, srv.port, session_timeout=SESSION_TIMEOUT_S)
        assert remote.cpu().exist
        pids = srv.pids  # with an open session: unshare, ns init/server, Popen worker, session child
        log = srv.log_path
        assert _alive(pids)
    # Exit with the client's session still open: the session child must die too.
    assert not _alive(pids), f"processes left after teardown: {_alive(pids)}"
    assert not _mounts_under(rootfs), f"mounts left under the rootfs: {_mounts_under(rootfs)}"
    assert log is not None and not log.exists()
    del remote


def test_port_in_use_reports_clearly(rootfs: Path) -> None:
    """A server that cannot start (port taken) fails with EmulatorUnavailable, not a hang."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # The server may bind port+1 only if free; make the whole range [port, port+1) busy.
        t0 = time.monotonic()
        with pytest.raises(EmulatorUnavailable):
            with EmulatedRPCServer(RASPBERRY_PI_4, port=port, startup_timeout_s=60):
                pass
        assert time.monotonic() - t0 < 60
