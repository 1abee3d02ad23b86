"""Crafting a variant's evaluation on the host, so that the device only has to run inputs.

Why a stand-in judges while crafting: ``bench``'s ensemble asks the deployed function about every
example as it goes (Square is black-box on it; each member attacks the survivors of the earlier ones).
Offline, the host asks the closest thing it has: the artefact itself where this host is the target's
device (``[device] kind = "local"``: exactly ``bench``'s path), else the bit-exact integer reference for
integer variants (the same integers the artefact computes, checked on the device afterwards), else the
PyTorch float model (a float artefact on another device may differ in the last bits; the row says so).
Every judged example is recorded (:class:`laaq.example_log.ExampleLog`); the device runs them, and
ingest replays the evaluation with the device as the judge (:func:`laaq.robustness.rejudge`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from harness.bench import BenchConfig
from harness.host_reference import host_side, reference_outputs
from harness.variant_timing import timing_batch
from harness.variants import Variant
from laaq.data import Split
from laaq.example_log import ExampleLog
from laaq.quant.integer import logits_from_int
from laaq.robustness import RobustResult, attack_device, evaluate

RawRun = Callable[[torch.Tensor], np.ndarray]  # float images -> the raw outputs of the artefact (or its stand-in)


@dataclass
class Crafted:
    """One variant's evaluation as crafted on the host: what the device runs, what the host keeps."""

    x: torch.Tensor  # the evaluation images (float)
    y: torch.Tensor
    examples: ExampleLog
    host: RobustResult  # the stand-in's verdict (ingest recomputes it from the device's outputs)
    device_inputs: np.ndarray  # distinct device-format rows: the clean images and every recorded example
    reference: np.ndarray  # the host reference's raw outputs for device_inputs (agreement, bit-exactness)
    timing: dict[int, np.ndarray]  # batch -> the device-format input timed at that batch
    seconds: float


def distinct_rows(arr: np.ndarray) -> np.ndarray:
    """The distinct rows of ``arr`` by their bytes, in first-seen order (byte-exact: -0.0 and 0.0 stay apart,
    so ingest can look each one up by its bytes)."""
    seen: dict[bytes, int] = {}
    keep = []
    for i, row in enumerate(arr):
        k = row.tobytes()
        if k not in seen:
            seen[k] = i
            keep.append(i)
    return arr[keep]


def craft_variant(cfg: BenchConfig, v: Variant, model: torch.nn.Module, data: Split, stand_in: RawRun | None,
                  tag: str, log: Callable[[str], None] | None = None) -> Crafted:
    """``bench``'s evaluation of ``v`` (same images, ensemble, seeds, checks), judged by ``stand_in`` (default:
    the host reference) and recorded."""
    n = min(cfg.eval_samples or len(data.x_test), len(data.x_test))
    x, y = data.x_test[:n], data.y_test[:n]
    host_model, to_device = host_side(v, model)
    raw: RawRun = stand_in or (lambda t: reference_outputs(v, model, to_device(t)))

    def predict(t: torch.Tensor) -> torch.Tensor:  # as bench's: logits from the raw outputs
        out = raw(t)
        return torch.as_tensor(out if v.kind == "float" else logits_from_int(v.qg, out), dtype=torch.float32)

    examples = ExampleLog()
    t0 = time.perf_counter()
    host = evaluate(host_model, x, y, cfg.evaluation, deployed=predict,
                    transfer_source=model if v.kind == "int" else None, examples=examples,
                    device=attack_device(cfg.attack_device),
                    log=(lambda m: log(f"[{tag}] {m}")) if log else None)
    seconds = time.perf_counter() - t0
    rows = distinct_rows(to_device(torch.cat([x, *examples.examples()])))
    return Crafted(x, y, examples, host, rows, reference_outputs(v, model, rows),
                   {b: to_device(timing_batch(x, b)) for b in (1, cfg.batch_large)}, seconds)
