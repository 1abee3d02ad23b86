"""laaq-bench offline bundle runner: run a bundle's compiled libraries on this device, write outputs + timings.

Copied verbatim into every bundle as ``runner.py``, with ``device_sensors.py`` beside it. It needs only
Python 3, numpy and TVM's runtime (``TVM_USE_RUNTIME_LIB=1`` is enough): no harness, no PyTorch, no attack
code — the adversarial examples were crafted on the host and ship as plain inputs. Usage, in the bundle folder::

    python3 runner.py [--out OUTPUT] [--variants a,b] [--check]

It first checks every file of the bundle against ``manifest.json`` (sha256 and size) and refuses a
tampered or truncated bundle. Then, per variant: loads the large-batch library, runs every input
(``inputs/<tag>.npz`` ``eval``, zero-padded to full batches as the harness does), times both batch sizes
with TVM's ``time_evaluator`` under the bundle's protocol (warm-up calls, then ``repeat`` figures of
``number`` calls), measures energy over a >= 1 s window where a sensor exists (NVML on a GPU, RAPL on a
CPU package: whole board / package, idle included), and records the thermal zones, hwmon readings and
CPU frequency before and after timing. Outputs go to ``OUTPUT/outputs/<tag>.npz``; ``OUTPUT/result.json``
is written last (the commit point) with the bundle's id and manifest digest, the device, whether it ran
under emulation, every timing and reading, and the digest of each output file. Bring ``OUTPUT`` back to
the host and run ``laaq-bench ingest OUTPUT``.

Emulation is reported, never hidden: ``QEMU_CPU`` / ``LAAQ_EMULATED=1`` in the environment, or a
``/proc/cpuinfo`` of another architecture than the interpreter's (qemu user mode shows the host's CPU).
"""

# It runs on the device's own Python (3.8 or later): no datetime.UTC, no zip(strict=).
# ruff: noqa: UP017, B905

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time

if __package__:  # imported from the harness (ingest, tests)
    from harness.bundle.device_sensors import describe_device, emulation, energy_sensor, sensor_snapshot
else:  # run as a script inside a bundle: the file beside this one
    from device_sensors import describe_device, emulation, energy_sensor, sensor_snapshot

BUNDLE_FORMAT = "laaq-bench-bundle/1"
OUTPUT_FORMAT = "laaq-bench-output/1"
ENERGY_WINDOW_S = 1.0  # power sensors update every few to 100 ms: the energy window must be long


class BundleError(Exception):
    """The bundle or an output cannot be trusted or used; the message says which file and why."""


# ---------------------------------------------------------------------------------------- digests
def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def bundle_id(manifest: dict) -> str:
    """The bundle's identity: a digest of its manifest without the id itself (every file's digest is in it)."""
    return hashlib.sha256(canonical({k: v for k, v in manifest.items() if k != "bundle_id"})).hexdigest()[:16]


def check_files(root: str, files: dict, what: str) -> None:
    """Every listed file present with its size and sha256, else BundleError naming the first bad one."""
    for rel, info in sorted(files.items()):
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise BundleError(f"{what} is incomplete: {rel} is missing")
        size = os.path.getsize(path)
        if size != info["bytes"]:
            raise BundleError(f"{what} is truncated or altered: {rel} has {size} bytes, the manifest says "
                              f"{info['bytes']}")
        if sha256_file(path) != info["sha256"]:
            raise BundleError(f"{what} was tampered with or corrupted: {rel} does not match its sha256 in the "
                              "manifest")


def load_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise BundleError(f"{what}: {path} is missing")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise BundleError(f"{what}: {path} is truncated or not JSON ({e})") from e


def verify_bundle(root: str) -> tuple[dict, str]:
    """(manifest, sha256 of manifest.json) of a bundle whose every file checks out, else BundleError."""
    path = os.path.join(root, "manifest.json")
    manifest = load_json(path, "bundle manifest")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a {BUNDLE_FORMAT} manifest (format {manifest.get('format')!r})")
    if bundle_id(manifest) != manifest.get("bundle_id"):
        raise BundleError(f"{path} was edited after the bundle was made (its content no longer matches bundle id "
                          f"{manifest.get('bundle_id')})")
    check_files(root, manifest["files"], f"bundle {manifest['bundle_id']}")
    return manifest, sha256_file(path)


def atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be copied and shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------------------------------------ running
def open_device(manifest: dict):
    import tvm

    if manifest["target"]["backend"] != "cuda":
        tvm.get_global_func("runtime.config_threadpool")(1, int(manifest["target"]["threads"]))
        return tvm.cpu(0)
    dev, why = tvm.cuda(0), "tvm.cuda(0).exist is false"
    if not dev.exist:  # a runtime-only TVM may not have loaded its CUDA runtime library yet
        lib = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so")
        try:
            ctypes.CDLL(lib, ctypes.RTLD_GLOBAL)
            dev = tvm.cuda(0)
        except OSError as e:  # e.g. libcuda.so.1 (the driver) or libcudart.so.13 missing
            why = str(e)
    if not dev.exist:
        raise BundleError(f"this bundle is for a CUDA GPU and none is usable here ({why}): run it on the GPU "
                          "machine, with its driver and the CUDA 13 runtime on the loader path")
    return dev


def load(path: str, dev):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    try:
        return VirtualMachine(tvm.runtime.load_module(path), dev)
    except Exception as e:
        raise BundleError(f"cannot load {path} on this {platform.machine()} device ({str(e).splitlines()[0]}); "
                          "was the bundle made for another target?") from e


def run_all(vm, dev, x, batch: int):
    """Every row of ``x`` through a library compiled for ``batch`` (last batch zero-padded)."""
    import numpy as np
    import tvm

    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), dtype=chunk.dtype)])
        outs.append(vm["main"](tvm.runtime.tensor(np.ascontiguousarray(chunk), dev)).numpy()[:n])
    return np.concatenate(outs)


def median(values: list) -> float:
    s = sorted(values)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def time_calls(vm, dev, x, warmup: int, number: int, repeat: int, extra: dict) -> list:
    """Seconds per call, one figure per repeat (each the mean of ``number`` calls), after ``warmup`` calls."""
    import numpy as np
    import tvm

    arg = tvm.runtime.tensor(np.ascontiguousarray(x), dev)
    for _ in range(warmup):
        vm["main"](arg)
    res = vm.time_evaluator("main", dev, number=number, repeat=repeat, **extra)(arg)
    return [float(r) for r in res.results]


def run_variant(root: str, out: str, v: dict, manifest: dict, dev, sensor, log) -> dict:
    import numpy as np

    proto = manifest["protocol"]
    # the harness's LatencyProtocol fields; any other field would be silently ignored here, so it is refused:
    # the timing would not be the protocol stated (no settle pause needed: no PyTorch runs in this process)
    unknown = set(proto) - {"warmup", "number", "repeat", "cooldown_ms", "cooldown_every", "pin_threads"}
    if unknown or proto.get("pin_threads"):
        raise BundleError(f"the bundle's timing protocol has {sorted(unknown) or 'pin_threads'}, which this runner "
                          "cannot apply; teach harness/bundle/runner.py to, and rebuild the bundle")
    extra = {"cooldown_interval_ms": int(proto["cooldown_ms"]), "repeats_to_cooldown": int(proto["cooldown_every"])
             } if proto.get("cooldown_ms") else {}
    t0 = time.perf_counter()
    with np.load(os.path.join(root, v["inputs"]), allow_pickle=False) as z:
        x = z["eval"]
        timing = {b: z[f"time_b{b}"] for b in v["libs"]}
    large = max(int(b) for b in v["libs"])
    vms = {b: load(os.path.join(root, p), dev) for b, p in v["libs"].items()}
    log(f"[{v['tag']}] running {len(x)} inputs at batch {large} ...")
    y = run_all(vms[str(large)], dev, x, large)
    before = sensor_snapshot()
    times = {}
    for b in sorted(v["libs"], key=int):
        times[b] = time_calls(vms[b], dev, timing[b], int(proto["warmup"]), int(proto["number"]),
                              int(proto["repeat"]), extra)
        log(f"[{v['tag']}] batch {b}: median {median(times[b]) * 1e3:.4f} ms over {len(times[b])} repeats")
    energy = None
    if sensor is not None:  # the harness's window: >= 1 s of back-to-back calls at the large batch
        median_ms = median(times[str(large)]) * 1e3
        calls = max(10, math.ceil(ENERGY_WINDOW_S * 1e3 / median_ms)) if median_ms > 0 else 10
        t1 = time.perf_counter()
        joules = sensor.window(lambda: time_calls(vms[str(large)], dev, timing[str(large)], 0, calls, 1, {}))
        energy = {"joules": joules, "calls": calls, "batch": large, "seconds": time.perf_counter() - t1}
    after = sensor_snapshot()
    path = os.path.join(out, "outputs", f"{v['tag']}.npz")
    buf = io.BytesIO()
    np.savez(buf, eval=y)
    atomic_write(path, buf.getvalue())
    return {"outputs": os.path.relpath(path, out), "timings_s": times, "energy": energy, "sensors_before": before,
            "sensors_after": after, "run_s": round(time.perf_counter() - t0, 2)}


def main(argv: list | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description="Run a laaq-bench offline bundle on this device.")
    p.add_argument("--bundle", default=here, help="bundle folder (default: this script's)")
    p.add_argument("--out", default=None, help="output folder (default: BUNDLE/output)")
    p.add_argument("--variants", default="", help="comma list of variants to run (default: all)")
    p.add_argument("--check", action="store_true", help="only verify the bundle's files and say what would run")
    a = p.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    try:
        manifest, digest = verify_bundle(a.bundle)
        variants = [v for v in manifest["variants"] if not a.variants or v["name"] in a.variants.split(",")]
        log(f"bundle {manifest['bundle_id']} for {manifest['target']['name']}: {len(manifest['files'])} files "
            f"verified; variants {', '.join(v['name'] for v in variants)}")
        if a.check:
            return 0
        out = os.path.abspath(a.out or os.path.join(a.bundle, "output"))
        if os.path.exists(os.path.join(out, "result.json")):
            raise BundleError(f"{out} already holds a result; choose another --out or move it away")
        import numpy
        import tvm

        dev = open_device(manifest)
        sensor, sensor_name = energy_sensor(manifest["target"]["backend"] == "cuda")
        why = emulation()
        device = describe_device()
        if manifest["target"]["backend"] == "cuda":
            device["gpu"] = f"{dev.device_name} (sm_{str(dev.compute_version).replace('.', '')})"
        log(f"device: {device['machine']} {device.get('gpu') or device['cpu']}"
            f"{' — EMULATED: ' + why if why else ''}; energy sensor: {sensor_name}")
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        results = {v["tag"]: run_variant(a.bundle, out, v, manifest, dev, sensor, log) for v in variants}
        result = {
            "format": OUTPUT_FORMAT, "bundle_id": manifest["bundle_id"], "bundle_manifest_sha256": digest,
            "target": manifest["target"]["name"], "started": started,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device, "emulated": bool(why), "emulation": why, "energy_sensor": sensor_name,
            "tvm": tvm.__version__, "numpy": numpy.__version__, "variants": results,
            "files": {r["outputs"]: {"sha256": sha256_file(os.path.join(out, r["outputs"])),
                                     "bytes": os.path.getsize(os.path.join(out, r["outputs"]))}
                      for r in results.values()},
        }
        result["self_sha256"] = hashlib.sha256(canonical(result)).hexdigest()
        atomic_write(os.path.join(out, "result.json"), (json.dumps(result, indent=1) + "\n").encode())
        log(f"wrote {out}; bring it back to the host and run: laaq-bench ingest {out}")
        return 0
    except BundleError as e:
        print(f"runner: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
