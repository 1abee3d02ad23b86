"""CUDA targets: GPU scheduling, the fp16 lowering, ahead-of-time device code, library checks, not-run rows.

What happens to a model compiled for a ``[tvm] kind = "cuda"`` target (``compile_module`` calls
:func:`compile_for_gpu` and :func:`export_cuda_library`):

1. **Scheduling.** Relax on CUDA needs every kernel bound to GPU threads. :func:`prepare_for_gpu`
   runs TVM 0.27's own CUDA pipeline (legalize, fuse, then the *dlight* default rules
   ``Matmul, GEMV, Reduction, GeneralReduction, Fallback``) explicitly, and refuses a module in
   which a kernel is left unscheduled (TVM would otherwise fail later with a cryptic
   ``VerifyMemory`` error). No MetaSchedule: tuning measures candidates on the GPU itself.
2. **Device code.** Where no CUDA driver is linked (a CPU-only build machine), TVM 0.27 keeps the
   generated CUDA C++ *source* in the library and the receiving machine compiles it when loading
   (NVRTC through the ``cuda-bindings`` package, or ``nvcc`` with ``TVM_CUDA_COMPILE_MODE=nvcc``).
   A target's ``gpu_code`` field chooses instead to compile ahead of time with ``nvcc`` on the
   build machine: ``"fatbin"`` (default: SASS for the target's ``arch`` plus PTX of the same
   compute capability, which newer GPUs' drivers JIT-compile) or ``"ptx"`` (PTX only, always
   JIT-compiled by the driver). The compiled code replaces the source inside the exported
   library, so the artefact carries machine code and needs no compiler where it runs. Without
   ``nvcc`` the source is embedded and the manifest says so. On a machine *with* a CUDA runtime
   TVM would compile at ``tvm.compile`` time (NVRTC by default); ``TVM_COMPILE_FORCE_FALLBACK=1``
   during the compile keeps the source there too, so every build machine takes the same path.
3. **Verification.** :func:`export_cuda_library` checks the library it wrote: host ELF machine,
   the device code really embedded in the ``.so``, every kernel of the CUDA source present as
   SASS (``.text.<kernel>``) and/or PTX (``.entry <kernel>``) for the right architecture. The
   result is written beside the library as ``<lib>.cuda.json`` and quoted by not-run rows.

Nothing here runs a kernel: that needs a GPU (``harness/devices/cuda.py``, ``benchmarks/check_gpu.py``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from harness.targets import Target

GPU_CODE_FORMATS = ("source", "fatbin", "ptx")
DEFAULT_GPU_CODE = "fatbin"
NOT_RUN_NO_CUDA = "not run: no CUDA device"
FATBIN_MAGIC = 0xBA55ED50
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}
_KERNEL_RE = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\(\s*\d+\s*(?:,\s*\d+\s*)*\)\s+)?(\w+)\s*\(")


class GPUError(RuntimeError):
    """A CUDA-specific compile, export or verification step failed; the message says which and why."""


def is_cuda(target: Target) -> bool:
    """Whether the target generates CUDA code (data: its ``[tvm] kind``), whatever its device is."""
    return str(target.tvm.get("kind", "")) == "cuda"


def gpu_code(target: Target) -> str:
    return getattr(target, "gpu_code", "") or DEFAULT_GPU_CODE


def compute_suffix(tvm_target: tvm.target.Target) -> str:
    """``sm_89`` → ``89`` (``sm_90a`` → ``90a``); the target files always name the architecture."""
    arch = str(tvm_target.attrs.get("arch", ""))
    if not arch.startswith("sm_"):
        raise GPUError(f"CUDA target {tvm_target} has no 'arch' (e.g. \"sm_89\"); name it in the target file, "
                       "since a build machine without a GPU cannot detect one")
    return arch[3:]


# --------------------------------------------------------------------------------------------
# 1. Scheduling
# --------------------------------------------------------------------------------------------
def relax_pipeline(tvm_target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM 0.27's CUDA pipeline (``relax.backend.cuda.pipeline``) spelled out: legalize + fuse, dlight
    default schedules, then the usual dataflow lowering and VM finalisation passes."""
    from tvm.relax.backend.cuda import pipeline as cuda_pipeline
    from tvm.s_tir import dlight as dl

    return tvm.transform.Sequential([
        *cuda_pipeline.library_dispatch_passes(tvm_target),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                                dl.gpu.Fallback()),
        *cuda_pipeline.dataflow_lower_passes(tvm_target),
        *cuda_pipeline.finalize_passes(tvm_target),
    ], name="laaq_cuda_pipeline")


def unscheduled_kernels(mod: tvm.IRModule) -> list[str]:
    """PrimFuncs that no dlight rule scheduled (they would fail TVM's memory verification)."""
    out = []
    for gv, f in mod.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc):
            attrs = dict(f.attrs) if f.attrs else {}
            if not (attrs.get("tirx.is_scheduled") or attrs.get("tir.is_scheduled")):
                out.append(gv.name_hint)
    return sorted(out)


def prepare_for_gpu(mod: tvm.IRModule, tvm_target: tvm.target.Target) -> tvm.IRModule:
    """The Relax module lowered and GPU-scheduled for ``tvm_target``; ready for
    ``tvm.compile(..., relax_pipeline=None)``. Raises :class:`GPUError` naming unscheduled kernels."""
    with tvm_target:
        out = relax_pipeline(tvm_target)(mod)
    missing = unscheduled_kernels(out)
    if missing:
        raise GPUError(f"no GPU schedule for {len(missing)} kernel(s): {', '.join(missing[:8])}; "
                       "dlight's default rules did not apply (add a rule or a MetaSchedule database)")
    return out


# --------------------------------------------------------------------------------------------
# fp16 variant
# --------------------------------------------------------------------------------------------
def lower_float16(model, input_shape: tuple[int, int, int], batch: int) -> tvm.IRModule:
    """The float model in half precision: fp16 weights and activations (batch norm decomposed into
    fp16 element-wise ops), conv/matmul accumulating in fp32 (``ToMixedPrecision(out_dtype="float32")``),
    fp32 input and output so the harness feeds and compares it exactly like fp32. Weight casts are
    folded into fp16 constants with numpy (TVM's FoldConstant builds a CPU kernel per constant: slow)."""
    from harness.lower import lower_float

    mod = lower_float(model, input_shape, batch)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.ToMixedPrecision(out_dtype="float32")(mod)
    return _fold_constant_casts(mod)


def _fold_constant_casts(mod: tvm.IRModule) -> tvm.IRModule:
    astype = tvm.ir.Op.get("relax.astype")

    @relax.expr_functor.mutator
    class CastConstants(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor naming
            call = super().visit_call_(call)
            if call.op == astype and isinstance(call.args[0], tvm.ir.expr.Constant):
                return relax.const(tvm.runtime.tensor(call.args[0].value.numpy().astype(str(call.attrs.dtype))))
            return call

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, f in mod.functions.items():
        if isinstance(f, relax.Function):
            out[gv] = CastConstants().visit_expr(f)
    return out


# --------------------------------------------------------------------------------------------
# 2. Device code: nvcc ahead of time
# --------------------------------------------------------------------------------------------
def nvcc_path() -> str | None:
    return shutil.which("nvcc") or next(
        (str(p) for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc",)
         if p.exists()), None)


def nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    m = re.search(r"release (\d+\.\d+), V([\d.]+)", out)
    return m.group(2) if m else "unknown"


def _cache_dir() -> Path:
    return Path(os.environ.get("LAAQ_CACHE", Path.home() / ".cache" / "laaq-bench")) / "cuda-aot"


def _nvcc_arch(fmt: str, suffix: str) -> list[str] | str:
    if fmt == "fatbin":  # machine code for the named GPU + PTX that newer GPUs JIT-compile
        return ["-gencode", f"arch=compute_{suffix},code=sm_{suffix}",
                "-gencode", f"arch=compute_{suffix},code=compute_{suffix}"]
    if fmt == "cubin":
        return f"sm_{suffix}"
    return f"compute_{suffix}"


def compile_device_code(source: str, tvm_target: tvm.target.Target, fmt: str,
                        cache_dir: Path | None = None) -> bytes:
    """CUDA source → ``fatbin`` / ``ptx`` / ``cubin`` with nvcc, with TVM's own nvcc flags
    (``tvm.support.nvcc.compile_cuda``: -O3, --use_fast_math, ...), uncompressed so the
    kernels can be listed. Cached by the hash of everything that determines the output."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise GPUError("nvcc not found (PATH or $CUDA_HOME/bin)")
    suffix = compute_suffix(tvm_target)
    options = ["--no-compress"] if fmt == "fatbin" else []
    key = hashlib.sha256(json.dumps([source, fmt, suffix, options, nvcc_version(nvcc), tvm.__version__,
                                     os.environ.get("TVM_CUDA_NVCC_NO_FAST_MATH", "")]).encode()).hexdigest()[:24]
    cache = (cache_dir or _cache_dir()) / f"{key}.{fmt}"
    if cache.exists():
        return cache.read_bytes()
    from tvm.support import nvcc as tvm_nvcc

    env_path = os.environ.get("PATH", "")
    nvcc_dir = str(Path(nvcc).parent)
    if shutil.which("nvcc") is None:  # compile_cuda runs plain "nvcc"
        os.environ["PATH"] = f"{nvcc_dir}{os.pathsep}{env_path}"
    try:
        with tvm_target:
            code = bytes(tvm_nvcc.compile_cuda(source, target_format=fmt, arch=_nvcc_arch(fmt, suffix),
                                               options=options, compiler="nvcc"))
    except Exception as e:
        tail = str(e).strip().splitlines()[-3:]
        raise GPUError(f"nvcc could not compile the kernels for sm_{suffix}: {' | '.join(tail)}") from e
    finally:
        os.environ["PATH"] = env_path
    if fmt == "ptx" and not code.endswith(b"\0"):
        code += b"\0"  # cuModuleLoadData reads PTX as a C string
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(code)
    os.replace(tmp, cache)
    return code


@contextlib.contextmanager
def _keep_cuda_source() -> Iterator[None]:
    """``TVM_COMPILE_FORCE_FALLBACK=1`` while compiling: TVM's codegen then keeps the CUDA source in
    the module even where a CUDA runtime is loaded (where it would otherwise compile right away through
    ``tvm_callback_cuda_compile``, needing NVRTC or nvcc on the spot). Every build machine, with or
    without a GPU, thus takes the same path; :func:`export_cuda_library` makes the device code."""
    name = "TVM_COMPILE_FORCE_FALLBACK"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def compile_for_gpu(mod: tvm.IRModule, target: Target, tvm_target: tvm.target.Target):
    """Schedule for the GPU, then ``tvm.compile`` the scheduled module (no second pipeline)."""
    from harness.devices.cuda import ensure_jit_compiler

    scheduled = prepare_for_gpu(mod, tvm_target)
    ensure_jit_compiler()  # should TVM compile kernels itself anyway: nvcc when NVRTC's package is missing
    with _keep_cuda_source():
        return tvm.compile(scheduled, target=tvm_target, relax_pipeline=None)


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


def export_cuda_library(ex, target: Target, path: Path, fcompile=None) -> dict[str, Any]:
    """``export_library`` with the device code made ahead of time where possible, then verified.

    Returns the manifest (also what :func:`write_manifest` stores)."""
    from tvm.runtime import _ffi_api

    tvm_target = target.tvm_target()
    suffix = compute_suffix(tvm_target)
    want = gpu_code(target)
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
    want_machine = target.arch or os.uname().machine
    if machine != want_machine:
        raise GPUError(f"{path}: host code is {machine}, the target's host is {want_machine}")
    if any(fmt == "cuda" for fmt, _ in codes) and want == "source":
        notes.append("gpu_code = \"source\": CUDA source embedded, compiled when loaded")
    elif not notes:  # TVM compiled the kernels itself (TVM_COMPILE_FORCE_FALLBACK not honoured?)
        notes.append(f"device code compiled by TVM during tvm.compile ({', '.join(f for f, _ in codes)})")
    return {
        "target": target.name, "arch": f"sm_{suffix}", "host_machine": machine, "gpu_code": want,
        "device_code": device, "kernels": kernels, "library_bytes": len(lib), "notes": notes,
        "tvm": tvm.__version__, "verified": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def manifest_path(lib: Path) -> Path:
    return Path(lib).with_suffix(".cuda.json")


def write_manifest(lib: Path, info: dict[str, Any]) -> Path:
    from harness.results import atomic_write_text

    p = manifest_path(lib)
    atomic_write_text(p, json.dumps(info, indent=2) + "\n")
    return p


def read_manifest(lib: Path) -> dict[str, Any] | None:
    p = manifest_path(lib)
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


# --------------------------------------------------------------------------------------------
# Rows for variants compiled but not run
# --------------------------------------------------------------------------------------------
def is_not_run(row: dict[str, Any]) -> bool:
    return str(row.get("measured_as", "")).startswith("not run")


def not_run_row(cfg, target: Target, session: Any, v, model, arts: dict[int, Any]) -> dict[str, Any]:
    """A results row for a variant that was compiled, exported and verified but could not run.

    Only figures that do not need the device are filled (sizes, op counts, the energy *proxy*,
    compile time); latency, accuracy, agreement and measured energy stay empty."""
    from harness import energy
    from harness.bench import variant_bits

    graph = v.qg.graph if v.qg else model.to_graph()
    bits = variant_bits(v, graph)
    totals = energy.model_totals(energy.layer_costs(graph, bits, 8, target.energy))
    small, large = min(arts), max(arts)
    fp16 = v.name == "fp16"
    checked = "; ".join(f"b{b}: {describe_manifest(read_manifest(a.path))}" for b, a in sorted(arts.items()))
    return {
        "target": target.name, "measured_as": getattr(session, "measured_as", NOT_RUN_NO_CUDA),
        "device": f"{session.where} | compiled, exported, verified: {checked}",
        "variant": v.name, "kind": v.kind, "plan": v.plan.name if v.plan else ("float16" if fp16 else "float32"),
        "avg_weight_bits": round(v.plan.avg_bits({nd.name: nd.weight.size for nd in graph.weighted()}), 3)
        if v.plan else (16 if fp16 else 32), "act_bits": 8 if v.plan else (16 if fp16 else 32),
        "batch_small": small, "batch_large": large,
        "macs": totals["macs"], "bops": totals["bops"], "weight_bytes": totals["weight_bytes"],
        "artefact_bytes": arts[small].size_bytes, "energy_proxy_uj": round(totals["energy_proxy_uj"], 4),
        "compile_s": round(sum(a.compile_s for a in arts.values()), 2),
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
