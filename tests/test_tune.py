"""Tuning database: tuned once, re-applied at zero tuning cost, reused across weights and plans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

from harness import tuning as tune
from harness.compile import build_executable
from harness.lower import lower_integer
from harness.profile import resolve
from laaq.quant.integer import run_integer
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input

X86 = resolve("x86-avx2")


def _run(ex, x: np.ndarray) -> np.ndarray:
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def test_database_persisted_and_reused(tiny_model, digits, private_cache: Path) -> None:
    graph = tiny_model.to_graph()
    names = [n.name for n in graph.weighted()]
    qg8 = quantize_graph(graph, QuantPlan.uniform(names, 8), digits.x_train[:64])
    key = tune.default_key("tinycnn", digits.input_shape, 1, "int8")
    mod = lower_integer(qg8, 1)

    # one kernel (the second conv), two random candidates: enough to have a database
    rep = tune.tune(mod, X86, key, trials=2, progress=False, op_names=("conv2d1",), quick=True)
    work = Path(rep.work_dir)
    assert rep.tuned and work.is_relative_to(private_cache / "tuning" / "x86-avx2")
    assert (work / "database_workload.json").exists() and (work / "database_tuning_record.json").exists()
    assert json.loads((work / "tuned.json").read_text())["trials"] == 2
    fused = tune.fuse(mod, X86.tvm_target)
    tuned_kernels = {t.task_name for t in tune.missing_tasks(fused, X86.tvm_target, work)}
    assert not any("conv2d1" in k for k in tuned_kernels)

    # second call: nothing left to tune for that kernel → zero tuning, and the schedule is applied
    rep2 = tune.tune(mod, X86, key, trials=2, progress=False, op_names=("conv2d1",), quick=True)
    assert not rep2.tuned and rep2.trials == 0
    applied = tune.apply_database(mod, X86, key)
    scheduled = [gv.name_hint for gv, f in applied.functions.items()
                 if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled")]
    assert any("conv2d1" in s for s in scheduled)
    assert tune.existing_database(X86, key) == str(work)

    # compiled with the database: same outputs as the integer reference and as the untuned build
    x = quantize_input(digits.x_test[:1]).numpy()
    ref = run_integer(qg8, x)
    assert np.array_equal(_run(build_executable(mod, X86, tuning_key=key), x), ref)
    assert np.array_equal(_run(build_executable(mod, X86, tuning_key=key, tune=False), x), ref)  # --no-tune
    assert np.array_equal(_run(tvm.compile(applied, target=X86.tvm_target), x), ref)
    assert np.array_equal(_run(tvm.compile(mod, target=X86.tvm_target), x), ref)

    # another plan (other bits, other weights) has the same kernel shapes: found in the database
    qg4 = quantize_graph(graph, QuantPlan.uniform(names, 4), digits.x_train[64:128])
    fused4 = tune.fuse(lower_integer(qg4, 1), X86.tvm_target)
    assert tune.workload_digest(fused4) == tune.workload_digest(fused)
    assert not any("conv2d1" in t.task_name for t in tune.missing_tasks(fused4, X86.tvm_target, work))
    rep4 = tune.tune(lower_integer(qg4, 1), X86, key, trials=2, progress=False, op_names=("conv2d1",), quick=True)
    assert not rep4.tuned
    x4 = quantize_input(torch.rand(1, *digits.input_shape)).numpy()
    assert np.array_equal(_run(build_executable(lower_integer(qg4, 1), X86, tuning_key=key), x4), run_integer(qg4, x4))


def test_vnni_target_not_tuned_on_host_without_vnni(monkeypatch) -> None:
    vnni = resolve("x86-vnni")
    has = "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    assert vnni.host_runs == has and (has or "avx512_vnni" in vnni.host_runs_why)
    assert not resolve("rpi4").host_runs and resolve("rpi4").cross


def test_hand_scheduled_convs_not_tuned_and_emulated_records_apart() -> None:
    x86, vnni, arm = resolve("x86-avx2"), resolve("x86-vnni"), resolve("arm")
    conv = "fused_conv2d_nchwc_int8_add_cast_multiply"
    assert tune.hand_scheduled(conv, x86) and tune.hand_scheduled(conv, arm)  # AVX2 / NEON: hand schedule wins
    assert tune.hand_scheduled(conv, vnni)  # VNNI too: 64 MetaSchedule trials lost to the hand schedule
    from harness.backend.schedule import schedule_passes

    for profile in (x86, vnni, arm):  # and the hand schedule is applied before any record
        with profile.tvm_target:
            names = [p.info.name for p in schedule_passes(profile.scheme, "/db")]
        assert names == ["LaaqBlockedInt8Schedule", "MetaScheduleApplyDatabase"]
    assert not tune.hand_scheduled("fused_matmul_add", x86)
    assert x86.database_name == "x86-avx2" and arm.database_name == "arm-emulated"
    assert resolve("x86").database_name == f"x86-{resolve('x86').mcpu}"  # host-native: records per CPU
    assert resolve("arm", rpc="10.0.0.2:9090").database_name == "arm"
