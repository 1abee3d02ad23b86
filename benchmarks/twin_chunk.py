"""The twin in cache-sized chunks vs whole batches: forward+backward and the exact path, side by side.

    .venv/bin/python benchmarks/twin_chunk.py [--arch vgg8] [--images 512] [--rounds 3]

Why: the twin's exact integer path is a chain of elementwise int64 passes bound by memory traffic, so it
runs images in chunks (``laaq.quant.twin.chunk_size``). This measures, in one process and interleaved,
the twin's forward+backward (what a white-box attack step costs) and its exact path (what a Square query
costs) at several chunk sizes, next to the float model's forward+backward — the ratio the cost issue asks
to keep ≤ 2×. Prints ms per ``--images`` images (median of ``--rounds``) and the ratios; names the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vgg8")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunks", default="32,64,128,192,256,512")
    a = ap.parse_args()
    from harness.environment import environment
    from harness.measure import interleaved, per_call_ms
    from laaq.data import load_dataset
    from laaq.importer import model_graph
    from laaq.quant.plan import QuantPlan
    from laaq.quant.quantizers import quantize_graph
    from laaq.quant.twin import Twin
    from laaq.train import TrainConfig, train_or_load

    data = load_dataset("mnist5k")
    model, _, _ = train_or_load(data, TrainConfig(arch=a.arch))
    for p in model.parameters():
        p.requires_grad_(False)
    g = model_graph(model, data.input_shape)
    twin = Twin(quantize_graph(g, QuantPlan.uniform([n.name for n in g.weighted()], 8), data.x_train[:256]))
    default_chunk = twin.chunk
    x = data.x_test[: a.images].clone()

    def grad_step(m: torch.nn.Module) -> None:  # what an attack step does: logits, loss, d loss / d input
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(m(xi).sum(), [xi])

    def exact() -> None:
        twin.exact_acc(x)

    def on_twin(chunk: int, fn):  # noqa: ANN202 - a timer's callable
        def call() -> None:
            twin.chunk = chunk
            fn()
        return call

    def float_in(chunk: int):  # noqa: ANN202
        def call() -> None:
            for i in range(0, a.images, chunk):
                xi = x[i:i + chunk].clone().requires_grad_(True)
                torch.autograd.grad(model(xi).sum(), [xi])
        return call

    chunks = [int(c) for c in a.chunks.split(",")]
    calls = {f"twin {what} chunk {c}": on_twin(c, fn) for c in chunks
             for what, fn in (("fwd+bwd", lambda: grad_step(twin)), ("exact", exact))}
    calls |= {f"float fwd+bwd chunk {c}": float_in(c) for c in (128, a.images)}
    # one call a slot (each takes ~0.1 s), a warm-up call before it, the order reversed every other round
    times = interleaved({k: per_call_ms(fn, min_round_ms=0, settle_ms=0) for k, fn in calls.items()}, a.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"# {environment()['host_cpu']}, {torch.get_num_threads()} threads, {a.images} images of {a.arch}, median of "
          f"{a.rounds} interleaved rounds; default chunk here: {default_chunk}")
    base = med[f"float fwd+bwd chunk {a.images}"]
    for k, v in med.items():
        print(f"{k:32s} {v:8.1f} ms   {v / base:5.2f}x float fwd+bwd")


if __name__ == "__main__":
    main()
