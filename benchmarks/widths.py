"""Does a narrower weight width pay on this CPU? 7-bit vs 8-bit, per layer and per model, side by side.

    .venv/bin/python benchmarks/widths.py [--target x86] [--batches 1,64] [--out results/perf-widths]

On the AVX2 host a layer of <= 7 bits runs the exact ``vpmaddubsw`` scheme, an 8-bit layer the int16
``vpmaddwd`` one (harness/backend/schemes.py). For ResNet-20 (3x32x32) and SmallCNN (1x28x28) — random
weights: latency does not depend on their values — this prints, per batch size:

* the per-layer latency table (harness/layer_latency.py: each layer as its own module, in the model's
  layout, timed with time_evaluator on the target's device) at 8 and 7 bits and their ratio;
* the whole model uniform-8 vs uniform-7, timed interleaved in one run (same process, same threads),
  and Σ layers / whole model (the table's consistency; the goal is within ±15 %).

Figures are native only when the target's device is this machine; an emulated board's are labelled so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(a: argparse.Namespace) -> int:
    import pandas as pd

    from harness.compile import compile_module
    from harness.devices import open_device
    from harness.layer_latency import consistency, layer_table
    from harness.lower import lower_integer_for
    from harness.measure import LatencyProtocol, interleaved, latency_timer
    from harness.profile import resolve
    from harness.results import atomic_write_text
    from laaq.importer import model_graph
    from laaq.models import ResNet20, SmallCNN
    from laaq.quant.plan import QuantPlan
    from laaq.quant.quantizers import quantize_graph

    profile = resolve(a.target)
    proto = LatencyProtocol(warmup=5, number=a.number, repeat=a.repeat)
    torch.manual_seed(0)
    rows, summary = [], []
    with open_device(profile, progress=False) as session, tempfile.TemporaryDirectory() as tmp:
        print(f"target {profile.name} ({session.measured_as}, {session.where}), threads {profile.threads}, "
              f"scheme {profile.scheme.name if profile.scheme else 'nchw'}; {proto.describe()}")
        for name, model, shape in (("resnet20", ResNet20(), (3, 32, 32)), ("smallcnn", SmallCNN(), (1, 28, 28))):
            graph = model_graph(model.eval(), shape)
            names = [n.name for n in graph.weighted()]
            calib = torch.rand(16, *shape)
            for batch in a.batches:
                t0 = time.perf_counter()
                table = layer_table(graph, profile, session, (7, 8), batch=batch, proto=proto, calib=calib)
                by = {(t.layer, t.bits): t for t in table}
                print(f"\n{name}, batch {batch}: per-layer table in {time.perf_counter() - t0:.0f} s")
                print(f"  {'layer':16s} {'8-bit ms':>9s} {'7-bit ms':>9s} {'8/7':>5s}")
                for n in names:
                    w8, w7 = by[(n, 8)].median_ms, by[(n, 7)].median_ms
                    rows.append({"model": name, "batch": batch, "layer": n, "ms_w8": w8, "ms_w7": w7,
                                 "speedup_7_over_8": round(w8 / w7, 3), "measured_as": session.measured_as})
                    print(f"  {n:16s} {w8:9.4f} {w7:9.4f} {w8 / w7:5.2f}")
                loaded, plans = {}, {}
                for bits in (8, 7):
                    plans[bits] = QuantPlan.uniform(names, bits)
                    qg = quantize_graph(graph, plans[bits], calib)
                    art = compile_module(lower_integer_for(qg, batch, profile), profile,
                                         Path(tmp) / f"{name}-w{bits}-b{batch}.so", f"w{bits}", batch, progress=False)
                    loaded[bits] = session.load(art.path)
                x = np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)
                # interleaved: both widths see the same machine state
                whole = interleaved({bits: latency_timer(loaded[bits], x, proto) for bits in (8, 7)}, a.rounds)
                w8, w7 = float(np.median(whole[8])), float(np.median(whole[7]))
                c8, c7 = consistency(table, plans[8], w8), consistency(table, plans[7], w7)
                summary.append({"model": name, "batch": batch, "whole_ms_w8": round(w8, 4), "whole_ms_w7": round(w7, 4),
                                "speedup_7_over_8": round(w8 / w7, 3), "sum_layers_over_whole_w8": round(c8, 3),
                                "sum_layers_over_whole_w7": round(c7, 3), "measured_as": session.measured_as})
                print(f"  whole model: 8-bit {w8:.4f} ms, 7-bit {w7:.4f} ms, 8/7 {w8 / w7:.2f}; "
                      f"Σ layers / whole: {c8:.2f} (8-bit), {c7:.2f} (7-bit)")
    out = Path(a.out or ROOT / "results" / f"perf-widths-{profile.name}")
    atomic_write_text(out / "layers.csv", pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(out / "models.csv", pd.DataFrame(summary).to_csv(index=False))
    print(f"\n-> {out}/layers.csv, {out}/models.csv")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="x86")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 64])
    p.add_argument("--number", type=int, default=20)
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the whole-model timing")
    p.add_argument("--out", default="")
    sys.exit(main(p.parse_args()))
