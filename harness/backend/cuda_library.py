"""The exported CUDA library: its embedded device-code blob, ahead-of-time code swapped in, and checks.

:func:`export_cuda_library` writes the ``.so`` (host code for the target's host, device code made by
nvcc where one exists, see :mod:`harness.backend.cuda`) and verifies what it wrote: host ELF machine,
the device code really embedded, every kernel of the CUDA source present as SASS and/or PTX for the
right architecture. The result goes beside the library as ``<lib>.cuda.json`` and is quoted by
not-run rows (:mod:`harness.rows`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tvm

from harness.backend.base import host_linker, manifest_path, register_backend
from harness.backend.cuda import (
    _ELF_MACHINES,
    _KERNEL_RE,
    FATBIN_MAGIC,
    GPUError,
    compile_device_code,
    compile_for_gpu,
    compute_suffix,
    nvcc_path,
    nvcc_version,
)

if TYPE_CHECKING:
    from harness.profile import TargetProfile

# --------------------------------------------------------------------------------------------
# The library's embedded blob (tvm-ffi 0.1.14 layout, checked field by field)
# --------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def u64(self) -> int:
        if self.pos + 8 > len(self.data):
            raise GPUError("library blob ends early")
        (v,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return v

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise GPUError("library blob ends early")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def vec(self) -> list[int]:
        return [self.u64() for _ in range(self.u64())]


def parse_blob(blob: bytes) -> tuple[list[int], list[int], list[tuple[str, bytes | None]]]:
    """``__tvm_ffi__library_bin``: size header, import tree (CSR), then per module its kind and bytes
    (``_lib`` = the host code itself, no bytes). Raises :class:`GPUError` on any other layout."""
    r = _Reader(blob)
    if r.u64() != len(blob) - 8:
        raise GPUError("library blob: size header does not match")
    row_ptr, child = r.vec(), r.vec()
    if not row_ptr or row_ptr[0] != 0 or row_ptr[-1] != len(child):
        raise GPUError("library blob: unexpected import-tree layout (another tvm-ffi version?)")
    mods: list[tuple[str, bytes | None]] = []
    for _ in range(len(row_ptr) - 1):
        key = r.take(r.u64()).decode("utf-8", errors="strict")
        mods.append((key, None if key == "_lib" else r.take(r.u64())))
    if r.pos != len(blob):
        raise GPUError("library blob: trailing bytes (unknown layout)")
    return row_ptr, child, mods


def build_blob(row_ptr: list[int], child: list[int], mods: list[tuple[str, bytes | None]]) -> bytes:
    def vec(v: list[int]) -> bytes:
        return struct.pack(f"<Q{len(v)}Q", len(v), *v)

    body = vec(row_ptr) + vec(child)
    for key, payload in mods:
        k = key.encode()
        body += struct.pack("<Q", len(k)) + k
        if payload is not None:
            body += struct.pack("<Q", len(payload)) + payload
    return struct.pack("<Q", len(body)) + body


def _plausible_code(fmt: str, code: bytes) -> bool:
    if fmt == "cuda":
        return b"__global__" in code
    if fmt == "ptx":
        return code.lstrip()[:1] == b"/" or b".version" in code[:4096]
    if len(code) < 4:
        return False
    return code[:4] == b"\x7fELF" or struct.unpack_from("<I", code)[0] == FATBIN_MAGIC


def split_cuda_payload(payload: bytes) -> tuple[str, bytes, bytes]:
    """A CUDA module's bytes → (format, function table bytes, code). Layout: [fmt][fmap][code],
    strings and byte arrays length-prefixed (u64); the code is the last field."""
    r = _Reader(payload)
    fmt = r.take(r.u64()).decode()
    start = r.pos
    for p in range(start, len(payload) - 8):
        (n,) = struct.unpack_from("<Q", payload, p)
        if n == len(payload) - p - 8 and n > 0:
            code = payload[p + 8 :]
            if _plausible_code(fmt, code):
                return fmt, payload[start:p], code
    raise GPUError(f"could not find the device code in the CUDA module (format {fmt!r})")


def join_cuda_payload(fmt: str, fmap: bytes, code: bytes) -> bytes:
    f = fmt.encode()
    return struct.pack("<Q", len(f)) + f + fmap + struct.pack("<Q", len(code)) + code


# --------------------------------------------------------------------------------------------
# 3. Verification
# --------------------------------------------------------------------------------------------
def kernel_names(source: str) -> list[str]:
    return sorted(set(_KERNEL_RE.findall(source)))


def fatbin_entries(code: bytes) -> list[dict[str, Any]]:
    """Entries of a fatbin container: kind (ptx/elf), sm architecture, payload offset and size."""
    if len(code) < 16 or struct.unpack_from("<I", code)[0] != FATBIN_MAGIC:
        raise GPUError("not a fatbin (bad magic)")
    _, _, hdr, fat_size = struct.unpack_from("<IHHQ", code)
    pos, end, out = hdr, min(hdr + fat_size, len(code)), []
    while pos + 32 <= end:
        kind, _, ehdr, size = struct.unpack_from("<HHIQ", code, pos)
        arch = struct.unpack_from("<I", code, pos + 28)[0]
        if ehdr == 0 or size == 0:
            break
        out.append({"kind": {1: "ptx", 2: "elf"}.get(kind, f"kind{kind}"), "arch": f"sm_{arch}",
                    "offset": pos + ehdr, "size": size})
        pos += ehdr + size
    return out


def verify_device_code(fmt: str, code: bytes, kernels: list[str], suffix: str) -> dict[str, Any]:
    """Which kernels are present as SASS / PTX in ``code``; raises if any is missing."""
    arch_num = re.sub(r"\D", "", suffix)
    info: dict[str, Any] = {"format": fmt, "bytes": len(code), "sha256": hashlib.sha256(code).hexdigest()[:16]}
    if fmt == "cuda":
        missing = [k for k in kernels if f" {k}(".encode() not in code]
        info["contains"] = "CUDA C++ source (compiled where the library is loaded)"
    elif fmt == "ptx":
        missing = [k for k in kernels if f".entry {k}(".encode() not in code]
        if f".target sm_{suffix}".encode() not in code and f".target sm_{arch_num}".encode() not in code:
            raise GPUError(f"PTX does not target sm_{suffix}")
        info["contains"] = f"PTX for compute_{suffix} (JIT-compiled by the driver when loaded)"
    else:  # fatbin (or cubin from a GPU machine's compile callback)
        if code[:4] == b"\x7fELF":
            entries = [{"kind": "elf", "arch": f"sm_{arch_num}", "offset": 0, "size": len(code)}]
        else:
            entries = fatbin_entries(code)
        info["entries"] = [{k: e[k] for k in ("kind", "arch", "size")} for e in entries]
        missing = []
        for k in kernels:
            found = []
            for e in entries:
                blob = code[e["offset"] : e["offset"] + e["size"]]
                if e["kind"] == "elf" and f".text.{k}".encode() in blob:
                    found.append("sass")
                if e["kind"] == "ptx" and f".entry {k}(".encode() in blob:
                    found.append("ptx")
            if not found:
                missing.append(k)
        kinds = {e["kind"] for e in entries}
        arches = sorted({e["arch"] for e in entries})
        if f"sm_{arch_num}" not in arches:
            raise GPUError(f"device code has {arches}, not sm_{arch_num}")
        info["contains"] = " + ".join(
            (["SASS " + ",".join(sorted({e['arch'] for e in entries if e['kind'] == 'elf'}))] if "elf" in kinds else [])
            + (["PTX " + ",".join(sorted({e['arch'].replace('sm_', 'compute_') for e in entries
                                           if e['kind'] == 'ptx'}))] if "ptx" in kinds else []))
    if missing:
        raise GPUError(f"kernels missing from the device code: {', '.join(missing[:8])}")
    info["kernels_verified"] = len(kernels)
    return info


def library_blob(lib: bytes, symbol: str = "__tvm_ffi__library_bin") -> bytes:
    """The imports blob of an exported ELF library, read back the way the loader finds it: the
    exported symbol's address in ``.dynsym``, mapped to its file offset through the section holding it.
    The blob's own size header gives its length."""
    if lib[:4] != b"\x7fELF" or lib[4] != 2 or lib[5] != 1:
        raise GPUError("not a 64-bit little-endian ELF library")
    shoff, = struct.unpack_from("<Q", lib, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", lib, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", lib, shoff + i * shentsize) for i in range(shnum)]
    # (name, type, flags, addr, offset, size, link, info, align, entsize)
    for sec in secs:
        if sec[1] != 11:  # SHT_DYNSYM
            continue
        strtab = secs[sec[6]]
        for off in range(sec[4], sec[4] + sec[5], 24):
            st_name, _, _, _, st_value, _ = struct.unpack_from("<IBBHQQ", lib, off)
            end = lib.index(b"\0", strtab[4] + st_name)
            if lib[strtab[4] + st_name : end].decode(errors="replace") != symbol:
                continue
            for s2 in secs:
                if s2[3] <= st_value < s2[3] + s2[5] and s2[1] != 8:  # not NOBITS
                    pos = s2[4] + (st_value - s2[3])
                    (n,) = struct.unpack_from("<Q", lib, pos)
                    return lib[pos : pos + 8 + n]
    raise GPUError(f"symbol {symbol} not found in the library's dynamic symbols")


def _host_source(ex) -> tuple[str, list[Any]]:
    """The CUDA source and the CUDA modules among the executable's imports."""
    cuda_mods = [m for m in ex.mod._collect_from_import_tree(lambda m: m.kind == "cuda")]
    src = "\n".join(m.inspect_source("cuda") for m in cuda_mods)
    return src, cuda_mods


def export_cuda_library(ex, profile: TargetProfile, path: Path, fcompile=None) -> dict[str, Any]:
    """``export_library`` with the device code made ahead of time where possible, then verified.

    Returns the manifest (stored beside the library by :func:`harness.compile.compile_module`)."""
    from tvm.runtime import _ffi_api

    tvm_target = profile.tvm_target
    suffix = compute_suffix(tvm_target)
    want = profile.gpu_code
    source, cuda_mods = _host_source(ex)
    if not cuda_mods:
        raise GPUError("the compiled module has no CUDA kernels")
    kernels = kernel_names(source)
    notes: list[str] = []
    state: dict[str, Any] = {}

    def pack_imports(mod, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        c_src = _ffi_api.ModulePackImportsToC(mod, is_system_lib, prefix)
        m = re.search(r"(const unsigned char \w+\[)(\d+)(\] = \{)(.*?)(\};)", c_src, re.S)
        if m is None:
            raise GPUError("unexpected C layout from ModulePackImportsToC")
        blob = bytes.fromhex(re.sub(r"0x|,|\s", "", m.group(4)))
        row_ptr, child, mods = parse_blob(blob)
        new_mods, codes = [], []
        for key, payload in mods:
            if key == "cuda" and payload is not None:
                fmt, fmap, code = split_cuda_payload(payload)
                if fmt == "cuda" and want != "source":
                    nv = nvcc_path()
                    if nv is None:
                        notes.append("nvcc not found on the build machine: CUDA source embedded, compiled when "
                                     "loaded (needs NVRTC via `cuda-bindings`, or nvcc with "
                                     "TVM_CUDA_COMPILE_MODE=nvcc, where it runs)")
                    else:
                        code = compile_device_code(code.decode(), tvm_target, want)
                        fmt = want
                        notes.append(f"compiled ahead of time with nvcc {nvcc_version(nv)}")
                payload = join_cuda_payload(fmt, fmap, code)
                codes.append((fmt, code))
            new_mods.append((key, payload))
        new_blob = build_blob(row_ptr, child, new_mods)
        state["codes"] = codes
        hex_body = ",".join(f"0x{b:02x}" for b in new_blob)
        c_out = c_src[: m.start()] + f"{m.group(1)}{len(new_blob)}{m.group(3)}\n{hex_body}\n{m.group(5)}" + \
            c_src[m.end() :]
        out = os.path.join(workspace_dir, f"{prefix}devc_cuda.c")
        with open(out, "w") as f:
            f.write(c_out)
        return out

    kwargs: dict[str, Any] = {"fpack_imports": pack_imports}
    if fcompile is not None:
        kwargs["fcompile"] = fcompile
    ex.export_library(str(path), **kwargs)

    codes = state.get("codes", [])
    if not codes:
        raise GPUError("the exported library has no CUDA module")
    device = [verify_device_code(fmt, code, kernels, suffix) for fmt, code in codes]
    lib = Path(path).read_bytes()
    # Read the blob back from the written library and check it holds exactly this device code.
    _, _, mods = parse_blob(library_blob(lib))
    embedded = [split_cuda_payload(p)[::2] for k, p in mods if k == "cuda" and p is not None]
    if embedded != codes:
        raise GPUError(f"{path}: the library's embedded CUDA module differs from the device code written")
    machine = _ELF_MACHINES.get(struct.unpack_from("<H", lib, 18)[0], "unknown") if lib[:4] == b"\x7fELF" else "?"
    want_machine = profile.target.arch or os.uname().machine
    if machine != want_machine:
        raise GPUError(f"{path}: host code is {machine}, the target's host is {want_machine}")
    if any(fmt == "cuda" for fmt, _ in codes) and want == "source":
        notes.append("gpu_code = \"source\": CUDA source embedded, compiled when loaded")
    elif not notes:  # TVM compiled the kernels itself (TVM_COMPILE_FORCE_FALLBACK not honoured?)
        notes.append(f"device code compiled by TVM during tvm.compile ({', '.join(f for f, _ in codes)})")
    return {
        "target": profile.name, "arch": f"sm_{suffix}", "host_machine": machine, "gpu_code": want,
        "device_code": device, "kernels": kernels, "library_bytes": len(lib), "notes": notes,
        "tvm": tvm.__version__, "verified": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def read_manifest(lib: Path) -> dict[str, Any] | None:
    """The manifest :func:`harness.compile.compile_module` stored beside a CUDA library, or None."""
    p = manifest_path(lib, "cuda")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def describe_manifest(info: dict[str, Any] | None) -> str:
    """One line: what the library holds and what was checked."""
    if not info:
        return "no verification manifest"
    parts = [f"{d['contains']}, {d['kernels_verified']} kernels verified" for d in info["device_code"]]
    return f"{info['arch']} library for {info['host_machine']} host: " + "; ".join(parts)


@register_backend("cuda")
class CudaBackend:
    """dlight-scheduled kernels, device code by nvcc where present, a verified library + manifest."""

    name = "cuda"
    tunable = False

    def build(self, mod: tvm.IRModule, profile: TargetProfile, database_dir: str | None) -> Any:
        return compile_for_gpu(mod, profile.tvm_target)

    def export(self, executable: Any, profile: TargetProfile, path: Path) -> dict[str, Any]:
        return export_cuda_library(executable, profile, path, host_linker(profile))
