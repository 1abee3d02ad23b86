"""The one entry point for every robust figure, :func:`evaluate`, and its replay with another judge
(:func:`rejudge`, the offline bundle's judging on the device).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from laaq.example_log import ExampleLog
from laaq.memory import backward_batch
from laaq.robustness.checks import _beats, _curve_check, _eps_curve, _sanity_checks
from laaq.robustness.config import EvalConfig
from laaq.robustness.ensemble import TransferCache, _Ensemble, _key, _State, torch_threads
from laaq.robustness.members import (
    Predict,
    _AsModule,
    _expected_calls,
    _Meter,
    _Metered,
    _num_classes,
    _on,
    _square,
    _square_model,
    _white_box_attacks,
)
from laaq.robustness.result import Check, RobustResult
from laaq.robustness.stand_in import StandIn, StandInCheck, StandInMismatch, _verify_stand_in


def evaluate(white_box: torch.nn.Module | Predict, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig,
             deployed: Predict | None = None, transfer_source: torch.nn.Module | None = None,
             state_path: Path | None = None, state_tag: str = "", log: Callable[[str], None] | None = None,
             examples: ExampleLog | None = None, stand_in: StandIn | None = None, progress: bool = False,
             device: str | torch.device = "cpu", transfers: TransferCache | None = None,
             own_threads: bool = False) -> RobustResult:
    """Clean and robust accuracy of ``deployed`` on (x, y) under ``cfg``'s ensemble, with its checks.

    ``white_box`` is the differentiable stand-in the gradient attacks use (the bit-exact twin, or the
    float model); ``deployed`` returns the logits that count (the compiled artefact; default: the
    white-box model itself). ``transfer_source`` (the float model, for integer variants) adds the
    transfer check. ``state_path`` makes the evaluation resumable stage by stage. ``examples`` records
    every judged example (or, replaying, supplies them: :func:`rejudge`); it is not combined with a state file.
    ``stand_in`` answers Square's queries instead of ``deployed`` (which still judges Square's examples, and
    re-runs a sample of its queries: :class:`StandIn`). ``progress``: a bar per member (calls, ETA).
    ``device``: where the white-box attacks run (``"cuda"``: the white-box model and the transfer source are
    copied there; the deployed function, the stand-in and every verdict stay where they are).
    ``transfers``: the transfer check's source examples, shared by every evaluation given the same cache
    (they do not depend on the model judged). ``own_threads``: ``deployed`` runs on its own thread pool in
    this process (a local TVM artefact); while Square queries it, torch keeps to one thread, so that the two
    pools do not spin against each other on the same cores (:func:`torch_threads`).
    """
    dev = torch.device(device)
    wb = white_box if isinstance(white_box, torch.nn.Module) and any(True for _ in white_box.parameters()) \
        else _AsModule(white_box)
    wb = _on(wb, dev)
    transfer_source = _on(transfer_source, dev) if transfer_source is not None else None
    wb.eval()
    dep_fn: Predict = deployed if deployed is not None else wb
    dep = _AsModule(dep_fn, no_grad=True).eval()
    pre, eps, seed = cfg.preset, cfg.eps, cfg.seed
    n_classes = _num_classes(dep, x)
    if examples is not None and state_path is not None:
        raise ValueError("an evaluation that records or replays examples cannot resume from a state file")
    state = _State(state_path, _key(cfg, x, y, state_tag))
    # attack batches within the memory budget (laaq.memory): cfg.batch for small models, fewer images for large
    if len(x):
        try:
            cfg = replace(cfg, batch=backward_batch(wb, x[:1].to(dev), cfg.batch))
        except RuntimeError:  # a function without a backward pass (a replay's judge): nothing kept, any batch fits
            pass
    say = log or (lambda m: None)
    seconds: dict[str, float] = {}
    meter = _Meter(progress)
    wb = _Metered(wb, meter)

    t0 = time.perf_counter()
    ens = _Ensemble(x, y, dep, eps, cfg.batch, examples, meter=meter, device=dev)
    seconds["clean"] = round(time.perf_counter() - t0, 2)
    clean = ens.alive.copy()
    cumulative: dict[str, np.ndarray] = {}
    members = _white_box_attacks(pre, wb, eps, n_classes, seed)
    check_idx = np.arange(min(pre.check_samples, len(x)))
    for name, attack in members:
        saved = state.get(f"alive_{name}")
        if saved is not None:
            ens.alive = saved.astype(bool)
            ens.x_worst = torch.as_tensor(state.get("x_worst"))
        else:
            t0 = time.perf_counter()
            ens.run(attack, name=name, calls=_expected_calls(pre, name, n_classes))
            seconds[name] = round(time.perf_counter() - t0, 2)
            state.put(**{f"alive_{name}": ens.alive.copy(), "x_worst": ens.x_worst.numpy()})
        cumulative[name] = ens.alive.copy()
        say(f"  {name}: robust {ens.alive.mean():.3f}")
    white_alive = ens.alive.copy()

    checks: list[Check] = []
    sq_check: StandInCheck | None = None
    if pre.square_queries:
        saved = state.get("alive_square")
        sq_subset = state.get("square_subset")
        if saved is not None and sq_subset is not None:
            ens.alive, ens.x_worst = saved.astype(bool), torch.as_tensor(state.get("x_worst"))
            sq_ok_sub = sq_subset.astype(bool)
            saved_check = state.get("square_stand_in")
            if saved_check is not None:
                sq_check = StandInCheck(**{k: v for k, v in json.loads(str(saved_check)).items()
                                           if k in StandInCheck.__dataclass_fields__})
        else:
            t0 = time.perf_counter()
            queried, sample = _square_model(stand_in, dep, x, seed)
            # Square on the check subset (every clean-correct image, for the masking test) and on the
            # white-box survivors elsewhere (its contribution to the worst case), in one call
            targets = np.union1d(check_idx[clean[check_idx]], np.flatnonzero(ens.alive))
            with torch_threads(1 if own_threads and stand_in is None else torch.get_num_threads()):
                ok_targets = ens.run(_square(pre, _Metered(queried, meter), eps, seed), targets, "square",
                                     calls=_expected_calls(pre, "square", n_classes))
            sq_ok = clean.copy()
            sq_ok[targets] = ok_targets
            sq_ok_sub = sq_ok[check_idx]
            seconds["square"] = round(time.perf_counter() - t0, 2)
            extra: dict[str, np.ndarray] = {}
            if stand_in is not None and sample is not None:
                t0 = time.perf_counter()
                sq_check = _verify_stand_in(stand_in, sample)
                seconds["square_verify"] = round(time.perf_counter() - t0, 2)
                say(f"  square: {sq_check.line()}")
                if not sq_check.ok:
                    raise StandInMismatch(f"{sq_check.line()}: the stand-in does not compute the deployed "
                                          "function, so its Square search is not the artefact's; rerun with "
                                          "--square-on-device (queries the artefact itself), and report this")
                extra["square_stand_in"] = np.array(json.dumps(sq_check.to_dict()))
            state.put(alive_square=ens.alive.copy(), square_subset=sq_ok_sub, x_worst=ens.x_worst.numpy(), **extra)
        cumulative["square"] = ens.alive.copy()
        say(f"  square: robust {ens.alive.mean():.3f}")
        if cfg.checks:
            checks.append(_beats("black-box", "Square on the deployed function", sq_ok_sub, white_alive[check_idx]))

    if cfg.checks:
        t0 = time.perf_counter()
        checks.extend(_sanity_checks(cfg, wb, dep, transfer_source, x, y, check_idx, white_alive, n_classes, state,
                                     transfers or TransferCache(), examples, dev))
        seconds["checks"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        curve = _eps_curve(cfg, wb, dep, x, y, n_classes, state, examples, dev)
        seconds["eps_curve"] = round(time.perf_counter() - t0, 2)
        checks.insert(0, _curve_check(curve))
    else:
        curve = []
    return RobustResult(cfg, clean, ens.alive.copy(), cumulative, ens.x_worst, curve, checks, seconds, sq_check)


def rejudge(examples: ExampleLog, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig, deployed: Predict,
            transfer: bool) -> RobustResult:
    """The evaluation that recorded ``examples``, replayed with another judge: ``deployed`` (e.g. the
    outputs a device computed for exactly those inputs) decides every example; no attack runs.

    Same stages, same order, same statistics as :func:`evaluate`, so where ``deployed`` agrees with the
    function the examples were judged on when recorded, the result is identical. ``transfer``: the
    recording ran the transfer check (``transfer_source`` was given). Images the replay asks a member
    about but the recording never attacked are counted in ``examples.unattacked``.
    """
    replay = ExampleLog(examples.entries, replaying=True)
    out = evaluate(deployed, x, y, cfg, deployed=deployed,
                   transfer_source=_AsModule(deployed, no_grad=True) if transfer else None, examples=replay)
    examples.unattacked = replay.unattacked
    out.seconds = {}
    return out
