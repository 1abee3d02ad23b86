"""The files a bundle and its output are made of, as typed records, and the manifest that pins them.

Why typed records: the runner (standalone, plain JSON) and the host (this module) must agree on every
field; loading into frozen dataclasses makes a missing or misspelt field fail at load, with the file
named, instead of deep inside ingest. Digests and the bundle id come from :mod:`harness.bundle.runner`
so that the device and the host check a bundle with the very same code.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.bundle.runner import (
    BUNDLE_FORMAT,
    OUTPUT_FORMAT,
    BundleError,
    bundle_id,
    canonical,
    check_files,
    load_json,
    sha256_file,
    verify_bundle,
)
from harness.results import atomic_write_text

__all__ = ["BundleError", "Manifest", "OutputResult", "VariantRecord", "read_output", "read_bundle", "write_manifest"]


@dataclass(frozen=True)
class TargetEntry:
    name: str
    backend: str  # "cpu" | "cuda": which TVM device the runner opens
    arch: str  # the device's `uname -m` ("" = the build host's)
    threads: int
    description: str
    tvm_target: str


@dataclass(frozen=True)
class VariantEntry:
    """One variant in the manifest: its libraries per batch, the device's inputs, the host's records."""

    name: str
    tag: str
    kind: str  # "float" | "int"
    libs: dict[str, str]  # batch (as a string: JSON keys) -> library path in the bundle
    inputs: str  # device: inputs/<tag>.npz (eval rows, time_b<batch>)
    record: str  # host: host/<tag>.json (VariantRecord)
    arrays: str  # host: host/<tag>.npz (x, y, reference outputs, logit scale)
    examples: str  # host: host/<tag>.examples.npz (laaq.example_log.ExampleLog)


@dataclass(frozen=True)
class Manifest:
    bundle_id: str
    created: str
    target: TargetEntry
    protocol: dict[str, Any]  # warmup, number, repeat (+ any time_evaluator option the protocol carries)
    tvm: str
    variants: list[VariantEntry]
    files: dict[str, dict[str, Any]]  # path -> {sha256, bytes}
    format: str = BUNDLE_FORMAT

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        return cls(d["bundle_id"], d["created"], TargetEntry(**d["target"]), dict(d["protocol"]), d["tvm"],
                   [VariantEntry(**v) for v in d["variants"]], d["files"], d["format"])

    def variant(self, tag: str) -> VariantEntry:
        return next(v for v in self.variants if v.tag == tag)


@dataclass(frozen=True)
class VariantRecord:
    """What the host keeps about one variant (``host/<tag>.json``): everything a row needs that the
    device does not measure, and how the examples were crafted."""

    name: str
    kind: str
    static: dict[str, Any]  # harness.rows.static_columns at bundle time
    layers: list[dict[str, Any]]  # harness.rows.layer_rows
    plan_json: str  # the plan (integer variants), "" for float
    evaluation: dict[str, Any]  # laaq.robustness.EvalConfig.to_dict()
    attack: str  # the ensemble, for the row's `attack` column
    attack_s: float  # seconds the host spent crafting (attacks + checks)
    stand_in: str  # what judged the examples while they were crafted
    transfer: bool  # the transfer check ran (integer variants)
    host_verdict: dict[str, Any]  # robust columns as the host's stand-in judged them (a cross-check)

    @classmethod
    def load(cls, path: Path) -> VariantRecord:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class EnergyWindow:
    joules: float
    calls: int
    batch: int
    seconds: float


@dataclass(frozen=True)
class VariantResult:
    outputs: str
    timings_s: dict[str, list[float]]
    energy: EnergyWindow | None
    sensors_before: dict[str, Any]
    sensors_after: dict[str, Any]
    run_s: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VariantResult:
        return cls(d["outputs"], {k: list(v) for k, v in d["timings_s"].items()},
                   EnergyWindow(**d["energy"]) if d.get("energy") else None, d["sensors_before"], d["sensors_after"],
                   d["run_s"])


@dataclass(frozen=True)
class OutputResult:
    """The runner's ``result.json``."""

    bundle_id: str
    bundle_manifest_sha256: str
    target: str
    started: str
    finished: str
    device: dict[str, Any]
    emulated: bool
    emulation: str
    energy_sensor: str
    tvm: str
    variants: dict[str, VariantResult]
    files: dict[str, dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputResult:
        known = {"bundle_id", "bundle_manifest_sha256", "target", "started", "finished", "device", "emulated",
                 "emulation", "energy_sensor", "tvm", "variants", "files"}
        return cls(**{k: d[k] for k in known if k != "variants"},
                   variants={t: VariantResult.from_dict(v) for t, v in d["variants"].items()},
                   extra={k: v for k, v in d.items() if k not in known})

    def device_name(self) -> str:
        """Short, for the `device` cell: the board / GPU / CPU, where it ran, and emulation said plainly."""
        d = self.device
        if self.emulated:
            return f"emulated {d.get('machine', '?')} on {d.get('hostname', '?')}, bundle runner"  # why: run.json
        what = d.get("gpu") or d.get("board") or d.get("cpu") or d.get("machine", "?")
        return f"{what} ({d.get('machine', '?')}) on {d.get('hostname', '?')}, bundle runner"


def write_manifest(root: Path, target: TargetEntry, protocol: dict[str, Any], variants: list[VariantEntry]
                   ) -> Manifest:
    """Digest every file under ``root`` (but the manifest and any runner output) and write manifest.json."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != "manifest.json" and not rel.startswith("output/"):
            files[rel] = {"sha256": sha256_file(str(p)), "bytes": p.stat().st_size}
    import tvm

    d: dict[str, Any] = {"format": BUNDLE_FORMAT,
                         "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                         "target": asdict(target), "protocol": protocol, "tvm": tvm.__version__,
                         "variants": [asdict(v) for v in variants], "files": files}
    d["bundle_id"] = bundle_id(d)
    atomic_write_text(root / "manifest.json", json.dumps(d, indent=1) + "\n")
    return Manifest.from_dict(d)


def read_bundle(root: Path) -> tuple[Manifest, str]:
    """(manifest, sha256 of manifest.json) of a bundle whose every file checks out; BundleError otherwise."""
    d, digest = verify_bundle(str(root))
    try:
        return Manifest.from_dict(d), digest
    except (KeyError, TypeError) as e:
        raise BundleError(f"{root}/manifest.json lacks a field ({e}): made by another version of laaq-bench?") from e


def read_output(out: Path) -> OutputResult:
    """The runner's result, checked: complete JSON, unmodified since written, every output file intact."""
    path = out / "result.json"
    if not path.is_file():
        raise BundleError(f"{out} has no result.json: the runner did not finish there (or this is not a runner's "
                          "output folder)")
    d = load_json(str(path), "runner output")
    if d.get("format") != OUTPUT_FORMAT:
        raise BundleError(f"{path} is not a {OUTPUT_FORMAT} result (format {d.get('format')!r})")
    claimed = d.pop("self_sha256", None)
    if claimed is None or hashlib.sha256(canonical(d)).hexdigest() != claimed:
        raise BundleError(f"{path} was modified after the runner wrote it (its self-digest does not match)")
    check_files(str(out), d.get("files", {}), f"runner output {out}")
    try:
        return OutputResult.from_dict(d)
    except (KeyError, TypeError) as e:
        raise BundleError(f"{path} lacks a field ({e}): made by another version of the runner?") from e


def relpath_ok(root: Path, rel: str) -> Path:
    """A path named inside a manifest or result, refused if it leaves its folder."""
    p = (root / rel).resolve()
    if os.path.commonpath([p, root.resolve()]) != str(root.resolve()):
        raise BundleError(f"{rel!r} points outside {root}")
    return p
