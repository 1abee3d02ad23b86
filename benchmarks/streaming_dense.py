"""Dense layers on AVX-512 VNNI: the weight-streaming kernel at 8/4/2 bits against the tensorized 1×1 conv.

    .venv/bin/python benchmarks/streaming_dense.py [--shapes 1024x32,1568x100,1024x4096,4096x4096]
                                                   [--batches 1,8,64] [--rounds 5] [--out results/perf-stream]

For each dense shape K×O (after a small conv, as in a model: the dense reads the blocked activation) and
batch, it builds the same quantized model at uniform 8, 4 and 2 bits twice — ``conv``: the dense as the
tensorized 1×1 conv (one byte per weight whatever the width); ``stream``: the weight-streaming kernel
(8/4/2-bit fields unpacked in registers) — checks every library against the integer reference, and
times them interleaved in one run (same process, same threads). Prints each median and the ratios
stream/conv and 4-bit/8-bit, 2-bit/8-bit; writes ``stream.csv`` / ``stream.md`` atomically. Needs a CPU
with AVX-512 VNNI (the kernel's instruction): elsewhere it says so and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _model(k: int, o: int):
    """conv 1→C (3×3, side s) → flatten (K = C·s²) → dense K→O."""
    import torch
    from torch import nn

    side = 4 if k % 16 == 0 else 7
    c = k // (side * side)
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(k, o)).eval(), side


def main(a: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd
    import torch
    import tvm

    from harness.backend.schemes import VNNI
    from harness.compile import build_executable
    from harness.lower import lower_integer_nchwc
    from harness.measure import interleaved, per_call_ms
    from harness.profile import resolve
    from harness.results import atomic_write_text
    from laaq.importer import import_model
    from laaq.quant.integer import run_integer
    from laaq.quant.plan import QuantPlan
    from laaq.quant.quantizers import quantize_graph, quantize_input

    profile = resolve(a.target)
    if "avx512_vnni" not in Path("/proc/cpuinfo").read_text() or profile.scheme is not VNNI:
        print(f"needs a CPU with AVX-512 VNNI and a VNNI target ({profile.name}: {profile.cpu})", file=sys.stderr)
        return 2
    plain = dataclasses.replace(VNNI, streaming_dense=False)
    rows = []
    for shape in a.shapes.split(","):
        k, o = (int(s) for s in shape.split("x"))
        model, side = _model(k, o)
        graph = import_model(model, (1, side, side))
        names = [n.name for n in graph.weighted()]
        calib = torch.rand(32, 1, side, side, generator=torch.Generator().manual_seed(0))
        for batch in [int(b) for b in a.batches.split(",")]:
            x = quantize_input(torch.rand(batch, 1, side, side, generator=torch.Generator().manual_seed(1))).numpy()
            timers, xin = {}, tvm.runtime.tensor(x)
            for bits in (8, 4, 2):
                qg = quantize_graph(graph, QuantPlan.uniform(names, bits), calib)
                ref = run_integer(qg, x)
                for path, scheme in (("conv", plain), ("stream", VNNI)):
                    vm = tvm.relax.VirtualMachine(build_executable(lower_integer_nchwc(qg, batch, scheme), profile,
                                                                   progress=False), tvm.cpu())
                    f = vm["main"]
                    assert np.array_equal(f(xin).numpy(), ref), f"{shape} b{batch} w{bits} {path}: not bit-exact"
                    timers[(path, bits)] = per_call_ms(lambda f=f, xin=xin: f(xin), a.min_round_ms, a.settle_ms)
            med = {key: statistics.median(v) for key, v in interleaved(timers, a.rounds).items()}
            for bits in (8, 4, 2):
                rows.append({"shape": shape, "weight_mib_int8": round(k * o / 2**20, 2), "batch": batch, "bits": bits,
                             "conv_ms": round(med[("conv", bits)], 4), "stream_ms": round(med[("stream", bits)], 4),
                             "stream_over_conv": round(med[("stream", bits)] / med[("conv", bits)], 2),
                             "stream_over_stream8": round(med[("stream", bits)] / med[("stream", 8)], 2)})
                r = rows[-1]
                print(f"{shape:>10s} b{batch:<3d} w{bits}  conv {r['conv_ms']:8.4f} ms  stream {r['stream_ms']:8.4f} ms"
                      f"  stream/conv {r['stream_over_conv']:5.2f}  /stream-8bit {r['stream_over_stream8']:5.2f}",
                      flush=True)
    df = pd.DataFrame(rows)
    out = Path(a.out or ROOT / "results" / f"perf-stream-{profile.name}")
    atomic_write_text(out / "stream.csv", df.to_csv(index=False))
    head = (f"# Weight-streaming dense vs the tensorized 1×1 conv on {profile.name} ({profile.cpu})\n\n"
            f"{os.environ.get('TVM_NUM_THREADS', profile.threads)} threads; {a.rounds} interleaved rounds of ≥ "
            f"{a.min_round_ms:g} ms per library, each after a {a.settle_ms:g} ms pause; medians; every library "
            "bit-exact with the integer reference. The model: conv 1→C → flatten → dense K×O.\n\n")
    table = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    table += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    atomic_write_text(out / "stream.md", head + "\n".join(table) + "\n")
    print(f"wrote {out}/stream.csv and stream.md")
    return 0


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="x86")
    p.add_argument("--shapes", default="1024x32,1568x100,1024x4096,4096x4096", help="dense K×O, comma list")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--min-round-ms", type=float, default=80.0)
    p.add_argument("--settle-ms", type=float, default=50.0)
    p.add_argument("--out", default="")
    return p.parse_args()


if __name__ == "__main__":
    ARGS = _parse()
    from harness.targets import load_target

    os.environ.setdefault("TVM_NUM_THREADS", str(load_target(ARGS.target).threads))
    sys.exit(main(ARGS))
