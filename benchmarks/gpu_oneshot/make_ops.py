"""Build here the CUDA (sm_90) artefacts of the edge-CNN ops for the one-shot GPU check (gpurun_ops.py).

The three op models of tests/op_models.py and the MobileNetV2-style example (random weights, perturbed
batch-norm, MNIST shape), each under a plan mixing 2–8-bit layers, lowered in NCHW (the CUDA path) and
compiled with nvcc fatbins inside the .so; inputs and integer-reference outputs saved beside them.

    .venv/bin/python benchmarks/gpu_oneshot/make_ops.py build/gpuops
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from op_models import SUPPORTED_MODELS, build  # noqa: E402
from test_new_ops import mixed_qgraph  # noqa: E402

from harness.compile import compile_module  # noqa: E402
from harness.lower import lower_float, lower_integer  # noqa: E402
from harness.profile import resolve  # noqa: E402
from laaq.models import randomize_bn_stats  # noqa: E402
from laaq.quant.integer import run_integer  # noqa: E402
from laaq.quant.quantizers import quantize_input  # noqa: E402
from laaq.usermodel import ModelSource  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/gpuops")
out.mkdir(parents=True, exist_ok=True)
target = resolve("cuda-sm90")
torch.manual_seed(0)
mnv2 = randomize_bn_stats(ModelSource.parse(str(ROOT / "examples/mobilenetv2.py:mobilenetv2")).build((1, 28, 28), 10))
cases = {name: (build(name), (1, 8, 8)) for name in SUPPORTED_MODELS}
cases["mobilenetv2"] = (mnv2.eval(), (1, 28, 28))
meta = {}
for name, (model, shape) in cases.items():
    qg = mixed_qgraph(model, shape)
    for b in (1, 4):
        x = torch.rand(b, *shape, generator=torch.Generator().manual_seed(b))
        xq = quantize_input(x).numpy()
        np.save(out / f"{name}-xq-b{b}.npy", xq)
        np.save(out / f"{name}-ref-b{b}.npy", run_integer(qg, xq))
        a = compile_module(lower_integer(qg, b), target, out / f"{name}-int-b{b}.so", "mixed", b)
        meta[f"{name}-int-b{b}"] = a.size_bytes
        if name == "mobilenetv2":
            np.save(out / f"{name}-x-b{b}.npy", x.numpy())
            with torch.no_grad():
                np.save(out / f"{name}-reffp32-b{b}.npy", model(x).numpy())
            a = compile_module(lower_float(model, shape, b), target, out / f"{name}-fp32-b{b}.so", "fp32", b)
            meta[f"{name}-fp32-b{b}"] = a.size_bytes
        print(name, b, flush=True)
(out / "meta.json").write_text(json.dumps(meta, indent=1))
