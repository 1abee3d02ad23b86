"""CUDA targets: compile, export and verify on a CPU-only machine; honest not-run rows; sensors.

The GPU tests at the end run only where ``tvm.cuda(0).exist`` (they are skipped with the reason
otherwise); everything else runs anywhere TVM and (for the ahead-of-time device code) nvcc exist.
"""

from __future__ import annotations

import shutil
import struct
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import tvm

from harness.backend import cuda as gpu
from harness.backend import cuda_library as gpu_lib
from harness.compile import compile_module
from harness.devices import open_device
from harness.devices.base import DeviceError, SessionBase
from harness.lower import lower_float, lower_float16, lower_integer
from harness.profile import resolve
from harness.rows import is_not_run
from harness.sensors import NvmlSensor, RaplSensor, _trapezoid, energy_per_sample_uj, gpu_sensor, measured_energy_uj
from harness.targets import TargetError, load_target
from laaq.models import tiny_cnn
from laaq.quant.integer import run_integer
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input

CUDA_TARGETS = ("cuda", "cuda-sm90", "jetson-orin")
HAS_GPU = bool(tvm.cuda(0).exist)
NO_GPU = "no CUDA device here (tvm.cuda(0).exist is false)"
HAS_NVCC = gpu.nvcc_path() is not None


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = tiny_cnn().eval()
    graph = model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), torch.rand(32, 1, 8, 8))
    return model, qg


def _source_target(name: str = "cuda"):
    """The same target with CUDA source embedded (no nvcc: fast, and what a machine without nvcc gets)."""
    return replace(load_target(name), gpu_code="source")


# ------------------------------------------------------------------------------------ target files
def test_cuda_target_files() -> None:
    for name in CUDA_TARGETS:
        t = load_target(name)
        assert t.tvm["kind"] == "cuda" and t.tvm["arch"].startswith("sm_") and "host" in t.tvm
        assert t.device.accelerator == "cuda" and resolve(t).backend == "cuda"
        assert str(resolve(t).tvm_target.kind) == "cuda"
    assert load_target("cuda").device.kind == "cuda"
    assert load_target("cuda-sm90").tvm["arch"] == "sm_90"
    orin = load_target("jetson-orin")
    assert orin.tvm["arch"] == "sm_87" and orin.device.kind == "rpc" and orin.cross_compiler and orin.arch == "aarch64"
    assert load_target("x86").device.accelerator == "cpu"


def test_cuda_target_validation(tmp_path) -> None:
    (tmp_path / "mixed.toml").write_text("description='x'\nthreads=1\n[tvm]\nkind='cuda'\narch='sm_89'\n")
    with pytest.raises(TargetError, match="accelerator"):
        load_target("mixed", tmp_path)  # CUDA code but the device would run it on a CPU
    (tmp_path / "bad.toml").write_text("description='x'\nthreads=1\n[tvm]\nkind='llvm'\n[device]\nkind='cuda'\n")
    with pytest.raises(TargetError, match="does not fit"):
        load_target("bad", tmp_path)
    (tmp_path / "code.toml").write_text("description='x'\nthreads=1\ngpu_code='sass'\n[tvm]\nkind='cuda'\n"
                                        "arch='sm_89'\n[device]\nkind='cuda'\n")
    with pytest.raises(TargetError, match="gpu_code"):
        load_target("code", tmp_path)
    (tmp_path / "ok.toml").write_text("description='x'\nthreads=1\n[tvm]\nkind='cuda'\narch='sm_86'\n"
                                      "[device]\nkind='rpc'\naccelerator='cuda'\n")
    assert load_target("ok", tmp_path).device.accelerator == "cuda"


# ------------------------------------------------------------------------------ compile and export
@pytest.mark.parametrize("name,variant", [("cuda", "int8"), ("cuda-sm90", "fp32"), ("jetson-orin", "int8")])
def test_compile_export_verify(tiny, tmp_path, name: str, variant: str) -> None:
    target = load_target(name)
    if target.cross_compiler and shutil.which(target.cross_compiler) is None:
        pytest.skip(f"cross compiler {target.cross_compiler} not installed")
    model, qg = tiny
    mod = lower_integer(qg, 2) if variant == "int8" else lower_float(model, (1, 8, 8), 2)
    art = compile_module(mod, target, tmp_path / f"{name}.so", variant, 2)
    info = gpu_lib.read_manifest(art.path)
    assert info is not None and info["arch"] == target.tvm["arch"]
    assert info["host_machine"] == (target.arch or "x86_64")
    (code,) = info["device_code"]
    assert code["kernels_verified"] == len(info["kernels"]) > 0
    lib = art.path.read_bytes()
    _, _, mods = gpu_lib.parse_blob(gpu_lib.library_blob(lib))  # what the loader will read
    (payload,) = [p for k, p in mods if k == "cuda"]
    fmt, _, device_code = gpu_lib.split_cuda_payload(payload)
    if HAS_NVCC:
        arch = target.tvm["arch"]
        assert fmt == code["format"] == "fatbin" and "nvcc" in " ".join(info["notes"])
        assert {(e["kind"], e["arch"]) for e in code["entries"]} == {("elf", arch), ("ptx", arch)}
        assert struct.unpack_from("<I", device_code)[0] == gpu.FATBIN_MAGIC
        for k in info["kernels"]:
            assert f".text.{k}".encode() in device_code and f".entry {k}(".encode() in device_code
    else:
        assert fmt == "cuda" and "nvcc not found" in " ".join(info["notes"])


def test_source_mode_embeds_cuda_source(tiny, tmp_path) -> None:
    _, qg = tiny
    art = compile_module(lower_integer(qg, 1), _source_target(), tmp_path / "src.so", "int8", 1)
    info = gpu_lib.read_manifest(art.path)
    assert info["device_code"][0]["format"] == "cuda" and "compiled where the library is loaded" in \
        info["device_code"][0]["contains"]
    assert b"__global__" in art.path.read_bytes()
    # every kernel scheduled by dlight and present in the source
    assert all(k.encode() in art.path.read_bytes() for k in info["kernels"])


def test_prepare_for_gpu_schedules_every_kernel(tiny) -> None:
    _, qg = tiny
    t = resolve("cuda").tvm_target
    mod = gpu.prepare_for_gpu(lower_integer(qg, 4), t)
    prims = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert prims and gpu.unscheduled_kernels(mod) == []


def test_blob_round_trip_and_fatbin_parser() -> None:
    mods = [("relax.VMExecutable", b"abc"), ("_lib", None), ("cuda", gpu_lib.join_cuda_payload("cuda", b"\x01" * 24,
                                                                                             b"__global__ void k()"))]
    blob = gpu_lib.build_blob([0, 1, 2, 2], [1, 2], mods)
    assert gpu_lib.parse_blob(blob) == ([0, 1, 2, 2], [1, 2], mods)
    assert gpu_lib.split_cuda_payload(mods[2][1]) == ("cuda", b"\x01" * 24, b"__global__ void k()")
    with pytest.raises(gpu.GPUError):
        gpu_lib.parse_blob(blob + b"\0")
    assert gpu_lib.kernel_names('extern "C" __global__ void __launch_bounds__(64) fused_add_kernel(int* a)') == \
        ["fused_add_kernel"]


def test_fp16_lowering_is_close_to_fp32(tiny) -> None:
    """The fp16 variant's numerics, checked where it can run here (the CPU target)."""
    from tvm import relax

    model, _ = tiny
    x = torch.rand(8, 1, 8, 8)
    mod = lower_float16(model, (1, 8, 8), 8)
    assert "float16" in mod.script(show_meta=False)
    ex = tvm.compile(mod, target=resolve("x86").tvm_target)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() <= 2e-2 * max(1.0, float(np.abs(ref).max()))


# ---------------------------------------------------------------------------------- not-run path
@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: the not-run path does not apply")
def test_cuda_session_without_gpu() -> None:
    with open_device(load_target("cuda")) as s:
        assert s.available is False and s.measured_as == "not run: no CUDA device"
        assert s.why_not and "no CUDA device" in s.where and s.sensor is None
        with pytest.raises(DeviceError, match="cannot run"):
            s.load(Path("x.so"))


def test_not_run_row_has_no_measurements(tiny, digits, tmp_path) -> None:
    from harness.bench import COLUMNS, BenchConfig, measure_variant
    from harness.variants import Variant

    tiny_model, _ = tiny  # untrained is enough: nothing is run
    graph = tiny_model.to_graph()
    plan = QuantPlan.uniform([n.name for n in graph.weighted()], 8)
    v = Variant("int8", "int", plan, quantize_graph(graph, plan, digits.x_train[:64]))
    session = SessionBase()
    session.available, session.measured_as, session.where = False, "not run: no CUDA device", NO_GPU
    cfg = BenchConfig(target="cuda", batch_large=4)
    m = measure_variant(cfg, resolve(_source_target()), session, v, tiny_model, digits, tmp_path, False)
    row, layers = m.row, m.layers
    assert is_not_run(row) and row["measured_as"] == "not run: no CUDA device"
    assert set(row) <= set(COLUMNS)
    for col in ("lat_small_median_ms", "lat_large_median_ms", "thr_large_ips", "clean_acc", "robust_acc", "agreement",
                "bitexact", "energy_measured_uj", "n_eval"):
        assert row.get(col, "") == "", col  # never a fabricated number
    assert row["artefact_bytes"] > 0 and row["energy_proxy_uj"] > 0 and row["compile_s"] > 0
    assert "verified" in row["device"] and "kernels verified" in row["device"]
    assert {r["layer"] for r in layers} == {n.name for n in graph.weighted()}
    assert (tmp_path / "artefacts" / "cuda-int8-b4.cuda.json").exists()


def test_jetson_needs_an_address() -> None:
    with pytest.raises(DeviceError, match="--rpc"):
        with open_device(load_target("jetson-orin")):
            pass


# ------------------------------------------------------------------------------------- sensors
def test_sensors_absent_give_none(tmp_path) -> None:
    if not HAS_GPU:
        assert NvmlSensor().available() is False and gpu_sensor() is None
        assert NvmlSensor().stop() is None
    empty = RaplSensor(tmp_path)
    assert empty.available() is False and empty.stop() is None and "unavailable" in empty.describe()
    assert measured_energy_uj(SessionBase(), None, None, 1.0) == ""  # a session without a sensor
    assert energy_per_sample_uj(None, lambda: None, 10, 1) == ""


def test_rapl_reads_counters_with_wraparound(tmp_path) -> None:
    pkg = tmp_path / "intel-rapl:0"
    sub = tmp_path / "intel-rapl:0:0"  # a sub-zone: must not be counted twice
    for d in (pkg, sub):
        d.mkdir()
        (d / "max_energy_range_uj").write_text("1000000\n")
    (pkg / "energy_uj").write_text("999000\n")
    (sub / "energy_uj").write_text("5\n")
    s = RaplSensor(tmp_path)
    assert s.available() and len(s.domains) == 1
    s.start()
    (pkg / "energy_uj").write_text("2000\n")  # wrapped: 1000 + 2000 µJ
    assert s.stop() == pytest.approx(0.003)


def test_energy_integration_arithmetic() -> None:
    assert _trapezoid([(1.0, 100.0), (2.0, 200.0)], 0.0, 3.0) == pytest.approx(100 + 150 + 200)
    assert _trapezoid([], 0.0, 1.0) is None

    class Fake:
        name = "fake"

        def available(self):
            return True

        def start(self):
            self.calls = 0

        def stop(self):
            return 0.5  # J

        def describe(self):
            return "fake"

    calls = []
    assert energy_per_sample_uj(Fake(), lambda: calls.append(1), calls_per_window=100, batch=10) == 500.0
    assert calls == [1]


# --------------------------------------------------------------------------------------- GPU only
gpu_only = pytest.mark.skipif(not HAS_GPU, reason=NO_GPU)


def _gpu_target():
    t = load_target("cuda")
    cc = str(tvm.cuda(0).compute_version).replace(".", "")
    return replace(t, tvm={**t.tvm, "arch": f"sm_{cc}"})


@gpu_only
def test_gpu_int8_bit_exact_and_timed(tiny, tmp_path) -> None:
    from harness.devices.cuda import CudaSession
    from harness.measure import LatencyProtocol, latency

    _, qg = tiny
    target = _gpu_target()
    art = compile_module(lower_integer(qg, 16), target, tmp_path / "g.so", "int8", 16)
    with CudaSession(0, target.tvm["arch"]) as s:
        assert s.available and s.measured_as == "native"
        mod = s.load(art.path)
        xq = quantize_input(torch.rand(16, 1, 8, 8)).numpy()
        assert np.array_equal(mod.run(xq), run_integer(qg, xq))
        assert latency(mod, xq, LatencyProtocol(2, 5, 3)).median_ms > 0


@gpu_only
def test_gpu_fp32_and_fp16_within_tolerance(tiny, tmp_path) -> None:
    from harness.devices.cuda import CudaSession

    model, _ = tiny
    target = _gpu_target()
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        ref = model(x).numpy()
    with CudaSession(0, target.tvm["arch"]) as s:
        for name, lower, rtol in (("fp32", lower_float, 1e-4), ("fp16", lower_float16, 2e-2)):
            art = compile_module(lower(model, (1, 8, 8), 16), target, tmp_path / f"{name}.so", name, 16)
            out = s.load(art.path).run(x.numpy())
            assert np.abs(out - ref).max() <= rtol * max(1.0, float(np.abs(ref).max())), name


@gpu_only
def test_gpu_nvml_energy(tiny, tmp_path) -> None:
    from harness.devices.cuda import CudaSession

    _, qg = tiny
    target = _gpu_target()
    art = compile_module(lower_integer(qg, 64), target, tmp_path / "e.so", "int8", 64)
    with CudaSession(0, target.tvm["arch"]) as s:
        if s.sensor is None:
            pytest.skip("NVML not available on this GPU machine")
        xq = quantize_input(torch.rand(64, 1, 8, 8)).numpy()
        e = measured_energy_uj(s, s.load(art.path), xq, median_ms=0.05, min_window_s=0.3)
        assert isinstance(e, float) and e > 0 and s.sensor.last.seconds >= 0.2


# ---------------------------------------------------------------- benchmarks/check_gpu.py's logic
def _check_gpu_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "check_gpu.py"
    spec = importlib.util.spec_from_file_location("check_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_gpu"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_check_gpu_compare_and_time_logic_on_cpu(tmp_path) -> None:
    """The script's compare/time/table code, exercised on the CPU target (its GPU run uses the same code
    with ``tvm.cuda(0)``): integer variants bit-exact, float ones within the stated tolerances."""
    from harness.devices.local import LocalSession

    cg = _check_gpu_module()
    session = LocalSession(1)
    session.available, session.sensor = True, None
    args = SimpleNamespace(batch_large=4, n_check=16, warmup=1, number=2, repeat=2, energy_window_s=0.0)
    model, shape = cg.build_model("tiny")
    results = [cg.check_one("tiny", v, model, shape, load_target("x86"), session, args, tmp_path)
               for v in ("mixed", "fp32")]
    for r in results:
        assert r.status == "ok", (r.variant, r.check, r.error)
        assert r.lat_b1_ms > 0 and r.lat_large_ms > 0 and r.energy_uj_per_sample == ""
    assert results[0].exact_rows == 1.0 and "bit-exact" in results[0].check
    cg.print_table(results)


@pytest.mark.slow
def test_check_gpu_script_without_gpu(tmp_path) -> None:
    if HAS_GPU:
        pytest.skip("covered by running the script on the GPU")
    cg = _check_gpu_module()
    rc = cg.main(["--models", "tiny", "--variants", "int8", "--no-jit-check", "--out", str(tmp_path)])
    assert rc == 2  # no GPU: compile-and-verify only, said plainly, not a pass
    assert (tmp_path / "check_gpu.json").exists()
    assert cg.main(["--models", "tiny", "--variants", "int8", "--no-jit-check", "--allow-no-gpu",
                    "--out", str(tmp_path)]) == 0


@pytest.mark.slow
def test_cli_bench_cuda_without_gpu_exits_0(tmp_path) -> None:
    """`laaq-bench bench --target cuda` on a CPU-only machine: rows marked not run, exit 0, said plainly;
    a re-run does not treat not-run rows as measured."""
    if HAS_GPU:
        pytest.skip("this machine has a GPU")
    import pandas as pd
    from click.testing import CliRunner

    from harness.cli import main

    args = ["bench", "--target", "cuda", "--variants", "fp32,int8", "--dataset", "digits", "--arch", "tinycnn",
            "--epochs", "1", "--eps", "0.1", "--eval-samples", "50", "--batch-large", "8", "--attack", "quick",
            "--results-dir", str(tmp_path), "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "NOT RUN: NO CUDA DEVICE" in r.output and "never estimated" in r.output
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    df = pd.read_csv(folder / "metrics.csv", dtype=str, keep_default_na=False)
    assert set(df.measured_as) == {"not run: no CUDA device"} and (df.lat_small_median_ms == "").all()
    r2 = CliRunner().invoke(main, args)
    assert r2.exit_code == 0 and "already measured" not in r2.output


@pytest.mark.slow
def test_rpc_cuda_session_asks_the_remote_gpu() -> None:
    """accelerator = "cuda" over RPC: the session opens remote.cuda(0) and says plainly when it is missing."""
    if HAS_GPU:
        pytest.skip("the local RPC server would have a GPU; covered by the GPU tests")
    import os
    import signal
    import socket
    import subprocess
    import time

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                             "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        target = load_target("jetson-orin").with_device(host="127.0.0.1", port=port)
        with pytest.raises(DeviceError, match="no CUDA device"):
            with open_device(target):
                pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
