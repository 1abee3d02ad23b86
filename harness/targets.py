"""Targets as data: one TOML file per board under ``targets/``, loaded into a frozen dataclass.

Adding a board means adding a file. Code never branches on a target's *name*; when a target needs
different behaviour, that difference is a field here (device kind, cross compiler, QEMU CPU, ...).
A file may ``extends = "other"`` to inherit every field it does not set (e.g. ``arm`` → ``rpi4``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"


def targets_dir() -> Path:
    """``$LAAQ_TARGETS_DIR`` when set (a lab's own board files, tests), else the repository's ``targets/``.

    Read at call time, not import time, so a test or a wrapper script can point the CLI elsewhere.
    """
    return Path(os.environ.get("LAAQ_TARGETS_DIR") or TARGETS_DIR)


DEVICE_KINDS = ("local", "rpc", "tracker", "emulated", "cuda")
ACCELERATORS = ("cpu", "cuda")  # which device of the (local or remote) machine runs the kernels
GPU_CODE = ("", "source", "fatbin", "ptx")  # CUDA device code in the library (harness/backend/cuda.py)
INT8_LAYOUTS = ("", "nchw", "nchwc_vnni", "nchwc_avx2", "nchwc_sdot", "nchwc_neon")  # harness/backend/schemes.py


class TargetError(ValueError):
    """An unknown or malformed target file; the message names the file and the key."""


@dataclass(frozen=True)
class DeviceSpec:
    """How to reach the device that runs the artefact."""

    kind: str = "local"
    host: str = ""  # rpc: server host; tracker: tracker host
    port: int = 0
    key: str = ""  # tracker key (e.g. "rasp4")
    qemu_cpu: str = ""  # emulated: CPU model QEMU enforces (must match the board)
    accelerator: str = "cpu"  # "cuda": kernels run on the machine's GPU (tvm.cuda() / remote.cuda())
    emulated: bool = False  # rpc/tracker boards that are themselves QEMU-emulated (their figures say so)
    session_timeout_s: float = 600.0
    connect_timeout_s: float = 30.0


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    tvm: dict[str, Any]
    threads: int = 1
    device: DeviceSpec = field(default_factory=DeviceSpec)
    cross_compiler: str = ""  # e.g. "aarch64-linux-gnu-g++"; empty → the host compiler
    arch: str = ""  # expected `uname -m` of the device ("aarch64"); empty → same as host
    peak_int8_gmacs: float = 0.0
    peak_fp32_gmacs: float = 0.0
    energy: dict[str, float] = field(default_factory=dict)  # per-op / per-byte overrides (pJ)
    gpu_code: str = ""  # CUDA targets: "fatbin" (default) | "ptx" | "source" — see harness/backend/cuda.py
    # int8 convolution scheme (harness/backend/schemes.py): "" = automatic from mcpu/mattr; "nchw" = plain;
    # "nchwc_vnni" | "nchwc_avx2" | "nchwc_sdot" | "nchwc_neon" = that blocked scheme
    int8_layout: str = ""
    # blocked schemes: store ≤ 4-bit layers' kernels packed (two 4-bit / four 2-bit weights per byte) and
    # unpack them at run time — a smaller artefact for an unpack pass per call (docs/performance.md)
    pack_weights: bool = False
    # what `bench` measures on this target when --variants is not given (e.g. x86 adds int7: its ≤ 7-bit path)
    variants: tuple[str, ...] = ("fp32", "int8", "laaq")
    # a host-native file ([tvm] mcpu = "host"): the roofline of each scheme its CPU may get (profile picks one)
    peak_int8_gmacs_by_scheme: dict[str, float] = field(default_factory=dict)
    peak_fp32_gmacs_by_scheme: dict[str, float] = field(default_factory=dict)
    path: str = ""

    @property
    def host_native(self) -> bool:
        """``[tvm] mcpu = "host"``: compiled for this machine's own CPU, resolved when the target is resolved."""
        return self.tvm.get("mcpu") == HOST_CPU

    @property
    def emulated(self) -> bool:
        """The harness's own emulated board, or boards behind an RPC server / tracker declared QEMU-emulated
        (``[device] emulated = true``: a farm of emulated boards) — labelled emulated either way."""
        return self.device.kind == "emulated" or self.device.emulated

    @property
    def measured_as(self) -> str:
        """How figures from this target are labelled in every table: native or emulated."""
        return "emulated" if self.emulated else "native"

    def with_device(self, **overrides: Any) -> Target:
        """A copy with device fields replaced (CLI flags / environment override the file)."""
        from dataclasses import replace

        kept = {k: v for k, v in overrides.items() if v not in (None, "", 0)}
        return replace(self, device=replace(self.device, **kept)) if kept else self


def available_targets(directory: Path | None = None) -> list[str]:
    directory = directory or targets_dir()
    return sorted(p.stem for p in directory.glob("*.toml"))


def _read(name: str, directory: Path, seen: tuple[str, ...]) -> dict[str, Any]:
    path = directory / f"{name}.toml"
    if not path.exists():
        raise TargetError(f"unknown target {name!r}; available: {', '.join(available_targets(directory))} "
                          f"(add {directory}/{name}.toml to define it)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{path}: not valid TOML ({e})") from e
    parent = data.pop("extends", None)
    if parent:
        if parent in seen:
            raise TargetError(f"{path}: 'extends' loop through {parent!r}")
        base = _read(parent, directory, (*seen, name))
        for table in ("tvm", "device", "energy", "peak_int8_gmacs_by_scheme", "peak_fp32_gmacs_by_scheme"):
            if table in data and table in base:
                data[table] = {**base[table], **data[table]}
        data = {**base, **data}
    data["path"] = str(path)
    return data


_FIELDS = {"name", "description", "tvm", "threads", "device", "cross_compiler", "arch", "peak_int8_gmacs",
           "peak_fp32_gmacs", "energy", "gpu_code", "int8_layout", "pack_weights", "variants",
           "peak_int8_gmacs_by_scheme", "peak_fp32_gmacs_by_scheme", "path"}
#: ``[tvm] mcpu`` of a host-native target: this machine's CPU, resolved by :func:`harness.profile.resolve`
HOST_CPU = "host"


def load_target(name: str, directory: Path | None = None) -> Target:
    """Load ``targets/<name>.toml``; every problem names the file and the key at fault."""
    directory = directory or targets_dir()
    data = _read(name, directory, ())
    path = data["path"]
    unknown = set(data) - _FIELDS
    if unknown:
        raise TargetError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FIELDS - {'path'})}")
    data["name"] = name  # the file name is the target's name (an alias file keeps its own)
    for key, typ in (("description", str), ("tvm", dict), ("threads", int)):
        if key not in data:
            raise TargetError(f"{path}: missing required key {key!r}")
        if not isinstance(data[key], typ):
            raise TargetError(f"{path}: key {key!r} must be a {typ.__name__}, got {data[key]!r}")
    if "kind" not in data["tvm"]:
        raise TargetError(f"{path}: [tvm] needs a 'kind' (e.g. \"llvm\" or \"cuda\")")
    if data["threads"] < 1:
        raise TargetError(f"{path}: key 'threads' must be >= 1")
    dev = dict(data.get("device", {}))
    if dev.get("kind") == "cuda":
        dev.setdefault("accelerator", "cuda")
    try:
        device = DeviceSpec(**dev)
    except TypeError as e:
        raise TargetError(f"{path}: bad [device] table ({e})") from e
    if device.kind not in DEVICE_KINDS:
        raise TargetError(f"{path}: [device] kind must be one of {DEVICE_KINDS}, got {device.kind!r}")
    if not isinstance(device.emulated, bool):
        raise TargetError(f"{path}: [device] emulated must be true or false, got {device.emulated!r}")
    if device.kind == "emulated" and not device.qemu_cpu:
        raise TargetError(f"{path}: an emulated device needs [device] qemu_cpu (e.g. \"cortex-a72\")")
    if device.accelerator not in ACCELERATORS:
        raise TargetError(f"{path}: [device] accelerator must be one of {ACCELERATORS}, got {device.accelerator!r}")
    if (device.accelerator == "cuda") != (data["tvm"]["kind"] == "cuda") or (
            device.kind == "cuda" and device.accelerator != "cuda"):
        raise TargetError(f"{path}: [tvm] kind {data['tvm']['kind']!r} does not fit [device] kind {device.kind!r} "
                          f"with accelerator {device.accelerator!r} (CUDA code runs on accelerator = \"cuda\")")
    if data.get("gpu_code", "") not in GPU_CODE:
        raise TargetError(f"{path}: key 'gpu_code' must be one of {GPU_CODE[1:]}, got {data['gpu_code']!r}")
    if data.get("int8_layout", "") not in INT8_LAYOUTS:
        raise TargetError(f"{path}: key 'int8_layout' must be one of {INT8_LAYOUTS[1:]} (or absent = automatic), "
                          f"got {data['int8_layout']!r}")
    if not isinstance(data.get("pack_weights", False), bool):
        raise TargetError(f"{path}: key 'pack_weights' must be true or false, got {data['pack_weights']!r}")
    for key in ("peak_int8_gmacs", "peak_fp32_gmacs"):
        if key in data and not isinstance(data[key], (int, float)):
            raise TargetError(f"{path}: key {key!r} must be a number")
    for key in ("peak_int8_gmacs_by_scheme", "peak_fp32_gmacs_by_scheme"):
        if key in data and not (isinstance(data[key], dict) and all(isinstance(v, (int, float))
                                                                   for v in data[key].values())):
            raise TargetError(f"{path}: [{key}] must map scheme names to numbers")
    if "variants" in data:
        v = data["variants"]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            raise TargetError(f"{path}: key 'variants' must be a non-empty list of variant names, got {v!r}")
        data["variants"] = tuple(v)
    data["device"] = device
    return Target(**data)
