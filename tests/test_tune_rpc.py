"""MetaSchedule tuning of a cross target through the RPC runner, on the emulated Raspberry Pi.

Candidates are cross-compiled here (aarch64 .so) and measured over TVM RPC on an emulated board that
``tune()`` starts and stops itself; the database then builds an artefact that runs on the (emulated)
board bit-exact with the integer reference. Same skip rule as the other emulated-board tests.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import tvm

from harness import tuning as tune
from harness.compile import compile_module
from harness.devices import open_device
from harness.lower import lower_integer
from harness.profile import resolve
from harness.targets import load_target
from harness.tuning import rpc as tune_rpc
from harness.tuning import tuner as tune_module
from laaq.quant.integer import run_integer
from laaq.quant.plan import QuantPlan
from laaq.quant.quantizers import quantize_graph, quantize_input


def emulated(f):
    f = pytest.mark.emulated(f)
    return pytest.mark.skipif(
        platform.system() != "Linux" or os.geteuid() != 0 or bool(os.environ.get("LAAQ_SKIP_EMULATED")),
        reason="the emulated board needs Linux and root (qemu-user + chroot)")(f)


ARM = load_target("arm")


def _records(work: Path) -> list[list[float] | None]:
    """run_secs of every tuning record in the JSON database (None: the candidate failed)."""
    lines = (work / "database_tuning_record.json").read_text().splitlines()
    return [json.loads(line)[1][1] for line in lines if line.strip()]



def _remote(board):
    """The profile of an x86 target reached over RPC, marked cross as if its kernels ran on a board
    (so that candidates are measured through the RPC runner, not the local one)."""
    from dataclasses import replace

    return replace(resolve(board), cross=True, host_runs=False)

@emulated
def test_cross_target_tuned_on_emulated_board(tiny_model, digits, private_cache: Path, tmp_path: Path) -> None:
    assert ARM.emulated and resolve(ARM).cross
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), digits.x_train[:64])
    mod = lower_integer(qg, 1)
    key = tune.default_key("tinycnn", digits.input_shape, 1, "int8")

    # one kernel (the second conv), a handful of random candidates, each measured on the emulated board
    logs: list[str] = []
    rep = tune.tune(mod, ARM, key, trials=4, progress=True, log=logs.append, op_names=("conv2d1",), quick=True)
    work = Path(rep.work_dir)
    assert rep.tuned, rep.note
    assert work.is_relative_to(private_cache / "tuning" / "arm-emulated")  # apart from real-board records
    runs = _records(work)
    measured = [r for r in runs if r is not None and all(0 < s < 1e9 for s in r)]
    assert measured, f"no candidate was measured on the board: {runs}"
    meta = json.loads((work / "tuned.json").read_text())
    assert meta["measured"] == tune_rpc.EMULATED_NOTE and "emulated" in meta["runner"]
    assert meta["trials"] == 4 and any("conv2d1" in t for t in meta["tasks"])
    assert any(tune_rpc.EMULATED_NOTE in m for m in logs), logs
    assert tune_rpc.EMULATED_NOTE in rep.note

    # second call: the kernel is in the database → nothing tuned, no board started
    rep2 = tune.tune(mod, ARM, key, trials=4, progress=False, op_names=("conv2d1",), quick=True)
    assert not rep2.tuned and rep2.trials == 0
    applied = tune.apply_database(mod, ARM, key)
    scheduled = [gv.name_hint for gv, f in applied.functions.items()
                 if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled")]
    assert any("conv2d1" in s for s in scheduled)

    # the artefact built with the database (cross-compiled) runs on the emulated board bit-exact
    art = compile_module(mod, ARM, tmp_path / "tuned-int8-b1.so", "int8", 1, tuning_key=key)
    assert open(art.path, "rb").read(20)[18] == 183, "aarch64 ELF expected"
    x = quantize_input(digits.x_test[:1]).numpy()
    with open_device(ARM, progress=False) as session:
        assert session.measured_as == "emulated"
        out = session.load(art.path).run(x)
    assert np.array_equal(out, run_integer(qg, x))


def test_cross_target_without_device_is_not_tuned(tiny_model, digits) -> None:
    """A cross target whose device is `local` has nowhere to measure: a note, no trials, no error."""
    from dataclasses import replace

    local_arm = replace(ARM, device=replace(ARM.device, kind="local"))
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), digits.x_train[:64])
    rep = tune.tune(lower_integer(qg, 1), local_arm, "no-device", trials=2, progress=False,
                    op_names=("conv2d1",), quick=True)
    assert not rep.tuned and "not tuned" in rep.note and "--rpc" in rep.note


@emulated
def test_emulated_board_torn_down_when_tuning_fails(tiny_model, digits, monkeypatch) -> None:
    import harness.devices.emulated as emu

    started: list = []
    real_enter = emu.EmulatedRPCServer.__enter__

    def enter(self):
        started.append(self)
        return real_enter(self)

    def boom(*_a, **_k):
        assert started and started[0].alive, "the board runs while tuning"
        raise RuntimeError("tuning failed")

    monkeypatch.setattr(emu.EmulatedRPCServer, "__enter__", enter)
    monkeypatch.setattr(tune_module, "_tune_tasks", boom)
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), digits.x_train[:64])
    with pytest.raises(RuntimeError, match="tuning failed"):
        tune.tune(lower_integer(qg, 1), ARM, "fails", trials=2, progress=False, op_names=("conv2d1",), quick=True)
    (server,) = started
    assert not server.alive
    assert server.pids and not [pid for pid in server.pids if _running(pid)], "server processes left behind"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_real_board_path_through_a_tracker(tiny_model, digits, monkeypatch) -> None:
    """The tracker route a real Pi takes (`--rpc-tracker --rpc-key`), with this machine as the "board":
    an in-process tracker and a local RPC server registered under a key. A key nobody serves costs one
    bounded wait and a note."""
    import socket
    import time
    from dataclasses import replace

    pytest.importorskip("tornado", reason="TVM's RPC tracker server needs tornado (not a project dependency)")
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), digits.x_train[:64])
    mod = lower_integer(qg, 1)
    x86 = load_target("x86")
    tp, sp = free_port(), free_port()
    tracker = Tracker("127.0.0.1", port=tp, port_end=tp + 1, silent=True)
    server = rpc.Server("127.0.0.1", port=sp, port_end=sp + 1, tracker_addr=("127.0.0.1", tracker.port),
                        key="laaq-test", silent=True)
    try:
        deadline = time.monotonic() + 30
        while "laaq-test" not in rpc.connect_tracker("127.0.0.1", tracker.port).text_summary():
            assert time.monotonic() < deadline, "the server never registered with the tracker"
            time.sleep(0.5)
        board = x86.with_device(kind="tracker", host="127.0.0.1", port=tracker.port, key="laaq-test")
        rep = tune.tune(mod, _remote(board), "tracker", trials=2, progress=False, op_names=("conv2d1",), quick=True)
        assert rep.tuned, rep.note
        meta = json.loads((Path(rep.work_dir) / "tuned.json").read_text())
        assert meta["measured"] == f"native (tracker 127.0.0.1:{tracker.port} key laaq-test)"
        assert [r for r in _records(Path(rep.work_dir)) if r is not None and all(0 < s < 1e9 for s in r)]

        nobody = replace(board, device=replace(board.device, key="nobody", connect_timeout_s=2.0))
        rep2 = tune.tune(mod, _remote(nobody), "nobody", trials=2, progress=False, op_names=("conv2d1",), quick=True)
        assert not rep2.tuned and "not tuned" in rep2.note and "'nobody'" in rep2.note
    finally:
        server.terminate()
        tracker.terminate()


def test_tracker_summary_is_read_on_its_own_connection(monkeypatch) -> None:
    """A key nobody serves: the timed-out ``request`` stays parked in ``recv`` on its connection, so the
    summary for the message must travel on another one (sent on the same socket, its answer could go to
    the parked thread and the caller would wait forever — CI once hung here)."""
    import threading

    from harness.devices import rpc as dev_rpc
    from harness.devices.base import DeviceError

    release = threading.Event()
    sessions: list = []

    class Session:
        def __init__(self) -> None:
            self.calls: list[str] = []
            sessions.append(self)

        def request(self, key, priority=1, session_timeout=0):  # noqa: ANN001, ANN202 - TVM's signature
            self.calls.append("request")
            release.wait(10)  # no free server: parked until the test ends

        def text_summary(self) -> str:
            self.calls.append("summary")
            if "request" in self.calls:
                release.wait(10)  # what the real tracker socket would do: the answer went to the other thread
            return "key nobody: no server"

    monkeypatch.setattr(dev_rpc, "_probe", lambda *a: None)
    monkeypatch.setattr(dev_rpc.rpc, "connect_tracker", lambda host, port: Session())
    try:
        with pytest.raises(DeviceError, match="(?s)no free RPC server with key 'nobody'.*key nobody: no server"):
            dev_rpc.tracker_request("127.0.0.1", 9, "nobody", 10.0, wait_s=0.5)
    finally:
        release.set()
    assert [s.calls for s in sessions] == [["request"], ["summary"]]


def test_busy_direct_server_is_a_bounded_wait(tiny_model, digits, monkeypatch) -> None:
    """The `--rpc host:port` route (the emulated test above measures through the same direct session
    code): a server busy with another client's session — the bench's own, for a single board — costs
    one bounded wait and a note, not a hang."""
    import socket

    from tvm import rpc

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    graph = tiny_model.to_graph()
    qg = quantize_graph(graph, QuantPlan.uniform([n.name for n in graph.weighted()], 8), digits.x_train[:64])
    server = rpc.Server("127.0.0.1", port=port, port_end=port + 1, silent=True)
    try:
        board = load_target("x86").with_device(kind="rpc", host="127.0.0.1", port=server.port, connect_timeout_s=2.0)
        holder = rpc.connect("127.0.0.1", server.port, session_timeout=60)
        rep = tune.tune(lower_integer(qg, 1), _remote(board), "busy", trials=2, progress=False, op_names=("conv2d1",),
                        quick=True)
        assert not rep.tuned and "not tuned" in rep.note and "one session at a time" in rep.note, rep.note
        del holder
    finally:
        server.terminate()
