"""Do ``bench`` and ``make perf`` time the same module alike? Both protocols on one compiled module, one run.

    .venv/bin/python benchmarks/protocols.py [--target x86] [--batches 1,64] [--rounds 5]

ResNet-20 (3x32x32, random fixed weights, uniform 8-bit plan) is compiled once for the target. Each round,
right after a PyTorch workload like the attack that precedes every timing in ``bench`` (a few batched
forward/backward passes on the fp32 model), it times:

* ``bench``: :func:`harness.measure.latency` on the target's device session (settle pause, warm-up,
  ``time_evaluator``) — the code ``bench`` runs;
* ``bench, no settle``: the same without the settle pause (the protocol before it existed);
* ``perf``: ``harness.measure.interleaved`` as ``benchmarks/peers.py`` uses it (settle pause, one untimed call,
  back-to-back calls).

It prints each median and the ratio to ``perf``; the two protocols agree when ``bench/perf`` is near 1.
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


def _caller(mod, x: np.ndarray):
    """One call of the loaded module on ``x`` (already on its device): what peers.py times."""
    import tvm

    f, xt = mod.vm["main"], tvm.runtime.tensor(x, mod.dev)
    return lambda: f(xt)


def main(a: argparse.Namespace) -> int:
    import harness.measure as measure
    from harness.compile import compile_module
    from harness.devices import open_device
    from harness.lower import lower_integer_for
    from harness.measure import LatencyProtocol
    from harness.profile import resolve
    from laaq.importer import model_graph
    from laaq.models import ResNet20, randomize_bn_stats
    from laaq.quant.plan import QuantPlan
    from laaq.quant.quantizers import quantize_graph

    sys.path.insert(0, str(ROOT / "benchmarks"))

    profile = resolve(a.target)
    torch.manual_seed(0)
    model = ResNet20().eval()
    randomize_bn_stats(model)
    graph = model_graph(model, (3, 32, 32))  # the importer, as bench
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), torch.rand(16, 3, 32, 32))
    proto = LatencyProtocol()
    xs = torch.rand(32, 3, 32, 32, requires_grad=True)

    def attack_like() -> None:  # what precedes a timing in bench: PyTorch forward/backward on all cores
        for _ in range(3):
            model(xs).sum().backward()

    with open_device(profile, progress=False) as session, tempfile.TemporaryDirectory() as tmp:
        print(f"target {profile.name} ({session.measured_as}, {session.where}), torch threads "
              f"{torch.get_num_threads()}; bench protocol: {proto.describe()}")
        for batch in a.batches:
            art = compile_module(lower_integer_for(qg, batch, profile), profile, Path(tmp) / f"r20-b{batch}.so",
                                 "int8", batch, progress=False)
            mod = session.load(art.path)
            x = np.random.default_rng(0).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)
            call = _caller(mod, x)
            res: dict[str, list[float]] = {"bench": [], "bench, no settle": [], "perf": []}
            for _ in range(a.rounds):
                attack_like()
                res["bench"].append(measure.latency(mod, x, proto).median_ms)
                attack_like()
                settle, measure.SETTLE_MS = measure.SETTLE_MS, 0
                try:
                    res["bench, no settle"].append(measure.latency(mod, x, proto).median_ms)
                finally:
                    measure.SETTLE_MS = settle
                attack_like()
                res["perf"].append(float(np.median(measure.interleaved({"tvm": measure.per_call_ms(call)}, 3)["tvm"])))
            perf = float(np.median(res["perf"]))
            for name, v in res.items():
                m = float(np.median(v))
                print(f"ResNet-20 int8 b{batch:<3d} {name:17s} median {m:9.4f} ms  ({name}/perf {m / perf:5.2f})  "
                      f"rounds: {', '.join(f'{t:.3f}' for t in v)}")
    print(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; "
          f"{time.strftime('%H:%M:%S')}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="x86")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 64])
    p.add_argument("--rounds", type=int, default=5)
    sys.exit(main(p.parse_args()))
