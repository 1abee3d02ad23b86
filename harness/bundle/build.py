"""``laaq-bench bundle``: a self-contained folder that measures a target where the harness cannot go.

Each variant is compiled exactly as ``bench`` compiles it (:func:`harness.bench.compile_variant`: same
lowering, same tuning database, batch 1 and the large batch), its evaluation is crafted on the host
(:mod:`harness.bundle.craft`), and the folder gets::

    manifest.json          bundle id, target, variants, timing protocol, sha256 + size of every file
    README.md              the one command to run on the device
    runner.py              needs only Python 3, numpy and TVM's runtime (harness/bundle/runner.py, with
                           device_sensors.py beside it)
    artefacts/<tag>-b<B>.so   the libraries (+ <lib>.cuda.json verification manifests for CUDA)
    inputs/<tag>.npz       what the device runs: every distinct input (clean + adversarial), timing inputs
    host/                  what only the host reads back at ingest: labels, recorded examples, reference
                           outputs, the row's static columns, the run's configuration

The folder is built under a temporary name and renamed when complete, so a bundle that exists is whole.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness import energy
from harness.bench import BenchConfig, compile_variant, pretune, resolve_profile, variants_for
from harness.bundle.craft import craft_variant
from harness.bundle.manifest import BundleError, TargetEntry, VariantEntry, VariantRecord, write_manifest
from harness.devices import Session, open_device
from harness.environment import environment
from harness.host_reference import host_side
from harness.measure import outputs
from harness.profile import TargetProfile
from harness.results import atomic_write_bytes, atomic_write_text, row_tag
from harness.rows import layer_rows, robust_columns, static_columns
from harness.variants import Variant
from laaq.data import Split, load_dataset
from laaq.train import obtain_model

# copied into every bundle: the runner and what it reads about its device (stdlib, numpy, TVM runtime only)
RUNNER_FILES = (Path(__file__).with_name("runner.py"), Path(__file__).with_name("device_sensors.py"))
DEFAULT_ROOT = Path("build") / "bundles"


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    bundle_id: str
    target: str
    variants: list[str]
    bytes: int  # every file of the folder
    tarball: Path | None
    tarball_bytes: int
    seconds: float


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _stand_in_session(profile: TargetProfile, progress: bool) -> contextlib.AbstractContextManager[Session | None]:
    """The target's own device when it is this host (``local``): examples are then judged by the artefact."""
    if profile.device.kind == "local":
        return open_device(profile, progress=progress)
    return contextlib.nullcontext(None)


def _stand_in(session: Session | None, v: Variant, lib: Path, batch: int, to_device) -> tuple[Any, str]:
    if session is not None:
        loaded = session.load(lib)
        where = f"the artefact itself on the build host ({session.where})"
        return (lambda t: outputs(loaded, to_device(t), batch)), where
    if v.kind == "int":
        return None, "the bit-exact integer reference (the device's outputs are checked against it at ingest)"
    return None, ("the PyTorch float model (the artefact cannot run on the build host; a float artefact may differ "
                  "from it in the last bits)")


def _bundle_variant(cfg: BenchConfig, profile: TargetProfile, v: Variant, model, data: Split, root: Path,
                    session: Session | None, log: Callable[[str], None], progress: bool) -> VariantEntry:
    tag = row_tag(profile.name, v.name)
    log(f"[{tag}] compile (as bench), then craft the evaluation on the host ...")
    arts = compile_variant(cfg, profile, v, model, data.input_shape, root, log, progress)
    _, to_device = host_side(v, model)
    stand_in, stand_name = _stand_in(session, v, arts[cfg.batch_large].path, cfg.batch_large, to_device)
    c = craft_variant(cfg, v, model, data, stand_in, tag, log if progress else None)
    log(f"[{tag}] crafted in {c.seconds:.0f} s: {len(c.device_inputs)} distinct inputs for the device; host verdict "
        f"clean {c.host.clean_acc:.3f} robust {c.host.robust_acc:.3f}")
    entry = VariantEntry(v.name, tag, v.kind, {str(b): a.path.relative_to(root).as_posix() for b, a in arts.items()},
                         f"inputs/{tag}.npz", f"host/{tag}.json", f"host/{tag}.npz", f"host/{tag}.examples.npz")
    timing = {f"time_b{b}": t for b, t in c.timing.items()}
    atomic_write_bytes(root / entry.inputs, _npz(eval=c.device_inputs, **timing))
    scale = {"logit_scale": v.qg.logit_scale()} if v.qg is not None else {}
    atomic_write_bytes(root / entry.arrays, _npz(x=c.x.numpy(), y=c.y.numpy(), reference=c.reference, **scale))
    atomic_write_bytes(root / entry.examples, c.examples.to_bytes())
    white = "float model" if v.kind == "float" else "bit-exact twin"
    rec = VariantRecord(
        v.name, v.kind, static_columns(profile, v, model, arts), layer_rows(profile, v, model, None),
        v.plan.to_json() if v.plan else "", cfg.evaluation.to_dict(),
        f"{cfg.evaluation.describe()}; white-box on the {white}, crafted on the build host with Square black-box on "
        f"{stand_name.split(' (')[0]}; every example judged on the device's outputs (offline bundle)",
        round(c.seconds, 1), stand_name, v.kind == "int", robust_columns(c.host))
    atomic_write_text(root / entry.record, json.dumps(asdict(rec), indent=1, default=str) + "\n")
    return entry


def readme(profile: TargetProfile, entries: list[VariantEntry], cfg: BenchConfig) -> str:
    """The bundle's README: what it holds and the one command to run on the device."""
    gpu = profile.backend == "cuda"
    needs = ("an NVIDIA GPU of compute capability "
             f"{profile.gpu_arch.replace('sm_', '')[0]}.{profile.gpu_arch.replace('sm_', '')[1:]} or newer with its "
             "driver, the CUDA 13 runtime (`libcudart.so.13`), and the `apache-tvm` wheel (it carries "
             "`libtvm_runtime_cuda.so`); `pynvml` (nvidia-ml-py) optional, for board energy"
             if gpu else f"a {profile.target.arch or 'x86_64'} CPU")
    import tvm

    native = (" (the CPU of the machine that built it: run it on the same kind of CPU, or build for a portable "
              "target such as x86-avx2)") if profile.host_native else ""
    return f"""# laaq-bench offline bundle: `{profile.name}`

{profile.target.description}; code for `{profile.cpu}`{native}.
Variants: {', '.join(e.name for e in entries)} (batch 1 and {cfg.batch_large});
{cfg.eval_samples} evaluation images plus the adversarial examples crafted on the build host
({cfg.evaluation.preset.name} ensemble, eps {cfg.evaluation.eps:g}). The bundle id, the timing protocol and the
sha256 of every file are in `manifest.json`; the runner refuses a bundle that does not match it.

## On the device

Needs Python 3.8+, `numpy` and `apache-tvm=={tvm.__version__}` with a matching `apache-tvm-ffi` (the runtime
is enough: nothing is compiled there), and {needs}. An air-gapped device: on a connected machine,
`pip download --only-binary=:all: --platform <its wheel platform> --python-version <its Python> -d wheels
apache-tvm=={tvm.__version__} apache-tvm-ffi numpy`, copy `wheels/` over, `pip install --no-index --find-links
wheels apache-tvm apache-tvm-ffi numpy`. Then, in this folder:

    TVM_USE_RUNTIME_LIB=1 python3 runner.py

It writes `output/` here (`--out DIR` elsewhere; `--check` only verifies the files). Set `LAAQ_EMULATED=1` if
the device is an emulator the runner cannot recognise (it detects qemu user mode itself).

## Back on the host

Copy `output/` back into this folder on the host and run

    laaq-bench ingest {'<this folder>'}/output

which checks the output against this bundle and writes the usual run folder (metrics.csv rows marked
`native`, or `emulated` when the runner ran under emulation), with accuracy, robust accuracy and
agreement computed from the device's outputs, latency and measured energy from the device.
"""


def _tarball(root: Path) -> Path:
    """``<bundle>.tar.gz`` beside the folder (written under a temporary name, then renamed)."""
    out = root.with_name(root.name + ".tar.gz")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    with tarfile.open(tmp, "w:gz") as tf:
        tf.add(root, arcname=root.name, filter=lambda ti: None if ti.name.startswith(f"{root.name}/output") else ti)
    os.replace(tmp, out)
    return out


def build_bundle(cfg: BenchConfig, out: Path | None = None, tar: bool = False, progress: bool = True,
                 log: Callable[[str], None] = lambda m: print(m, flush=True)) -> BundleSummary:
    """Build the bundle of ``cfg`` (its target and variants) in ``out`` (default build/bundles/<run name>)."""
    t0 = time.perf_counter()
    profile = resolve_profile(cfg)
    out = Path(out) if out else DEFAULT_ROOT / cfg.folder().name
    if out.exists():
        raise BundleError(f"{out} already exists; choose another --out or remove it (a bundle is never rewritten in "
                          "place: its manifest pins every file)")
    data = load_dataset(cfg.dataset, cfg.seed, cfg.data_dir)
    model, ckpt, _ = obtain_model(data, replace(cfg.train, seed=cfg.seed), cfg.model_source(), progress=progress)
    variants = variants_for(cfg, model, data)
    if cfg.tune and cfg.trials > 0:
        pretune(cfg, profile, variants, model, data.input_shape, log)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _stand_in_session(profile, progress) as session:
            entries = [_bundle_variant(cfg, profile, v, model, data, tmp, session, log, progress) for v in variants]
        for v in variants:
            if v.plan is not None:
                atomic_write_text(tmp / "host" / "plans" / f"{v.name.replace(':', '_')}.json", v.plan.to_json())
        run_info = {"config": asdict(cfg), "target": asdict(profile.target), "environment": environment(),
                    "checkpoint": str(ckpt), "latency_protocol": cfg.latency.describe(),
                    "attack_preset": cfg.evaluation.preset.name, "attack": cfg.evaluation.describe(),
                    "energy_source": energy.SOURCE}
        atomic_write_text(tmp / "host" / "run.json", json.dumps({"run_folder": cfg.folder().name,
                                                                 "run_info": run_info}, indent=2, default=str) + "\n")
        for f in RUNNER_FILES:
            shutil.copyfile(f, tmp / f.name)
        atomic_write_text(tmp / "README.md", readme(profile, entries, cfg))
        target = TargetEntry(profile.name, profile.backend, profile.target.arch, profile.threads,
                             profile.target.description, str(profile.tvm_target))
        # the runner times each variant alone on the device (its own protocol, stated in the manifest): bench's
        # interleaved timing phase (``rounds``) is not part of it
        protocol = {k: v for k, v in asdict(cfg.latency).items() if k != "rounds"}
        manifest = write_manifest(tmp, target, protocol, entries)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    tarball = _tarball(out) if tar else None
    return BundleSummary(out, manifest.bundle_id, profile.name, [v.name for v in variants], size, tarball,
                         tarball.stat().st_size if tarball else 0, time.perf_counter() - t0)
