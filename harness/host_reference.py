"""The host side of a variant: its white-box stand-in, the reference its artefact must equal, and the agreement.

Why one module: ``bench``, the offline bundle's crafting and ``ingest`` must compare an artefact with the same
reference in the same way — the float model's logits for float variants, the integer reference's int32
accumulators for integer ones — and record per-image outcomes in the same form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.results import atomic_write_text
from harness.variant_timing import device_input
from harness.variants import Variant
from laaq.quant.integer import logits_from_int, run_integer
from laaq.quant.twin import Twin
from laaq.robustness import RobustResult


def write_per_image(folder: Path, tag: str, labels: np.ndarray, rob: RobustResult) -> Path:
    """Per-image outcomes (1 = correct) so that any two variants can be compared later (McNemar)."""
    import pandas as pd

    cols = {"index": np.arange(rob.n), "label": labels, "clean": rob.clean.astype(int)}
    cols.update({k: v.astype(int) for k, v in rob.cumulative.items()})
    cols["robust"] = rob.robust.astype(int)
    path = folder / "per_image" / f"{tag}.csv"
    atomic_write_text(path, pd.DataFrame(cols).to_csv(index=False))
    return path


def host_side(v: Variant, model: torch.nn.Module) -> tuple[torch.nn.Module, Any]:
    """The variant's white-box stand-in (the float model, or the bit-exact twin of the integer graph) and
    ``to_device``: float images → the array the artefact takes (float32, or uint8 codes)."""
    return (model if v.kind == "float" else Twin(v.qg)), device_input(v.kind)


def reference_outputs(v: Variant, model: torch.nn.Module, arr: np.ndarray) -> np.ndarray:
    """The host reference's raw outputs for device-format inputs ``arr``: PyTorch's logits (float variants),
    the integer reference's int32 accumulators (integer variants)."""
    if v.kind == "float":
        with torch.no_grad():
            return model(torch.from_numpy(arr)).numpy()
    return run_integer(v.qg, arr)


def agreement_figures(kind: str, pairs: list[tuple[np.ndarray, np.ndarray]], to_logits) -> dict[str, Any]:
    """(artefact outputs, host reference outputs) per input set → top-1 agreement, bit-exact output rows
    (integer variants) and the largest output difference; ``to_logits`` maps raw outputs to logits."""
    agree = bitexact = total = 0
    max_diff = 0.0
    for dev_out, ref in pairs:
        bitexact += int(np.all(dev_out == ref, axis=1).sum())
        wide = (dev_out, ref) if kind == "float" else (dev_out.astype(np.int64), ref)
        max_diff = max(max_diff, float(np.abs(wide[0] - wide[1]).max()))
        agree += int((to_logits(dev_out).argmax(1) == to_logits(ref).argmax(1)).sum())
        total += len(dev_out)
    return {"agreement": round(agree / total, 4), "bitexact": round(bitexact / total, 4) if kind == "int" else "",
            "max_abs_diff": f"{max_diff:.3g}"}


def agreement_columns(v: Variant, model: torch.nn.Module, run, to_device, inputs: list[torch.Tensor]
                      ) -> dict[str, Any]:
    """The artefact (``run``: inputs → its raw outputs) against the host reference on each input set."""
    pairs = [(run(inp), reference_outputs(v, model, to_device(inp))) for inp in inputs]
    return agreement_figures(v.kind, pairs, (lambda o: o) if v.kind == "float" else
                             (lambda o: logits_from_int(v.qg, o)))
