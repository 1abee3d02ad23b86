# Runs on the GPU machine: load each sm_90 artefact, run on tvm.cuda(0), compare with the host reference,
# time with time_evaluator (device timer), sample NVML board power during the timed runs.
import ctypes
import json
import os
import threading
import time

import numpy as np
import tvm

ctypes.CDLL(os.environ["RTCUDA"], ctypes.RTLD_GLOBAL)
from tvm.runtime.vm import VirtualMachine  # noqa: E402 - after the CUDA runtime library is loaded

art = "build/gpucheck/art"
dev = tvm.cuda(0)
print("cuda exist", dev.exist, dev.compute_version if dev.exist else "", flush=True)
try:
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
except Exception as e:
    h = None
    print("no NVML", e)
rows = []
for b in (1, 64):
    x = np.load(f"{art}/x-b{b}.npy")
    xq = np.load(f"{art}/xq-b{b}.npy")
    for v in ("fp32", "fp16", "int8"):
        r = {"variant": v, "batch": b}
        try:
            vm = VirtualMachine(tvm.runtime.load_module(f"{art}/{v}-b{b}.so"), dev)
            inp = tvm.runtime.tensor(xq if v == "int8" else x, dev)
            out = vm["main"](inp).numpy()
            if v == "int8":
                ref = np.load(f"{art}/ref-int8-b{b}.npy")
                r["bitexact"] = bool(np.array_equal(out, ref))
                r["max_abs_diff"] = int(np.abs(out.astype(np.int64) - ref).max())
            else:
                ref = np.load(f"{art}/ref-fp32-b{b}.npy")
                r["max_abs_diff"] = float(np.abs(out - ref).max())
                r["argmax_agree"] = float((out.argmax(1) == ref.argmax(1)).mean())
            for _ in range(10):
                vm["main"](inp)
            samples = []
            stop = threading.Event()

            def sample(samples=samples, stop=stop):
                while not stop.is_set():
                    if h is not None:
                        samples.append((time.perf_counter(), pynvml.nvmlDeviceGetPowerUsage(h) / 1e3))
                    time.sleep(0.01)

            th = threading.Thread(target=sample)
            th.start()
            t0 = time.perf_counter()
            res = vm.time_evaluator("main", dev, number=200, repeat=10)(inp)
            t1 = time.perf_counter()
            stop.set()
            th.join()
            ms = np.array(res.results) * 1e3
            r.update(median_ms=round(float(np.median(ms)), 4), p90_ms=round(float(np.percentile(ms, 90)), 4))
            if samples:
                p = np.mean([s[1] for s in samples])
                calls = 200 * 10
                r.update(
                    board_power_w=round(float(p), 1),
                    energy_uj_per_sample=round(float(p * (t1 - t0) / calls / b * 1e6), 2),
                )
        except Exception as e:
            r["error"] = repr(e)[:300]
        print(r, flush=True)
        rows.append(r)
os.makedirs(os.environ.get("OUT", "/tmp/out"), exist_ok=True)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp/out"), "gpucheck.json"), "w"), indent=1)
