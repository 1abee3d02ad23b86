"""Packed sub-byte weights: artefact size and latency, plain int8 storage vs packed, side by side.

    .venv/bin/python benchmarks/packing.py [--target x86] [--batches 1,64] [--out results/perf-packing-x86]

For SmallCNN (1x28x28, fc1 holds most weights) and ResNet-20 (3x32x32) — random weights: neither size nor
latency depends on their values — at uniform 8, 4 and 2 bits, it builds each plan twice for the target
(``pack_weights`` off and on: ≤ 4-bit kernels as two 4-bit / four 2-bit fields per byte, unpacked in the
conv's function at run time), checks the packed library's outputs equal the unpacked one's, and times both
interleaved in one run (same process, same threads). It prints bytes and the packed/plain ratios of size
and latency. Figures are native only when the target's device is this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(a: argparse.Namespace) -> int:
    import pandas as pd

    from harness.compile import compile_module
    from harness.devices import open_device
    from harness.lower import lower_integer_for
    from harness.measure import LatencyProtocol, interleaved, latency_timer
    from harness.profile import resolve
    from harness.results import atomic_write_text
    from harness.targets import load_target
    from laaq.importer import model_graph
    from laaq.models import ResNet20, SmallCNN
    from laaq.quant.plan import QuantPlan
    from laaq.quant.quantizers import quantize_graph

    target = load_target(a.target)
    profiles = {pack: resolve(dataclasses.replace(target, pack_weights=pack)) for pack in (False, True)}
    proto = LatencyProtocol(warmup=5, number=a.number, repeat=a.repeat)
    torch.manual_seed(0)
    rows = []
    with open_device(profiles[False], progress=False) as session, tempfile.TemporaryDirectory() as tmp:
        print(f"target {target.name} ({session.measured_as}, {session.where}), threads {target.threads}; "
              f"{proto.describe()}; {a.rounds} interleaved rounds")
        print(f"{'model':9s} {'bits':>4s} {'batch':>5s} {'plain B':>9s} {'packed B':>9s} {'size':>5s} "
              f"{'plain ms':>9s} {'packed ms':>9s} {'time':>5s}  (packed / plain; size also vs int8)")
        for name, model, shape in (("smallcnn", SmallCNN(), (1, 28, 28)), ("resnet20", ResNet20(), (3, 32, 32))):
            graph = model_graph(model.eval(), shape)
            names = [n.name for n in graph.weighted()]
            calib = torch.rand(16, *shape)
            int8_bytes = 0
            for bits in (8, 4, 2):
                qg = quantize_graph(graph, QuantPlan.uniform(names, bits), calib)
                for batch in a.batches:
                    x = np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)
                    size, loaded = {}, {}
                    for pack, prof in profiles.items():
                        path = Path(tmp) / f"{name}-w{bits}-b{batch}-{pack}.so"
                        art = compile_module(lower_integer_for(qg, batch, prof), prof, path, f"w{bits}", batch,
                                             progress=False)
                        size[pack], loaded[pack] = path.stat().st_size, session.load(art.path)
                    if not np.array_equal(loaded[True].run(x), loaded[False].run(x)):
                        raise SystemExit(f"{name} {bits}-bit: packed and plain outputs differ")
                    int8_bytes = int8_bytes if bits != 8 else size[False]
                    times = interleaved({p: latency_timer(loaded[p], x, proto) for p in (False, True)}, a.rounds)
                    ms = {p: float(np.median(t)) for p, t in times.items()}
                    rows.append({"model": name, "bits": bits, "batch": batch, "bytes_plain": size[False],
                                 "bytes_packed": size[True],
                                 "packed_over_plain_size": round(size[True] / size[False], 3),
                                 "packed_over_int8_size": round(size[True] / int8_bytes, 3),
                                 "ms_plain": round(ms[False], 4), "ms_packed": round(ms[True], 4),
                                 "packed_over_plain_time": round(ms[True] / ms[False], 3),
                                 "measured_as": session.measured_as, "threads": target.threads})
                    print(f"{name:9s} {bits:4d} {batch:5d} {size[False]:9d} {size[True]:9d} "
                          f"{size[True] / size[False]:5.2f} {ms[False]:9.4f} {ms[True]:9.4f} "
                          f"{ms[True] / ms[False]:5.2f}  (vs int8 size {size[True] / int8_bytes:.2f})")
    out = Path(a.out or ROOT / "results" / f"perf-packing-{target.name}")
    atomic_write_text(out / "packing.csv", pd.DataFrame(rows).to_csv(index=False))
    print(f"\n-> {out}/packing.csv")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="x86")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 64])
    p.add_argument("--number", type=int, default=20)
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of timing")
    p.add_argument("--out", default="")
    sys.exit(main(p.parse_args()))
