"""Who answers Square's queries for a variant: its stand-in (the same function, cheaper) or the artefact itself."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from harness.variant_timing import timing_batch
from laaq.quant.integer import logits_from_int
from laaq.robustness import StandIn, torch_threads

if TYPE_CHECKING:
    from harness.variants import Variant


def square_stand_in(v: Variant, model: torch.nn.Module, host_model: torch.nn.Module, run,
                    to_device) -> StandIn | None:
    """The cheap function that answers Square's queries for ``v`` (``run``: the artefact's raw outputs), or
    None where there is none: fp16 (no host model computes the artefact's half-precision function)."""
    if v.kind == "int":
        return StandIn("bit-exact twin", lambda t: host_model.exact_acc(t).numpy(), run,
                       lambda o: logits_from_int(v.qg, o), exact=True)
    if v.name != "fp32":
        return None

    def float_raw(t: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model.eval()(torch.from_numpy(to_device(t))).numpy()

    return StandIn("PyTorch float model", float_raw, run, lambda o: o, exact=False)


def square_route(stand_in: StandIn | None, run, x: torch.Tensor, local: bool, batch: int, forced: bool = False
                 ) -> tuple[StandIn | None, str]:
    """Who answers Square's queries: the stand-in, unless the artefact is local and faster than it on one
    batch of evaluation images (then the artefact itself: cheap *and* literal); ``forced``: the stand-in
    regardless (``--square-on stand-in``). Returns (stand-in or None, why) — the reason is logged, and the
    row's ``square_on`` column says who answered."""
    if stand_in is None:
        return None, "artefact (no host stand-in computes this variant's function)"
    if forced:
        return stand_in, f"{stand_in.name} (--square-on stand-in)"
    if not local:
        return stand_in, f"{stand_in.name} (remote artefact: only judged examples and a sample travel)"
    xb = timing_batch(x, batch)

    def cost(fn) -> float:
        fn(xb)
        t0 = time.perf_counter()
        for _ in range(3):
            fn(xb)
        return (time.perf_counter() - t0) / 3 * 1e3

    with torch_threads(1):  # as the artefact would answer Square (evaluate's own_threads)
        art_ms = cost(run)
    std_ms = cost(stand_in.raw)
    if art_ms <= std_ms:
        return None, f"artefact (faster than the {stand_in.name} here: {art_ms:.2f} vs {std_ms:.2f} ms per {batch})"
    return stand_in, f"{stand_in.name} ({std_ms:.2f} vs the artefact's {art_ms:.2f} ms per {batch} images)"
