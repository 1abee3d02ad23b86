"""Devices: where an artefact runs. ``open_device(profile)`` opens the session its [device] kind names.

Each device kind is an opener registered by name (:func:`register_device`), so a new way of reaching
a board (a device farm, a bundle runner) is one decorated function, not another branch. Every
session implements :class:`harness.devices.base.Session`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from harness.devices.base import DeviceError, LoadedModule, Session

if TYPE_CHECKING:
    from harness.profile import TargetProfile
    from harness.targets import Target

__all__ = ["DEVICE_OPENERS", "DeviceError", "LoadedModule", "Session", "open_device", "register_device"]

Opener = Callable[["TargetProfile", bool], contextlib.AbstractContextManager[Session]]
DEVICE_OPENERS: dict[str, Opener] = {}


def register_device(*kinds: str) -> Callable[[Opener], Opener]:
    def deco(fn: Opener) -> Opener:
        for k in kinds:
            DEVICE_OPENERS[k] = fn
        return fn

    return deco


def open_device(profile: TargetProfile | Target, progress: bool = True) -> contextlib.AbstractContextManager[Session]:
    """A session for the profile's device, torn down on exit (an emulated board's server included)."""
    from harness.profile import as_profile

    profile = as_profile(profile)
    try:
        opener = DEVICE_OPENERS[profile.device.kind]
    except KeyError:
        raise DeviceError(f"unknown device kind {profile.device.kind!r} (known: {sorted(DEVICE_OPENERS)})") from None
    return opener(profile, progress)


@register_device("cuda")
@contextlib.contextmanager
def _cuda(profile: TargetProfile, progress: bool) -> Iterator[Session]:
    """This machine's GPU; opens even without one (``available`` is then False: compile and verify only)."""
    from harness.devices.cuda import CudaSession

    with CudaSession(0, profile.gpu_arch) as s:
        yield s


@register_device("local")
@contextlib.contextmanager
def _local(profile: TargetProfile, progress: bool) -> Iterator[Session]:
    from harness.devices.local import LocalSession

    with LocalSession(profile.threads, profile.target.arch) as s:
        yield s


def _rpc_class(profile: TargetProfile):
    from harness.devices.rpc import RPCSession

    if profile.device.accelerator == "cuda":  # a remote GPU (e.g. a Jetson): the VM runs on remote.cuda()
        import functools

        from harness.devices.cuda import RPCCudaSession

        return functools.partial(RPCCudaSession, target_arch=profile.gpu_arch)
    return RPCSession


@register_device("rpc", "tracker")
@contextlib.contextmanager
def _remote(profile: TargetProfile, progress: bool) -> Iterator[Session]:
    d = profile.device
    if not d.host or not d.port:
        how = "--rpc host:port" if d.kind == "rpc" else "--rpc-tracker host:port --rpc-key KEY"
        raise DeviceError(f"target {profile.name!r} runs over {d.kind} but no address was given; pass {how} "
                          "(or RPC / RPC_TRACKER / RPC_KEY to make)")
    if d.kind == "tracker" and not d.key:
        raise DeviceError(f"target {profile.name!r}: a tracker needs a key (--rpc-key / RPC_KEY)")
    with _rpc_class(profile)(d.host, d.port, profile.threads, key=d.key, tracker=d.kind == "tracker",
                             session_timeout_s=d.session_timeout_s, connect_timeout_s=d.connect_timeout_s,
                             measured_as=profile.measured_as) as s:
        yield s


#: session lifetime on a board the harness starts itself (seconds); the target file's value when larger
EMULATED_SESSION_S = 6 * 3600


@register_device("emulated")
@contextlib.contextmanager
def _emulated(profile: TargetProfile, progress: bool) -> Iterator[Session]:
    """The harness starts the emulated board's RPC server itself and always stops it."""
    from harness.devices.emulated import EmulatedBoard, EmulatedRPCServer, EmulatorUnavailable, ensure_rootfs
    from harness.devices.rpc import RPCSession

    d = profile.device
    try:
        ensure_rootfs(progress=progress)
        server = EmulatedRPCServer(EmulatedBoard(qemu_cpu=d.qemu_cpu))
        server.__enter__()
    except EmulatorUnavailable as e:
        raise DeviceError(f"emulated {d.qemu_cpu} board unavailable: {e}") from e
    try:
        # the board lives exactly as long as this run: a session expiry would only cut long runs short (a 29-layer
        # MobileNetV2's variants under QEMU outlast the 600 s that suits a real board's session)
        timeout = max(d.session_timeout_s, EMULATED_SESSION_S)
        with RPCSession(server.host, server.port, profile.threads, session_timeout_s=timeout,
                        connect_timeout_s=d.connect_timeout_s, measured_as="emulated", server=server) as s:
            yield s
    finally:
        server.__exit__(None, None, None)
