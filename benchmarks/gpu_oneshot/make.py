# Builds CUDA (sm_90) artefacts + host references for a one-shot check on the H200 device machine.
import json
from pathlib import Path

import numpy as np
import torch

from harness.cli import train_config
from harness.compile import compile_module
from harness.lower import lower_float, lower_float16, lower_integer
from harness.targets import load_target
from laaq.data import load_mnist5k
from laaq.importer import model_graph
from laaq.quant.integer import run_integer
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input
from laaq.train import train_or_load

art = Path("build/gpucheck/art")
t = load_target("cuda-sm90")
d = load_mnist5k()
cfg, _ = train_config("mnist5k", "smallcnn", 6, 1e-3, False, None, 0)
model, _, cached = train_or_load(d, cfg, progress=False)
assert cached
g = model_graph(model, d.input_shape)
qg = quantize_graph(g, QuantPlan.uniform([n.name for n in g.weighted()], 8), d.x_train[:256])
meta = {}
for b in (1, 64):
    x = d.x_test[:b]
    xq = quantize_input(x).numpy()
    np.save(art / f"x-b{b}.npy", x.numpy())
    np.save(art / f"xq-b{b}.npy", xq)
    with torch.no_grad():
        np.save(art / f"ref-fp32-b{b}.npy", model(x).numpy())
    np.save(art / f"ref-int8-b{b}.npy", run_integer(qg, xq))
    for v, mod in (
        ("fp32", lower_float(model, d.input_shape, b)),
        ("fp16", lower_float16(model, d.input_shape, b)),
        ("int8", lower_integer(qg, b)),
    ):
        a = compile_module(mod, t, art / f"{v}-b{b}.so", v, b)
        meta[f"{v}-b{b}"] = a.size_bytes
        print(v, b, a.size_bytes, flush=True)
json.dump(meta, open(art / "meta.json", "w"))
