"""The experiment on Ray: the same units as the in-process loop, a killed worker's unit retried, and a
two-node cluster on 127.0.0.1 whose nodes both compute units. Loopback only, every wait bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from laaq.experiment import ExperimentConfig, run_experiment
from laaq.experiment.executor import ExecutorError, RayExecutor, make_executor
from laaq.experiment.store import unit_contents

RAY = Path(sys.executable).with_name("ray")


def _cfg() -> ExperimentConfig:
    """The quick grid on one seed: 43 small units (fp32, 8 methods x 2 budgets, F1 x 2 models)."""
    return replace(ExperimentConfig.quick(), seeds=(0,))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    out = tmp_path_factory.mktemp("local")
    run_experiment(_cfg(), out, progress=False, cache_dir=cache, executor=make_executor("local"))
    return out


def test_ray_units_equal_local_units(local_run: Path, cache: Path, tmp_path: Path) -> None:
    ex = RayExecutor(workers=2)
    assert ex.workers == 2
    run_experiment(_cfg(), tmp_path, progress=False, cache_dir=cache, executor=ex)
    ray_units, local_units = unit_contents(tmp_path), unit_contents(local_run)
    assert len(ray_units) == len(local_units) > 40
    assert ray_units == local_units  # plans and outcomes identical, unit by unit
    rows = [json.loads(p.read_text())["row"] for p in (tmp_path / "units").glob("*.json") if "__match__" not in p.name]
    assert all(r["node"].startswith("ray:") and r["cpu_s"] > 0 and r["unit_s"] > 0 for r in rows)
    assert "CPU core-hours" in (tmp_path / "results.md").read_text()
    import ray

    assert not ray.is_initialized()  # the executor started its local Ray and shut it down


def _task_pids() -> list[int]:
    """Ray workers running a unit now (Ray titles such a process ``ray::_ray_task``)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, timeout=10).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "ray::_ray_task" in line]


def test_killed_worker_unit_is_retried(local_run: Path, cache: Path, tmp_path: Path) -> None:
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # SIGKILL the first worker caught computing a unit
        deadline = time.monotonic() + 120
        while not stop.is_set() and not killed and time.monotonic() < deadline:
            pids = _task_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        run_experiment(_cfg(), tmp_path, progress=False, cache_dir=cache, executor=RayExecutor(workers=2))
    finally:
        stop.set()
        t.join(timeout=10)
    assert killed, "no running unit was caught to kill"
    assert not list(tmp_path.rglob("*.tmp"))  # no partial file
    assert unit_contents(tmp_path) == unit_contents(local_run)  # every unit once, equal to the undisturbed run's
    rows = [k for k in unit_contents(local_run) if "__match__" not in k]  # the radius-matching unit is not a table row
    assert (tmp_path / "results.csv").read_text().count("\n") == len(rows) + 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str) -> None:
    subprocess.run([str(RAY), *args], check=True, capture_output=True, timeout=120)


def test_two_node_cluster_on_loopback(local_run: Path, cache: Path, tmp_path: Path) -> None:
    port = _free_port()
    try:
        _ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
             "--include-dashboard", "false", "--disable-usage-stats")
        _ray("start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
             "--disable-usage-stats")
        ex = RayExecutor(address=f"127.0.0.1:{port}")  # this test process is the driver: a third process
        assert ex.workers == 2
        run_experiment(_cfg(), tmp_path, progress=False, cache_dir=cache, executor=ex)
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)
    nodes = {json.loads(p.read_text())["row"].get("node") for p in (tmp_path / "units").glob("*.json")}
    assert len({n for n in nodes if n}) == 2, nodes  # units ran on both nodes
    assert unit_contents(tmp_path) == unit_contents(local_run)


def test_bad_executor_settings_fail_clearly() -> None:
    with pytest.raises(ExecutorError, match="needs --executor ray"):
        make_executor("local", address="127.0.0.1:1")
    with pytest.raises(ExecutorError, match="unknown executor"):
        make_executor("dask")
    with pytest.raises(ExecutorError, match="cannot start or reach Ray at 127.0.0.1:"):
        RayExecutor(address=f"127.0.0.1:{_free_port()}")  # nothing listens there
