"""``laaq-bench ingest OUTPUT``: a device's bundle output → the usual run-folder rows.

Trust first, then figures. The output must be complete and unmodified (``result.json`` parses, its
self-digest holds, every output file matches its sha256), the bundle must be intact (every file
against ``manifest.json``), and the output must name *this* bundle (its id and the sha256 of its
manifest). Any failure is one :class:`BundleError` line, raised before anything is written.

Then the figures are computed as ``bench`` computes them, from the device's outputs: the recorded
evaluation is replayed with the device as the judge (:func:`laaq.robustness.rejudge`: clean and robust
accuracy, per-member figures, sanity checks, ε-curve, Wilson intervals), agreement and bit-exactness
against the host reference (:func:`harness.bench.agreement_figures`), latency statistics from the
device's ``time_evaluator`` figures (:func:`harness.measure.latency`) and energy per sample from its
sensor window (:func:`harness.sensors.energy_per_sample_uj`). Rows are labelled ``native`` with the
device named from the output, or ``emulated`` when the runner said it ran under emulation.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.backend.base import manifest_path
from harness.bundle.craft import distinct_rows
from harness.bundle.manifest import (
    BundleError,
    Manifest,
    OutputResult,
    VariantRecord,
    read_bundle,
    read_output,
    relpath_ok,
)
from harness.host_reference import agreement_figures, write_per_image
from harness.measure import LatencyProtocol, latency
from harness.results import RunStore, atomic_write_text, row_tag
from harness.rows import COLUMNS, LAYER_COLUMNS, latency_columns, robust_columns
from harness.sensors import energy_per_sample_uj
from laaq.example_log import ExampleLog
from laaq.quant.integer import logits_from_int
from laaq.quant.quantizers import quantize_input
from laaq.robustness import EvalConfig, RobustResult, rejudge


@dataclass(frozen=True)
class IngestResult:
    folder: Path
    rows: list[dict[str, Any]]
    bundle_id: str
    device: str
    measured_as: str


@dataclass
class _Measured:
    row: dict[str, Any]
    layers: list[dict[str, Any]]
    rob: RobustResult
    labels: np.ndarray
    tag: str
    plan_json: str
    unattacked: int


class _Recorded:
    """The device's ``time_evaluator`` figures, served as a loaded module's ``time()`` (for ``latency``)."""

    def __init__(self, seconds: list[float]) -> None:
        self.seconds = seconds

    def time(self, *_: Any, **__: Any) -> list[float]:
        return self.seconds


class _RecordedSensor:
    """The device's energy window, served as a sensor (for ``energy_per_sample_uj``: one formula)."""

    name = "bundle"

    def __init__(self, joules: float) -> None:
        self.joules = joules

    def available(self) -> bool:
        return True

    def start(self) -> None:
        pass

    def stop(self) -> float:
        return self.joules

    def describe(self) -> str:
        return "the device's sensor, read by the bundle runner"


class _Scale:
    """The integer graph's per-class logit scale, as ``logits_from_int`` reads it."""

    def __init__(self, scale: np.ndarray) -> None:
        self.scale = scale

    def logit_scale(self) -> np.ndarray:
        return self.scale


def _find_bundle(output: Path) -> Path:
    if (output.parent / "manifest.json").is_file():
        return output.parent
    raise BundleError(f"cannot tell which bundle {output} came from (no manifest.json in {output.parent}): pass "
                      "--bundle DIR")


def _lookup(rows: np.ndarray, index: dict[bytes, int], table: np.ndarray, tag: str) -> np.ndarray:
    try:
        return table[[index[r.tobytes()] for r in rows]]
    except KeyError:
        raise BundleError(f"{tag}: the replay asked for an input the bundle does not hold (the bundle's examples and "
                          "inputs disagree: rebuild the bundle)") from None


def _measure(manifest: Manifest, bundle: Path, output: Path, result: OutputResult, tag: str) -> _Measured:
    try:
        entry = manifest.variant(tag)
    except StopIteration:
        raise BundleError(f"the output has a variant {tag!r} that bundle {manifest.bundle_id} does not hold") from None
    rec = VariantRecord.load(relpath_ok(bundle, entry.record))
    vr = result.variants[tag]
    with np.load(relpath_ok(bundle, entry.arrays), allow_pickle=False) as z:
        x, y, reference = torch.from_numpy(z["x"]), torch.from_numpy(z["y"]), z["reference"]
        scale = _Scale(z["logit_scale"]) if "logit_scale" in z.files else None
    with np.load(relpath_ok(bundle, entry.inputs), allow_pickle=False) as z:
        inputs = z["eval"]
    with np.load(relpath_ok(output, vr.outputs), allow_pickle=False) as z:
        dev_out = z["eval"]
    if len(dev_out) != len(inputs) or len(distinct_rows(inputs)) != len(inputs):
        raise BundleError(f"{tag}: the output has {len(dev_out)} rows for the bundle's {len(inputs)} inputs")
    index = {r.tobytes(): i for i, r in enumerate(inputs)}
    to_device: Callable[[torch.Tensor], np.ndarray] = (
        (lambda t: t.numpy().astype(np.float32)) if rec.kind == "float" else (lambda t: quantize_input(t).numpy()))
    to_logits = (lambda o: o) if rec.kind == "float" else (lambda o: logits_from_int(scale, o))

    def run(t: torch.Tensor) -> np.ndarray:  # the device's raw outputs
        return _lookup(to_device(t), index, dev_out, tag)

    def ref(t: torch.Tensor) -> np.ndarray:  # the host reference's
        return _lookup(to_device(t), index, reference, tag)

    def predict(t: torch.Tensor) -> torch.Tensor:  # as bench's: logits from the artefact's own outputs
        return torch.as_tensor(to_logits(run(t)), dtype=torch.float32)

    examples = ExampleLog.from_bytes(relpath_ok(bundle, entry.examples).read_bytes())
    rob = rejudge(examples, x, y, EvalConfig.from_dict(rec.evaluation), predict, rec.transfer)
    unattacked = sum(examples.unattacked.values())
    try:
        proto = LatencyProtocol(**manifest.protocol)  # the protocol the device timed under, every field of it
    except TypeError as e:
        raise BundleError(f"bundle {manifest.bundle_id}'s timing protocol {manifest.protocol} is not this "
                          f"harness's ({e}): ingest it with the laaq-bench version that built it") from None
    batches = sorted(int(b) for b in vr.timings_s)
    lat = {b: latency(_Recorded(vr.timings_s[str(b)]), np.empty((b, 0)), proto) for b in batches}
    e = vr.energy
    attack = rec.attack
    if unattacked:
        attack += (f"; the device judged some examples differently from the stand-in, so {unattacked} member "
                   "requests had no crafted example: robust accuracy is an upper bound for those images")
    row = {
        **rec.static, "timestamp": result.finished, "measured_as": "emulated" if result.emulated else "native",
        "device": result.device_name(), "n_eval": len(x), **robust_columns(rob),
        **agreement_figures(rec.kind, [(run(x), ref(x)), (run(rob.x_worst), ref(rob.x_worst))], to_logits),
        "attack": attack, "attack_s": rec.attack_s,
        "energy_measured_uj": energy_per_sample_uj(_RecordedSensor(e.joules), lambda: None, e.calls, e.batch)
        if e else "",
        "threads": manifest.target.threads, "warmup": proto.warmup, "number": proto.number, "repeat": proto.repeat,
        **latency_columns({"small": lat[batches[0]], "large": lat[batches[-1]]}),
    }
    return _Measured(row, rec.layers, rob, y.numpy(), tag, rec.plan_json, unattacked)


def _run_info(folder: Path, bundle: Path, manifest: Manifest, digest: str, result: OutputResult) -> dict[str, Any]:
    """run.json: the bench run's own (when this folder has one, e.g. CUDA not-run rows) or the bundle's, plus
    where and how the bundle ran."""
    try:
        info = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        info = json.loads((bundle / "host" / "run.json").read_text())["run_info"]
        info.update(started=result.started, finished=result.finished)
    ran = {"bundle_id": manifest.bundle_id, "manifest_sha256": digest, "bundle": str(bundle.resolve()),
           "started": result.started, "finished": result.finished, "device": result.device,
           "emulated": result.emulated, "emulation": result.emulation, "energy_sensor": result.energy_sensor,
           "device_tvm": result.tvm, "variants": sorted(result.variants),
           "sensors": {t: {"before": v.sensors_before, "after": v.sensors_after} for t, v in result.variants.items()}}
    info["bundles"] = [b for b in info.get("bundles", []) if b.get("bundle_id") != manifest.bundle_id] + [ran]
    return info


def ingest_output(output: Path, bundle: Path | None = None, results_dir: str = "results", run_id: str = "",
                  log: Callable[[str], None] = lambda m: print(m, flush=True)) -> IngestResult:
    """Check ``output`` against its bundle, then write its rows into the run folder (created or resumed)."""
    output = Path(output)
    result = read_output(output)
    bundle = Path(bundle) if bundle else _find_bundle(output)
    manifest, digest = read_bundle(bundle)
    if result.bundle_id != manifest.bundle_id or result.bundle_manifest_sha256 != digest:
        raise BundleError(f"{output} was produced from bundle {result.bundle_id} (manifest sha256 "
                          f"{result.bundle_manifest_sha256[:12]}), not from {bundle} (bundle {manifest.bundle_id}, "
                          f"manifest sha256 {digest[:12]}): ingest it with the bundle it came from (--bundle DIR)")
    measured = [_measure(manifest, bundle, output, result, tag) for tag in result.variants]
    for m in measured:
        if m.unattacked:
            log(f"[{m.tag}] WARNING: {m.unattacked} examples were never crafted for images the device still judged "
                "correct (the device disagrees with the stand-in): robust accuracy is an upper bound there")
    # every check passed and every figure is computed: only now write
    folder = Path(results_dir) / (run_id or json.loads((bundle / "host" / "run.json").read_text())["run_folder"])
    store = RunStore(folder, COLUMNS, LAYER_COLUMNS)
    store.write_json("run.json", _run_info(folder, bundle, manifest, digest, result))
    for m in measured:
        entry = manifest.variant(m.tag)
        for lib in entry.libs.values():  # the library, and its verification manifest where it has one
            for src in (relpath_ok(bundle, lib), manifest_path(relpath_ok(bundle, lib), "cuda")):
                if src.is_file():
                    (folder / "artefacts").mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, folder / "artefacts" / src.name)
        if m.plan_json:
            atomic_write_text(folder / "plans" / f"{entry.name.replace(':', '_')}.json", m.plan_json)
        write_per_image(folder, row_tag(manifest.target.name, entry.name), m.labels, m.rob)
        store.add(m.row, m.layers)
        log(f"[{m.tag}] {m.row['measured_as']} on {m.row['device']}: clean {m.row['clean_acc']:.3f} robust "
            f"{m.row['robust_acc']:.3f} b1 {m.row['lat_small_median_ms']:.4f} ms")
    from harness.report import write_run_report

    write_run_report(folder)
    return IngestResult(folder, [m.row for m in measured], manifest.bundle_id, result.device_name(),
                        "emulated" if result.emulated else "native")
