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
from test_cli import TINY

from harness.cli import main
from harness.targets import targets_dir

FAST = [*TINY[:TINY.index("--eval-samples")], "--eval-samples", "64", "--batch-large", "8", "--repeat", "2",
        "--number", "2", "--warmup", "1", "--attack", "quick", "--quiet"]


def _targets(tmp_path: Path, extra: dict[str, str]) -> Path:
    d = tmp_path / "targets"
    d.mkdir()
    (d / "x86.toml").write_text((targets_dir() / "x86.toml").read_text())
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
