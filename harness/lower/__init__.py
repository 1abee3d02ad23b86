"""Lowering: a model (float) or a quantized graph (integer) → a Relax IRModule for one target.

Three lowerings, one module each:

* :mod:`harness.lower.floating` — fp32 through TVM's PyTorch frontend, and fp16 from it;
* :mod:`harness.lower.nchw` — the integer graph in plain NCHW (any target; the reference layout);
* :mod:`harness.lower.blocked` — the integer graph in NCHW[x]c blocks for a CPU scheme
  (:mod:`harness.backend.schemes`), bit-exact with the NCHW one (its grouped convs, pools, adds and
  concatenations: :mod:`harness.lower.blocked_ops`; integer pieces both layouts share: :mod:`harness.lower.ops`).

:func:`lower_integer_for` is the only place that chooses between the last two, from the
:class:`harness.profile.TargetProfile` (its ``scheme``), so ``bench`` and ``compile`` build the same module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.lower.blocked import lower_integer_nchwc
from harness.lower.floating import lower_float, lower_float16
from harness.lower.nchw import lower_integer, requantize_expr

if TYPE_CHECKING:
    import tvm

    from harness.profile import TargetProfile
    from harness.targets import Target
    from laaq.quant.quantizers import QuantizedGraph

__all__ = ["lower_float", "lower_float16", "lower_integer", "lower_integer_for", "lower_integer_nchwc",
           "requantize_expr"]


def lower_integer_for(qg: QuantizedGraph, batch: int, profile: TargetProfile | Target) -> tvm.IRModule:
    """The integer module for the profile's target: its blocked scheme where it has one, else NCHW."""
    from harness.profile import as_profile

    profile = as_profile(profile)
    if profile.scheme is not None:
        return lower_integer_nchwc(qg, batch, profile.scheme, pack_weights=profile.pack_weights)
    return lower_integer(qg, batch)
