"""Who computes the experiment's units: this process, in order (``local``), or Ray tasks (``ray``).

Why Ray: the study's grid is core-days of attacks, and the people who run it at scale have a workstation
with a GPU or a small cluster already running an engine — we use theirs rather than a scheduler of our
own. Each unit is one ``@ray.remote`` task that declares its resources (``num_cpus``, and a GPU when the
attacks run on CUDA), is retried when its worker dies (``max_retries``), and *returns* its
:class:`~laaq.experiment.store.Unit`; the driver alone writes units (``UnitStore``, atomic), so a killed
worker can leave no partial or duplicate file and a finished unit is never computed again. Without an
address, Ray starts inside this process on this machine's cores (loopback only, no dashboard) — nothing to
set up. With ``address`` (or ``RAY_ADDRESS``) it joins an existing cluster.

Both executors share one small interface: :meth:`submit` a function and its arguments (the unit's
computation, :func:`laaq.experiment.run.compute_unit`, called with ``node=`` where it ran), :meth:`next_done`
returns a finished result, :meth:`pending` counts those not yet returned. The local one computes lazily,
in submission order, so its behaviour is the in-process loop it replaced.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

EXECUTORS = ("ray", "local")
RETRIES = 3  # a unit whose worker died (killed, out of memory, node lost) runs again this many times at most


class ExecutorError(RuntimeError):
    """The executor cannot start (Ray missing, cluster unreachable, bad worker count)."""


class Executor(Protocol):
    def submit(self, fn: Callable[..., Any], *args: Any) -> None: ...

    def next_done(self) -> Any: ...

    def pending(self) -> int: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Units computed in this process, one at a time, in the order submitted (debugging, tiny tests)."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Any, ...]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._queue.append((fn, args))

    def next_done(self) -> Any:
        fn, args = self._queue.popleft()
        return fn(*args)

    def pending(self) -> int:
        return len(self._queue)

    def describe(self) -> str:
        return "local"

    def close(self) -> None:
        self._queue.clear()


def _ray_task(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args, node=...)`` on a Ray worker, torch's threads set to the CPUs the task holds."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    return fn(*args, node=f"ray:{ray.get_runtime_context().get_node_id()[:12]}")


class RayExecutor:
    """Units as Ray tasks: an embedded local Ray by default, or an existing cluster at ``address``.

    ``workers``: at most this many units in flight (default: the cluster's CPUs / ``cpus_per_task``).
    ``cpus_per_task``: CPUs each unit holds, and torch's threads inside it, so that units do not
    oversubscribe cores. ``gpus_per_task``: set for CUDA attacks (fractions share a GPU).
    """

    def __init__(self, address: str | None = None, workers: int = 0, cpus_per_task: int = 1,
                 gpus_per_task: float = 0.0) -> None:
        try:
            import ray
        except ImportError as e:  # pragma: no cover - requirements.txt pins it
            raise ExecutorError("--executor ray needs the ray package (`pip install ray`, pinned in "
                                "requirements.txt); or use --executor local") from e
        if workers < 0 or cpus_per_task < 1:
            raise ExecutorError(f"workers must be >= 0 and CPUs per task >= 1 (got {workers}, {cpus_per_task})")
        self._ray = ray
        address = address or os.environ.get("RAY_ADDRESS") or None
        self._owns = not ray.is_initialized()
        if self._owns:
            if address:
                _reachable(address)
            try:
                if address:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
                else:  # embedded: this machine's cores, loopback only, no dashboard
                    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False,
                             configure_logging=False, _node_ip_address="127.0.0.1")
            except Exception as e:  # ConnectionError, timeouts: one line, nothing computed
                raise ExecutorError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, cluster_cpus // cpus_per_task)
        self.where = address or "local Ray"
        self._remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=RETRIES,
                                  retry_exceptions=False)(_ray_task)
        self._backlog: deque[tuple[Any, ...]] = deque()
        self._running: list[Any] = []
        self._refs: dict[int, Any] = {}  # id(context) -> its object ref: each context is shipped once

    def _ref(self, obj: Any) -> Any:
        key = id(obj)
        if key not in self._refs:
            self._refs[key] = (obj, self._ray.put(obj))
        return self._refs[key][1]

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """``args`` that are large (the model's context) go to the object store once and are shared."""
        self._backlog.append((fn, *(self._ref(a) if _large(a) else a for a in args)))
        self._fill()

    def _fill(self) -> None:
        while self._backlog and len(self._running) < self.workers:
            self._running.append(self._remote.remote(*self._backlog.popleft()))

    def next_done(self) -> Any:
        done, self._running = self._ray.wait(self._running, num_returns=1)
        self._fill()
        return self._ray.get(done[0])

    def pending(self) -> int:
        return len(self._backlog) + len(self._running)

    def describe(self) -> str:
        return f"ray: {self.where}, {self.workers} at a time"

    def close(self) -> None:
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running, self._refs = [], {}
        self._backlog.clear()
        if self._owns:
            self._ray.shutdown()


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` nobody listens on within ``timeout_s`` (ray.init would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ExecutorError(f"cannot start or reach Ray at {address}: nothing answers there ({e.strerror or e}); "
                            "start the head with `ray start --head --port PORT` or drop --address") from e


def _large(obj: Any) -> bool:
    """Worth one copy in Ray's object store: anything holding a model or tensors (not a small config)."""
    return hasattr(obj, "model") or hasattr(obj, "calib")


def make_executor(name: str, address: str | None = None, workers: int = 0, gpus_per_task: float = 0.0) -> Executor:
    """The executor by name (``ray`` | ``local``); ``address``/``workers`` apply to Ray only."""
    if name == "local":
        if address:
            raise ExecutorError("--address joins a Ray cluster; it needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, workers, gpus_per_task=gpus_per_task)
    raise ExecutorError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
