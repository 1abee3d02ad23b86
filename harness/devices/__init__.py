"""Devices: where an artefact runs. ``open_device(target)`` picks one from the target's [device]."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from harness.devices.base import DeviceError, LoadedModule
from harness.targets import Target

__all__ = ["DeviceError", "LoadedModule", "open_device"]


@contextlib.contextmanager
def open_device(target: Target, progress: bool = True) -> Iterator[object]:
    """A session (``.load(path)``, ``.measured_as``, ``.where``) for the target, torn down on exit.

    For ``emulated`` the harness starts the emulated board's RPC server itself and always stops it.
    """
    d = target.device
    arch = str(target.tvm.get("arch", ""))
    if d.kind == "cuda":  # this machine's GPU; opens even without one (session.available is then False)
        from harness.devices.cuda import CudaSession

        with CudaSession(0, arch) as s:
            yield s
        return
    if d.kind == "local":
        from harness.devices.local import LocalSession

        with LocalSession(target.threads, target.arch) as s:
            yield s
        return
    from harness.devices.rpc import RPCSession

    if d.accelerator == "cuda":  # a remote GPU (e.g. a Jetson): the VM runs on remote.cuda()
        from harness.devices.cuda import RPCCudaSession

        RPCSession = functools.partial(RPCCudaSession, target_arch=arch)  # noqa: N806
    if d.kind in ("rpc", "tracker"):
        if not d.host or not d.port:
            how = "--rpc host:port" if d.kind == "rpc" else "--rpc-tracker host:port --rpc-key KEY"
            raise DeviceError(f"target {target.name!r} runs over {d.kind} but no address was given; pass {how} "
                              "(or RPC / RPC_TRACKER / RPC_KEY to make)")
        if d.kind == "tracker" and not d.key:
            raise DeviceError(f"target {target.name!r}: a tracker needs a key (--rpc-key / RPC_KEY)")
        with RPCSession(d.host, d.port, target.threads, key=d.key, tracker=d.kind == "tracker",
                        session_timeout_s=d.session_timeout_s, connect_timeout_s=d.connect_timeout_s) as s:
            yield s
        return
    if d.kind == "emulated":
        from harness.devices.emulated import EmulatedBoard, EmulatedRPCServer, EmulatorUnavailable, ensure_rootfs

        try:
            ensure_rootfs(progress=progress)
            server = EmulatedRPCServer(EmulatedBoard(qemu_cpu=d.qemu_cpu))
            server.__enter__()
        except EmulatorUnavailable as e:
            raise DeviceError(f"emulated {d.qemu_cpu} board unavailable: {e}") from e
        try:
            with RPCSession(server.host, server.port, target.threads, session_timeout_s=d.session_timeout_s,
                            connect_timeout_s=d.connect_timeout_s, measured_as="emulated") as s:
                s.server = server  # fault tests reach the server through the session
                yield s
        finally:
            server.__exit__(None, None, None)
        return
    raise DeviceError(f"unknown device kind {d.kind!r}")
