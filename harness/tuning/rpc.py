"""MetaSchedule measurement for targets whose code cannot run here: cross-built, timed over TVM RPC.

:func:`harness.tuning.tuner.tune` uses this for an ``llvm`` target whose architecture is not the host's (an
aarch64 Raspberry Pi from an x86 host). Each candidate is

* **built** here by a ``LocalBuilder`` whose export step links the kernel with the target file's
  ``cross_compiler`` into a ``.so`` (MetaSchedule's default export is a ``.tar`` that the device
  would have to link itself; the emulated board and a stock Pi have no compiler), and
* **measured** by ``ms.runner.RPCRunner`` on the target's device: a real board at ``rpc`` host:port
  or behind a ``tracker`` key (``--rpc`` / ``--rpc-tracker --rpc-key``), or, for
  ``[device] kind = "emulated"``, an emulated board started here for the duration of the tuning
  (:class:`harness.devices.emulated.EmulatedRPCServer`, always torn down).

No tracker is needed for a direct server: the runner's ``f_create_session`` (:func:`create_session`)
connects to host:port itself. Every wait is bounded: the session handshake / tracker request
(``connect_timeout_s``), each candidate's whole upload+run (the runner's worker pool gets a
timeout; the server side gets ``session_timeout``), and one probe session before tuning starts, so
an unreachable or busy board costs one bounded wait and a note instead of N failed trials.

Figures from an emulated board rank candidates by their speed *under QEMU*, not on the board:
:data:`EMULATED_NOTE` goes into ``tuned.json`` and the progress output.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tvm

from harness.backend import tvm_fixes

if TYPE_CHECKING:
    from harness.profile import TargetProfile

EMULATED_NOTE = "emulated (QEMU user-mode): timings rank candidates under emulation, not board performance"
#: Seconds one candidate may take over RPC (session, upload, load, random inputs, timing).
CANDIDATE_TIMEOUT_S = 120.0


class TuneDeviceUnavailable(RuntimeError):
    """The device to measure candidates on cannot be reached; the message says why."""


@dataclass
class Measurer:
    """What ``ms.tune_tasks`` needs to build and measure candidates, and how to label the figures."""

    builder: Any
    runner: Any
    measured: str  # "native (...)" or EMULATED_NOTE; goes into tuned.json
    where: str


# ------------------------------------------------------------------------------ worker functions
# Module-level so that cloudpickle sends them to MetaSchedule's popen workers by reference.
def export_cross(mod, cross_compiler: str) -> str:
    """``f_export`` of the builder: a shared library linked with the target's cross compiler."""
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="laaq-ms-"), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler(cross_compiler) if cross_compiler else None)
    return path


def create_session(rpc_config, *, direct: bool, threads: int, wait_s: float):
    """``f_create_session`` of the runner: a direct server (no tracker) or a tracker key, both bounded
    by ``wait_s`` (:mod:`harness.devices.rpc`); a busy or absent board raises
    :class:`TuneDeviceUnavailable`."""
    from harness.devices.base import DeviceError
    from harness.devices.rpc import connect_direct, tracker_request

    host, port, key = rpc_config.tracker_host, int(rpc_config.tracker_port), rpc_config.tracker_key
    timeout = rpc_config.session_timeout_sec
    try:
        sess = (connect_direct(host, port, timeout, wait_s) if direct
                else tracker_request(host, port, key, timeout, wait_s))
    except DeviceError as e:
        raise TuneDeviceUnavailable(str(e)) from e
    sess.get_function("runtime.config_threadpool")(1, threads)
    return sess


def alloc_arguments(session, device, args_info, alloc_repeat: int) -> list[list[Any]]:
    """``f_alloc_argument`` of the runner: random kernel arguments on the device.

    MetaSchedule's default fills them on the device with ``tvm.contrib.random.random_fill_for_measure``,
    which lives in ``libtvm_runtime_extra.so`` — not loaded by a runtime-only TVM
    (``TVM_USE_RUNTIME_LIB=1``, as on the emulated board and the README's Pi set-up). Then the values
    are drawn here and copied over (kernel arguments are KB-MB).
    """
    import numpy as np

    try:
        fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    except Exception:  # noqa: BLE001 - absent on a runtime-only device
        fill = None
    rng = np.random.default_rng(0)

    def one(dtype: str, shape: list[int]):
        if fill is not None:
            t = tvm.runtime.empty(shape=shape, dtype=dtype, device=device)
            fill(t)
            return t
        dt = np.dtype(dtype)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            arr = rng.integers(max(info.min, -128), min(info.max, 127), size=shape, endpoint=True, dtype=dt)
        elif dt.kind == "b":
            arr = rng.integers(0, 1, size=shape, endpoint=True).astype(dt)
        else:
            arr = rng.standard_normal(size=shape).astype(dt)
        return tvm.runtime.tensor(arr, device)

    out = []
    for _ in range(alloc_repeat):
        args = []
        for info in args_info:
            if info[0] != "TENSOR":  # TVM 0.27's ArgInfo knows only tensors: anything else is a newer TVM
                raise ValueError(f"kernel argument {info!r} is not a tensor: MetaSchedule's RPC runner here fills "
                                 f"tensor arguments only (TVM {tvm.__version__}); build it untuned (--no-tune)")
            args.append(one(info[1], list(info[2])))
        out.append(args)
    return out


def _probe_device(create, rpc_config) -> None:
    """One session before tuning: the device is reachable now (else one bounded wait, not N)."""
    try:
        sess = create(rpc_config)
    except Exception as e:
        raise TuneDeviceUnavailable(str(e).strip().splitlines()[0]) from e
    del sess


# ------------------------------------------------------------------------------------ measurer
def _builder(profile: TargetProfile):
    from tvm.s_tir import meta_schedule as ms

    if profile.cross_compiler and shutil.which(profile.cross_compiler) is None:
        raise TuneDeviceUnavailable(f"cross compiler {profile.cross_compiler!r} not on PATH "
                                    "(Debian: apt-get install g++-aarch64-linux-gnu, or `make emu-device`)")
    return ms.builder.LocalBuilder(
        initializer=functools.partial(tvm_fixes.builder_initializer, profile.isa),
        f_export=functools.partial(export_cross, cross_compiler=profile.cross_compiler), timeout_sec=120.0)


def _runner(host: str, port: int, key: str, direct: bool, threads: int, wait_s: float, emulated: bool):
    """An ``RPCRunner`` for one board (one worker), its pool bounded per candidate."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.support.popen_pool import PopenPoolExecutor

    cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key or "direct",
                              session_timeout_sec=int(CANDIDATE_TIMEOUT_S))
    create = functools.partial(create_session, direct=direct, threads=threads, wait_s=wait_s)
    _probe_device(create, cfg)
    # Under QEMU a kernel call is ~10-100x slower: time it once per candidate (ranking only).
    ev = (ms.runner.EvaluatorConfig(number=1, repeat=1, min_repeat_ms=0, enable_cpu_cache_flush=False) if emulated
          else ms.runner.EvaluatorConfig(number=5, repeat=1, min_repeat_ms=20, enable_cpu_cache_flush=False))
    runner = ms.runner.RPCRunner(rpc_config=cfg, evaluator_config=ev, f_create_session=create,
                                 f_alloc_argument=alloc_arguments, max_workers=1)
    # The stock pool has no timeout: a board that hangs mid-run (socket open, no answer) would block
    # tuning forever. Swap in one that kills the worker after the candidate's time is up.
    inst = getattr(runner, "_inst", runner)
    inst.pool.shutdown(wait=False)
    inst.pool = PopenPoolExecutor(max_workers=1, timeout=CANDIDATE_TIMEOUT_S + wait_s + 30)
    return runner


@contextlib.contextmanager
def rpc_measurer(profile: TargetProfile, progress: bool = True) -> Iterator[Measurer]:
    """Builder + RPC runner on the target's device for the block; an emulated board lives as long.

    Raises :class:`TuneDeviceUnavailable` before the block when there is nothing to measure on.
    """
    d = profile.device
    builder = _builder(profile)
    wait_s = float(d.connect_timeout_s)
    server = None
    if d.kind == "emulated":
        from harness.devices.emulated import EmulatedBoard, EmulatedRPCServer, EmulatorUnavailable

        server = EmulatedRPCServer(EmulatedBoard(qemu_cpu=d.qemu_cpu), progress=progress)
        try:
            server.__enter__()
        except EmulatorUnavailable as e:
            raise TuneDeviceUnavailable(f"emulated {d.qemu_cpu} board unavailable: {e}") from e
        host, port, key, direct = server.host, server.port, "", True
        measured, where = EMULATED_NOTE, f"emulated {d.qemu_cpu} RPC server {host}:{port}"
    elif d.kind in ("rpc", "tracker"):
        if not d.host or not d.port or (d.kind == "tracker" and not d.key):
            raise TuneDeviceUnavailable(f"target {profile.name!r} runs over {d.kind} but no address/key was given")
        host, port, key, direct = d.host, int(d.port), d.key, d.kind == "rpc"
        where = f"RPC server {host}:{port}" if direct else f"tracker {host}:{port} key {key}"
        measured = f"native ({where})"
    else:
        arch = profile.target.arch or profile.isa
        raise TuneDeviceUnavailable(f"{profile.name} is cross-compiled ({arch}) but its [device] kind is {d.kind!r}: "
                                    "give the board with --rpc host:port or "
                                    "--rpc-tracker host:port --rpc-key KEY, or use kind = \"emulated\"")
    runner = None
    try:
        try:
            runner = _runner(host, port, key, direct, int(profile.threads), wait_s, server is not None)
        except TuneDeviceUnavailable as e:
            raise TuneDeviceUnavailable(f"cannot measure on {where}: {e}") from e
        yield Measurer(builder, runner, measured, where)
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):
                getattr(runner, "_inst", runner).pool.shutdown(wait=False)
        if server is not None:
            server.__exit__(None, None, None)


def local_measurer(profile: TargetProfile) -> Measurer:
    """MetaSchedule's local builder/runner (this machine runs the target's code)."""
    from tvm.s_tir import meta_schedule as ms

    return Measurer(tvm_fixes.local_builder(profile.isa),
                    ms.runner.LocalRunner(timeout_sec=60, evaluator_config=ms.runner.EvaluatorConfig(
                        number=5, repeat=1, min_repeat_ms=20, enable_cpu_cache_flush=False)),
                    f"native (local runner on {platform.machine()})", "local")
