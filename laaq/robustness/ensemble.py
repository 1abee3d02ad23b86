"""Running members on the survivors with the deployed function as judge; the resumable state file;
the transfer check's shared examples; the torch thread count beside a local artefact.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from laaq.atomic import write_atomic
from laaq.example_log import ExampleLog
from laaq.robustness.config import EvalConfig
from laaq.robustness.members import Predict, _batched, _correct, _Meter, _project, _white_box_attacks


class _Ensemble:
    """Runs members in order on the survivors; the deployed function judges every example.

    With an :class:`ExampleLog` each member's examples are recorded under ``<stage>/<member>``, or, when
    the log is replaying, taken from it instead of attacking (the offline bundle's judging on the device)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, deployed: Predict, eps: float, batch: int,
                 log: ExampleLog | None = None, stage: str = "main", meter: _Meter | None = None,
                 device: torch.device | None = None) -> None:
        self.x, self.y, self.deployed, self.eps, self.batch = x, y, deployed, eps, batch
        self.log, self.stage, self.meter, self.device = log, stage, meter or _Meter(False), device
        self.alive = _correct(deployed, x, y)
        self.x_worst = x.clone()

    def run(self, attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None, idx: np.ndarray | None = None,
            name: str = "", calls: int = 0, given: torch.Tensor | None = None) -> np.ndarray:
        """Attack images ``idx`` (default: the survivors); returns per-image correctness on those images.
        ``calls``: the member's model calls per batch at most (its progress bar). ``given``: examples already
        crafted for every image (a :class:`TransferCache`'s), judged instead of running ``attack``."""
        idx = np.flatnonzero(self.alive) if idx is None else idx
        if idx.size == 0:
            return np.zeros(0, dtype=bool)
        key = f"{self.stage}/{name}"
        if self.log is not None and self.log.replaying:
            # replay: the recorded examples; an image with none was not attacked by this member (kept as is)
            have, xa = self.log.take(key, idx)
            ok_all = np.ones(idx.size, dtype=bool)
            ok_all[have] = self._judge(idx[have], xa)
            return ok_all
        xi, yi = self.x[idx], self.y[idx]
        if given is not None:
            xa = _project(given[torch.as_tensor(idx)], xi, self.eps)
        else:
            assert attack is not None
            self.meter.start(f"{self.stage} {name} ({idx.size} images)", calls * math.ceil(idx.size / self.batch))
            try:
                xa = _project(_batched(attack, xi, yi, self.batch, self.device), xi, self.eps)
            finally:
                self.meter.close()
        if self.log is not None:
            self.log.add(key, idx, xa)
        return self._judge(idx, xa)

    def _judge(self, idx: np.ndarray, xa: torch.Tensor) -> np.ndarray:
        """The deployed function's verdict on examples ``xa`` of images ``idx``; updates survivors and x_worst."""
        if idx.size == 0:
            return np.zeros(0, dtype=bool)
        ok = _correct(self.deployed, xa, self.y[idx])
        broke = ~ok & self.alive[idx]
        self.x_worst[idx[broke]] = xa[broke]
        keep = ok & self.alive[idx]  # the not-broken survivors carry the latest attempt
        self.x_worst[idx[keep]] = xa[keep]
        self.alive[idx] &= ok
        return ok


class _State:
    """auto-attack-style resumable state: finished stages of one evaluation in one ``.npz``."""

    def __init__(self, path: Path | None, key: str) -> None:
        self.path, self.key = path, key
        self.data: dict[str, np.ndarray] = {}
        if path is not None and path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["key"]) == key:
                        self.data = {k: z[k] for k in z.files if k != "key"}
            except Exception:  # a truncated file from a killed run: start afresh, never crash on it
                self.data = {}

    def get(self, name: str) -> np.ndarray | None:
        return self.data.get(name)

    def put(self, **arrays: np.ndarray) -> None:
        self.data.update(arrays)
        if self.path is None:
            return
        buf = io.BytesIO()
        np.savez_compressed(buf, key=np.array(self.key), **self.data)
        write_atomic(self.path, buf.getvalue())


def _key(cfg: EvalConfig, x: torch.Tensor, y: torch.Tensor, tag: str) -> str:
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    h.update(x.numpy().tobytes())
    h.update(y.numpy().tobytes())
    h.update(tag.encode())
    return h.hexdigest()[:16]


class TransferCache:
    """The transfer check's adversarial examples, crafted once per source and shared by every variant.

    Why: the check crafts the preset's white-box members on the float model for the check images, and
    those examples depend on the source, the images, ε, the preset and the seed — not on the model they are
    judged on. ``bench`` with int8, int7 and LAAQ crafted them three times (~40 s each for VGG8 on 2 cores);
    with one cache per run, once. Every member attacks every check image (not only the survivors of the
    earlier members on one variant), so an image counts as broken when any member's example breaks it.
    """

    def __init__(self) -> None:
        self._store: dict[tuple, list[tuple[str, torch.Tensor]]] = {}

    def examples(self, source: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig, n_classes: int,
                 device: torch.device | None = None) -> list[tuple[str, torch.Tensor]]:
        """(member, examples of every image of ``x``) crafted on ``source`` with ``cfg``'s preset, cached.

        The source is known by its weights' content, not its identity: on a GPU each evaluation attacks its
        own copy of the float model, which must still find the examples the first one crafted."""
        h = hashlib.sha256(type(source).__name__.encode())
        for name, t in source.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
        key = (h.hexdigest(), json.dumps(cfg.preset.to_dict(), sort_keys=True), cfg.eps, cfg.seed)
        if key not in self._store:
            src = source.eval()
            self._store[key] = [(name, _project(_batched(attack, x, y, cfg.batch, device), x, cfg.eps))
                                for name, attack in _white_box_attacks(cfg.preset, src, cfg.eps, n_classes,
                                                                       cfg.seed + 2)]
        return self._store[key]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, restored after.

    Why: a local TVM artefact runs on TVM's own thread pool. When torch ops (Square's bookkeeping, the
    input conversion) run between its calls on torch's 2-thread OpenMP pool, each pool's idle workers spin
    on the cores the other needs: on 2 cores a 2.8 ms artefact call beside a 3 ms torch conv took 9–15 ms
    instead of ~6 (measured; ``OMP_WAIT_POLICY=PASSIVE`` removes it but slows the attacks by ~40 %)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
