"""On the GPU machine: run make_ops.py's artefacts on tvm.cuda(0), compare with the host reference (integer
outputs bit for bit, fp32 by max |diff|), time batch 1 with time_evaluator; JSON to $OUT/gpuops.json."""

import ctypes
import json
import os
import sys

import numpy as np
import tvm

ctypes.CDLL(os.environ["RTCUDA"], ctypes.RTLD_GLOBAL)
from tvm.runtime.vm import VirtualMachine  # noqa: E402 - after the CUDA runtime library is loaded

art = sys.argv[1] if len(sys.argv) > 1 else "build/gpuops"
dev = tvm.cuda(0)
print("cuda exist", dev.exist, dev.compute_version if dev.exist else "", flush=True)
rows = []
for so in sorted(f for f in os.listdir(art) if f.endswith(".so")):
    name, kind, b = so[:-3].rsplit("-", 2)
    r = {"artefact": so}
    try:
        vm = VirtualMachine(tvm.runtime.load_module(f"{art}/{so}"), dev)
        x = np.load(f"{art}/{name}-{'xq' if kind == 'int' else 'x'}-{b}.npy")
        ref = np.load(f"{art}/{name}-{'ref' if kind == 'int' else 'reffp32'}-{b}.npy")
        inp = tvm.runtime.tensor(x, dev)
        out = vm["main"](inp).numpy()
        if kind == "int":
            r["bitexact"] = bool(out.dtype == ref.dtype and np.array_equal(out, ref))
        r["max_abs_diff"] = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max())
        if b == "b1":
            res = vm.time_evaluator("main", dev, number=100, repeat=5)(inp)
            r["median_ms"] = round(float(np.median(res.results)) * 1e3, 4)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        r["error"] = repr(e)[:300]
    print(r, flush=True)
    rows.append(r)
os.makedirs(os.environ.get("OUT", "/tmp/out"), exist_ok=True)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp/out"), "gpuops.json"), "w"), indent=1)
