"""CUDA targets: GPU scheduling and ahead-of-time device code.

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
   result is written beside the library as ``<lib>.cuda.json`` and quoted by not-run rows
   (:mod:`harness.backend.cuda_library`).

Nothing here runs a kernel: that needs a GPU (``harness/devices/cuda.py``, ``benchmarks/check_gpu.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import tvm
from tvm import relax

from laaq.atomic import write_atomic
from laaq.cache import cache_root

DEFAULT_GPU_CODE = "fatbin"
FATBIN_MAGIC = 0xBA55ED50
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}
_KERNEL_RE = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\(\s*\d+\s*(?:,\s*\d+\s*)*\)\s+)?(\w+)\s*\(")


class GPUError(RuntimeError):
    """A CUDA-specific compile, export or verification step failed; the message says which and why."""


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
    return cache_root() / "cuda-aot"


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
    write_atomic(cache, code)
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


def ensure_jit_compiler() -> str:
    """Libraries built with ``gpu_code = "source"`` compile CUDA source when loaded, through TVM's
    ``tvm_callback_cuda_compile`` (NVRTC via ``cuda-bindings`` by default). Without that package,
    switch TVM to nvcc if present. Returns the mode in use."""
    try:
        import cuda.bindings.nvrtc  # noqa: F401

        return os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc")
    except ImportError:
        pass
    if shutil.which("nvcc"):
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
        return os.environ["TVM_CUDA_COMPILE_MODE"]
    return "none (libraries with embedded CUDA source cannot load; use gpu_code = \"fatbin\")"


def compile_for_gpu(mod: tvm.IRModule, tvm_target: tvm.target.Target):
    """Schedule for the GPU, then ``tvm.compile`` the scheduled module (no second pipeline)."""
    scheduled = prepare_for_gpu(mod, tvm_target)
    ensure_jit_compiler()  # should TVM compile kernels itself anyway: nvcc when NVRTC's package is missing
    with _keep_cuda_source():
        return tvm.compile(scheduled, target=tvm_target, relax_pipeline=None)
