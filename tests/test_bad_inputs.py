"""The bad-input matrix, through the command line a lab actually runs.

Each case checks the three promises of the hardening issue: the run stops with a non-zero exit and
exactly one ``Error:`` line that names the cause and the remedy (no traceback), and nothing written
before is lost or left half-written.

Cases already covered elsewhere are not repeated here:

* unknown target — ``test_cli.test_unknown_target_is_a_clear_error``, ``test_targets``;
* malformed target files at library level — ``test_targets.test_malformed_files_name_file_and_key``;
* corrupt / mismatched / NaN checkpoints at library level — ``test_train``;
* missing data directory — ``test_cli.test_missing_data_dir_says_what_it_expected``, ``test_data``;
* a device dying mid-run — ``test_emulated_device.test_killed_board_fails_fast_and_leaves_nothing``;
* a failed atomic write at library level — ``test_results``.
"""

from __future__ import annotations

import errno
import os
import pickle
import platform
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from harness.cli import main, train_config
from laaq.data import load_digits
from laaq.models import build_model

# A model that trains in about a second: these tests are about failures, not accuracy.
MODEL = ["--dataset", "digits", "--arch", "tinycnn", "--epochs", "1", "--plain", "--lr", "0.01", "--eps", "0.1"]
BENCH = [*MODEL, "--variants", "fp32", "--eval-samples", "40", "--batch-large", "8", "--repeat", "1", "--number", "1",
         "--warmup", "0", "--attack", "quick", "--quiet"]
BOARD = 'description = "test board"\nthreads = 1\n'


def error_line(r: Result) -> str:
    """The single ``Error:`` line of a handled failure; fails the test on a traceback or a zero exit."""
    assert r.exit_code == 1, f"expected exit 1, got {r.exit_code}:\n{r.output}"
    assert isinstance(r.exception, SystemExit), f"unhandled {type(r.exception).__name__}: {r.exception}\n{r.output}"
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.output
    assert "Traceback" not in r.output, r.output
    return errors[0]


def targets_dir(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "targets"
    d.mkdir(exist_ok=True)
    for name, body in files.items():
        (d / f"{name}.toml").write_text(body)
    return d


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (artefacts aside) with its bytes, to prove nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "artefacts" not in p.parts}


def no_temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


# --- target files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, key", [
    (BOARD.replace("threads = 1", 'threads = "two"') + '[tvm]\nkind = "llvm"\n', "'threads'"),
    (BOARD + '[tvm]\nkind = "llvm"\n[device]\nkind = "rpc"\nprot = 9090\n', "prot"),
    (BOARD + '[tvm\nkind = "llvm"\n', "line 3"),
])
def test_malformed_target_file_names_file_and_key(tmp_path: Path, body: str, key: str) -> None:
    d = targets_dir(tmp_path, board=body)
    r = CliRunner().invoke(main, ["bench", "--target", "board", "--results-dir", str(tmp_path / "res"), *BENCH],
                           env={"LAAQ_TARGETS_DIR": str(d)})
    line = error_line(r)
    assert "TargetError" in line and str(d / "board.toml") in line and key in line
    assert not (tmp_path / "res").exists(), "a bad target must fail before anything is written"


# --- checkpoints ---------------------------------------------------------------------------------------


def _checkpoint_path(cache: Path) -> tuple[Path, str]:
    """Where `laaq-bench train MODEL...` keeps its checkpoint, and the key it expects inside."""
    cfg, _ = train_config("digits", "tinycnn", 1, 0.01, True, 0.1, 0)
    key = cfg.key(load_digits(0).digest())
    return cache / "checkpoints" / f"digits-tinycnn-{key}.pt", key


def _write_checkpoint(path: Path, case: str, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if case == "corrupt":
        path.write_bytes(b"PK\x03\x04 this is not a checkpoint")
        return
    tiny = build_model("tinycnn", (1, 8, 8), 10).state_dict()
    if case == "other-key":
        blob = {"key": "0123456789abcdef", "state_dict": tiny}
    elif case == "other-arch":
        blob = {"key": key, "state_dict": build_model("smallcnn", (1, 28, 28), 10).state_dict()}
    else:  # "inf-weights"
        tiny["conv2.weight"][0, 0, 0, 0] = float("inf")
        blob = {"key": key, "state_dict": tiny}
    torch.save(blob, path)


@pytest.mark.parametrize("case, cause", [
    ("corrupt", "corrupt or unreadable"),
    ("other-key", "was trained for key 0123456789abcdef"),
    ("other-arch", "does not fit architecture"),
    ("inf-weights", "NaN/inf values in conv2.weight"),
])
def test_bad_checkpoint_is_reported_and_kept(tmp_path: Path, case: str, cause: str) -> None:
    cache = tmp_path / "cache"
    path, key = _checkpoint_path(cache)
    _write_checkpoint(path, case, key)
    before = path.read_bytes()
    r = CliRunner().invoke(main, ["train", *MODEL], env={"LAAQ_CACHE": str(cache)})
    line = error_line(r)
    assert "CheckpointError" in line and str(path) in line and cause in line
    assert "delete it to retrain" in line, "the remedy must be on the line"
    assert path.read_bytes() == before, "the tool must not silently overwrite or delete a checkpoint"


# --- data ----------------------------------------------------------------------------------------------


def test_corrupt_data_dir_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(root / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)
    (root / "test_batch").write_bytes(b"\x80\x04truncated")
    r = CliRunner().invoke(main, ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1"])
    line = error_line(r)
    assert "DataError" in line and str(root / "test_batch") in line
    assert "cifar-10-python.tar.gz" in line and "--data-dir" in line


# --- toolchain, artefacts, devices ---------------------------------------------------------------------


def test_missing_cross_compiler(tmp_path: Path) -> None:
    d = targets_dir(tmp_path, nocc=BOARD + 'cross_compiler = "does-not-exist-g++"\n[tvm]\nkind = "llvm"\n')
    res = tmp_path / "res"
    r = CliRunner().invoke(main, ["bench", "--target", "nocc", "--results-dir", str(res), *BENCH],
                           env={"LAAQ_TARGETS_DIR": str(d)})
    line = error_line(r)
    assert "CompileError" in line and "'does-not-exist-g++'" in line and "not on PATH" in line and "install" in line
    assert not list(res.rglob("metrics.csv")), "no row may be recorded for a variant that was never built"
    assert not list(res.rglob("*.so")) and not no_temp_files(res)


def test_wrong_architecture_artefact(tmp_path: Path) -> None:
    """An aarch64 library loaded on an x86-64 host: the error names both architectures."""
    from harness.compile import compile_module
    from harness.devices import DeviceError
    from harness.devices.local import LocalSession
    from harness.lower import lower_float
    from harness.targets import load_target

    if platform.machine() != "x86_64":
        pytest.skip(f"needs an x86_64 host to build a foreign (aarch64) library; this is {platform.machine()}")
    arm = load_target("rpi4")
    if shutil.which(arm.cross_compiler) is None:
        pytest.skip(f"{arm.cross_compiler} not installed (Debian: apt-get install g++-aarch64-linux-gnu)")
    model = build_model("tinycnn", (1, 8, 8), 10).eval()
    art = compile_module(lower_float(model, (1, 8, 8), 1), arm, tmp_path / "arm.so", "fp32", 1)
    with pytest.raises(DeviceError) as e, LocalSession(threads=1) as s:
        s.load(art.path)
    msg = str(e.value)
    assert "\n" not in msg and "built for aarch64" in msg and "x86_64" in msg and "rpc" in msg


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def test_device_unreachable(tmp_path: Path) -> None:
    port = _closed_port()
    d = targets_dir(tmp_path, board=BOARD + f'[tvm]\nkind = "llvm"\n[device]\nkind = "rpc"\nhost = "127.0.0.1"\n'
                                            f"port = {port}\nconnect_timeout_s = 5.0\n")
    res = tmp_path / "res"
    r = CliRunner().invoke(main, ["bench", "--target", "board", "--results-dir", str(res), *BENCH],
                           env={"LAAQ_TARGETS_DIR": str(d)})
    line = error_line(r)
    assert "DeviceError" in line and f"127.0.0.1:{port}" in line and "unreachable" in line
    assert "is the server running" in line
    assert not list(res.rglob("metrics.csv")) and not no_temp_files(res)


# --- results -------------------------------------------------------------------------------------------


def test_disk_full_keeps_finished_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while recording int8 leaves the fp32 results of the same run byte-for-byte intact."""
    res = tmp_path / "res"
    args = ["bench", "--target", "x86", "--results-dir", str(res), "--run-id", "run", *BENCH]
    first = CliRunner().invoke(main, [*args, "--variants", "fp32"])
    assert first.exit_code == 0, first.output
    folder = res / "run"
    before = snapshot(folder)
    assert "metrics.csv" in before and "layers.csv" in before

    real_replace = os.replace

    def full_disk(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name.endswith(".csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    r = CliRunner().invoke(main, [*args, "--variants", "fp32,int8"])
    monkeypatch.undo()
    line = error_line(r)
    assert "ResultsError" in line and "No space left on device" in line and "intact" in line
    assert "re-run" in line.lower()
    after = snapshot(folder)
    for name in ("metrics.csv", "layers.csv", "report.md", "report.html"):
        assert after[name] == before[name], f"{name} changed"
    assert not no_temp_files(folder)


@pytest.mark.parametrize(("args", "message"), [
    (["--eps", "0"], "eps must be > 0"),
    (["--eps", "-0.1"], "eps must be > 0"),
    (["--eps", "1.5"], "outside the data range [0, 1]"),
    (["--square-queries", "0"], "query budget must be >= 1"),
])
def test_bad_attack_settings_stop_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    base = [a for a in BENCH if a not in ("0.1",)]  # drop MODEL's eps value; the case sets its own
    base.remove("--eps")
    r = CliRunner().invoke(main, ["bench", "--target", "x86", *base, *args, "--results-dir", str(tmp_path / "res")])
    line = error_line(r)
    assert "AttackError" in line and message in line, line
    assert not (tmp_path / "res").exists()  # nothing trained, nothing written


def test_unknown_attack_preset_is_refused(tmp_path: Path) -> None:
    for cmd, choices in ((["bench", "--target", "x86"], "'quick', 'standard', 'thorough'"),
                         (["experiment", "--out", str(tmp_path / "exp")], "'quick', 'apgd', 'standard', 'thorough'")):
        r = CliRunner().invoke(main, [*cmd, "--attack", "strongest"])
        assert r.exit_code == 2 and f"'strongest' is not one of {choices}" in r.output, r.output
    assert not (tmp_path / "exp").exists()


# --- found before any work (the edges issue): one line, nothing trained, nothing written -----------------


def _nothing_done(tmp_path: Path) -> None:
    assert not (tmp_path / "res").exists(), sorted((tmp_path / "res").rglob("*"))
    assert not list((tmp_path / "cache").rglob("*.pt")), "nothing may be trained before the input is checked"


@pytest.mark.parametrize(("extra", "message"), [
    (["--eval-samples", "-5"], "--eval-samples must be >= 0"),
    (["--variants", "int8,int9"], "unknown variant 'int9'"),
    (["--variants", "laaq,int9"], "unknown variant 'int9'"),
    (["--batch-large", "0"], "--batch-large must be >= 1"),
])
def test_bad_bench_arguments_fail_before_training(tmp_path: Path, extra: list[str], message: str) -> None:
    args = list(BENCH)
    if "--variants" in extra:
        i = args.index("--variants")
        del args[i:i + 2]
    r = CliRunner().invoke(main, ["bench", "--target", "x86", *args, *extra, "--results-dir", str(tmp_path / "res")],
                           env={"LAAQ_CACHE": str(tmp_path / "cache")})
    assert message in error_line(r)
    _nothing_done(tmp_path)


def test_malformed_plan_file_is_named_before_training(tmp_path: Path) -> None:
    plan = tmp_path / "my_plan.json"
    plan.write_text('{"layers": {"conv1": {"bits": "eight"}}')  # truncated JSON
    r = CliRunner().invoke(main, ["bench", "--target", "x86", *BENCH, "--plan", str(plan),
                                  "--results-dir", str(tmp_path / "res")], env={"LAAQ_CACHE": str(tmp_path / "cache")})
    line = error_line(r)
    assert f"plan file {plan}" in line and "not a valid quantization plan" in line
    _nothing_done(tmp_path)


def test_missing_cross_compiler_fails_before_training(tmp_path: Path) -> None:
    d = targets_dir(tmp_path, nocc=BOARD + 'cross_compiler = "does-not-exist-g++"\n[tvm]\nkind = "llvm"\n')
    r = CliRunner().invoke(main, ["bench", "--target", "nocc", "--results-dir", str(tmp_path / "res"), *BENCH],
                           env={"LAAQ_TARGETS_DIR": str(d), "LAAQ_CACHE": str(tmp_path / "cache")})
    assert "does-not-exist-g++" in error_line(r)
    _nothing_done(tmp_path)


@pytest.mark.parametrize("command", ["train", "search"])
def test_eps_above_the_pixel_range_trains_nothing(tmp_path: Path, command: str) -> None:
    args = [a if a != "0.1" else "5" for a in MODEL] + (["--out", str(tmp_path / "plan.json")] if command == "search"
                                                      else [])
    r = CliRunner().invoke(main, [command, *args], env={"LAAQ_CACHE": str(tmp_path / "cache")})
    assert "outside the data range [0, 1]" in error_line(r)
    _nothing_done(tmp_path)


def test_experiment_with_a_wrong_data_dir_leaves_no_state(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    r = CliRunner().invoke(main, ["experiment", "--data-dir", str(tmp_path / "no-cifar"), "--out", str(out),
                                  "--executor", "local"], env={"LAAQ_CACHE": str(tmp_path / "cache")})
    assert "DataError" in error_line(r)
    assert not (out / "state.json").exists(), "a wrong --data-dir must not leave a state the corrected run refuses"


def test_rpc_tuning_argument_that_is_not_a_tensor_is_named() -> None:
    """``--trials N`` on an RPC target: a kernel argument the remote filler cannot make is a one-line
    ValueError naming it (it reached a bare NotImplementedError before)."""
    import tvm

    from harness.tuning.rpc import alloc_arguments

    class NoFill:
        def get_function(self, name: str):  # noqa: ANN201 - a runtime-only board has no random filler
            raise AttributeError(name)

    args = alloc_arguments(NoFill(), tvm.cpu(0), [["TENSOR", "int8", [2, 3]]], 1)
    assert args[0][0].numpy().shape == (2, 3)
    with pytest.raises(ValueError, match=r"\['SCALAR', 'int32'\] is not a tensor.*--no-tune"):
        alloc_arguments(NoFill(), tvm.cpu(0), [["SCALAR", "int32"]], 1)
