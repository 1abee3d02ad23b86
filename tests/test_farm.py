"""Many targets in one command (harness/farm.py): ``bench --target A --target B`` → one run folder per target,
one comparison; targets behind an RPC tracker run in parallel processes, each served a board by the tracker."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from target_files import copy_shipped
from test_cli import TINY

from harness.cli import main

FAST = [*TINY[:TINY.index("--eval-samples")], "--eval-samples", "64", "--batch-large", "8", "--repeat", "2",
        "--number", "2", "--warmup", "1", "--attack", "quick", "--quiet"]


def _targets(tmp_path: Path, extra: dict[str, str]) -> Path:
    d = tmp_path / "targets"
    d.mkdir()
    copy_shipped(d, "x86")
    for name, body in extra.items():
        (d / f"{name}.toml").write_text(f'extends = "x86"\ndescription = "{name}"\n{body}')
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_local_targets_one_command_one_comparison(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LAAQ_TARGETS_DIR", str(_targets(tmp_path, {"x86b": "threads = 1\n"})))
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["bench", "--target", "x86", "--target", "x86b", "--variants", "int8",
                                  "--results-dir", str(out), *FAST])
    assert r.exit_code == 0, r.output
    runs = sorted(p.parent.name for p in out.glob("*/metrics.csv"))
    assert len(runs) == 2 and runs[0].startswith("x86-") and runs[1].startswith("x86b-")
    rows = pd.concat(pd.read_csv(out / run / "metrics.csv") for run in runs)
    assert sorted(zip(rows.target, rows.variant, strict=True)) == [("x86", "int8"), ("x86b", "int8")]  # each once
    comparison = (out / "comparison.md").read_text()
    assert "x86b" in comparison and "| x86 " in comparison
    assert "x86: " in r.output and "x86b: " in r.output


def test_unknown_target_among_several_fails_before_work(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["bench", "--target", "x86", "--target", "pi9", "--results-dir", str(tmp_path),
                                  *FAST])
    assert r.exit_code != 0 and "pi9" in r.output and not list(tmp_path.glob("*/metrics.csv"))


@pytest.mark.slow
def test_tracker_targets_run_in_parallel(tmp_path: Path, monkeypatch) -> None:
    """A tracker on loopback with two RPC servers (this machine standing in for two boards) under one key;
    two targets reach it: their runs overlap in time (each in its own process, each served by the tracker)."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker server needs tornado")
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tp = _free_port()
    tracker = Tracker("127.0.0.1", port=tp, port_end=tp + 1, silent=True)
    servers = []
    try:
        for _ in range(2):
            sp = _free_port()
            servers.append(rpc.Server("127.0.0.1", port=sp, port_end=sp + 1, key="laaq-farm", silent=True,
                                      tracker_addr=("127.0.0.1", tracker.port)))
        deadline = time.monotonic() + 30
        while rpc.connect_tracker("127.0.0.1", tracker.port).text_summary().count("laaq-farm") < 1:
            assert time.monotonic() < deadline, "the servers never registered with the tracker"
            time.sleep(0.5)
        board = f'[device]\nkind = "tracker"\nhost = "127.0.0.1"\nport = {tracker.port}\nkey = "laaq-farm"\n'
        monkeypatch.setenv("LAAQ_TARGETS_DIR", str(_targets(tmp_path, {"boarda": board, "boardb": board})))
        out = tmp_path / "results"
        r = CliRunner().invoke(main, ["bench", "--target", "boarda", "--target", "boardb", "--variants", "int8",
                                      "--results-dir", str(out), *FAST])
        assert r.exit_code == 0, r.output + "".join(p.read_text() for p in out.glob("*.log"))
        assert r.output.count("(in parallel, ") == 2
        spans = []
        for target in ("boarda", "boardb"):
            (run,) = [p.parent for p in out.glob(f"{target}-*/metrics.csv")]
            rows = pd.read_csv(run / "metrics.csv")
            assert list(rows.variant) == ["int8"] and rows.measured_as.iloc[0] == "native"
            info = json.loads((run / "run.json").read_text())
            spans.append((dt.datetime.fromisoformat(info["started"]), dt.datetime.fromisoformat(info["finished"])))
        (a0, a1), (b0, b1) = spans
        assert a0 < b1 and b0 < a1, f"the two tracker runs did not overlap: {spans}"
    finally:
        for s in servers:
            s.terminate()
        tracker.terminate()


@pytest.mark.slow
def test_a_board_that_drops_out_fails_only_its_own_rows(tmp_path: Path, monkeypatch) -> None:
    """Two targets on two keys of one tracker; board B's server is killed once its session is open: target B
    fails (non-zero exit, named), target A's rows are kept; with B back, the re-run resumes A and measures B."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker server needs tornado")
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tp = _free_port()
    tracker = Tracker("127.0.0.1", port=tp, port_end=tp + 1, silent=True)

    def server(key: str):
        sp = _free_port()
        return rpc.Server("127.0.0.1", port=sp, port_end=sp + 1, key=key, silent=True,
                          tracker_addr=("127.0.0.1", tracker.port))

    servers = {"farm-a": server("farm-a"), "farm-b": server("farm-b")}
    try:
        deadline = time.monotonic() + 30
        while not all(k in rpc.connect_tracker("127.0.0.1", tracker.port).text_summary() for k in servers):
            assert time.monotonic() < deadline, "the servers never registered with the tracker"
            time.sleep(0.5)

        def board(key: str) -> str:
            return (f'[device]\nkind = "tracker"\nhost = "127.0.0.1"\nport = {tracker.port}\nkey = "{key}"\n'
                    "connect_timeout_s = 10.0\n")

        monkeypatch.setenv("LAAQ_TARGETS_DIR", str(_targets(tmp_path, {"boarda": board("farm-a"),
                                                                        "boardb": board("farm-b")})))
        out = tmp_path / "results"
        args = ["bench", "--target", "boarda", "--target", "boardb", "--variants", "int8,int4", "--results-dir",
                str(out), *FAST]

        import threading

        def kill_b_when_measuring() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                logs = list(out.glob("boardb-*.log"))
                if logs and "device:" in logs[0].read_text():
                    servers["farm-b"].terminate()
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_b_when_measuring, daemon=True)
        killer.start()
        r = CliRunner().invoke(main, args)
        killer.join(timeout=5)
        assert r.exit_code != 0 and "boardb: FAILED" in r.output, r.output
        (run_a,) = [p.parent for p in out.glob("boarda-*/metrics.csv")]
        assert sorted(pd.read_csv(run_a / "metrics.csv").variant) == ["int4", "int8"], r.output + "".join(
            p.read_text()[-3000:] for p in out.glob("*.log"))

        servers["farm-b"] = server("farm-b")
        deadline = time.monotonic() + 30
        while "farm-b" not in rpc.connect_tracker("127.0.0.1", tracker.port).text_summary():
            assert time.monotonic() < deadline
            time.sleep(0.5)
        r2 = CliRunner().invoke(main, args)
        assert r2.exit_code == 0, r2.output + "".join(p.read_text() for p in out.glob("*.log"))
        assert "already measured int8, int4" in (list(out.glob("boarda-*.log"))[0]).read_text()
        (run_b,) = [p.parent for p in out.glob("boardb-*/metrics.csv")]
        rows_b = pd.read_csv(run_b / "metrics.csv")
        assert sorted(rows_b.variant) == ["int4", "int8"] and (rows_b.measured_as == "native").all()
    finally:
        for s in servers.values():
            s.terminate()
        tracker.terminate()


@pytest.mark.slow
@pytest.mark.emulated
def test_farm_of_two_emulated_boards_under_one_key(tmp_path: Path, monkeypatch) -> None:
    """The issue's farm: one tracker, two emulated Pi 4s registered under one key (``[device] emulated = true``
    labels their rows emulated), two targets → both boards used at once (runs overlap), every row once."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker server needs tornado")
    from test_emulated_device import _emulator_skip_reason
    from tvm.rpc.tracker import Tracker

    from harness.devices.emulated import EmulatedBoard, EmulatedRPCServer

    reason = _emulator_skip_reason()
    if reason:
        pytest.skip(reason)
    tp = _free_port()
    tracker = Tracker("127.0.0.1", port=tp, port_end=tp + 1, silent=True)
    boards = [EmulatedRPCServer(EmulatedBoard(qemu_cpu="cortex-a72"), tracker=("127.0.0.1", tracker.port),
                                key="farm-emu", progress=False) for _ in range(2)]
    try:
        for b in boards:
            b.__enter__()
        d = tmp_path / "targets"
        d.mkdir()
        for name in ("rpi4", "x86"):
            copy_shipped(d, name)
        for name in ("pia", "pib"):
            (d / f"{name}.toml").write_text(
                f'extends = "rpi4"\ndescription = "{name}"\n[device]\nkind = "tracker"\nhost = "127.0.0.1"\n'
                f'port = {tracker.port}\nkey = "farm-emu"\nemulated = true\n')
        monkeypatch.setenv("LAAQ_TARGETS_DIR", str(d))
        out = tmp_path / "results"
        r = CliRunner().invoke(main, ["bench", "--target", "pia", "--target", "pib", "--variants", "int8",
                                      "--results-dir", str(out), *FAST])
        assert r.exit_code == 0, r.output + "".join(p.read_text()[-3000:] for p in out.glob("*.log"))
        spans = []
        for target in ("pia", "pib"):
            (run,) = [p.parent for p in out.glob(f"{target}-*/metrics.csv")]
            rows = pd.read_csv(run / "metrics.csv")
            assert list(rows.variant) == ["int8"] and rows.measured_as.iloc[0] == "emulated"
            info = json.loads((run / "run.json").read_text())
            spans.append((dt.datetime.fromisoformat(info["started"]), dt.datetime.fromisoformat(info["finished"])))
        (a0, a1), (b0, b1) = spans
        assert a0 < b1 and b0 < a1, f"the two boards' runs did not overlap: {spans}"
    finally:
        for b in boards:
            b.__exit__(None, None, None)
        tracker.terminate()
