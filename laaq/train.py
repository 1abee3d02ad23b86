"""Plain and PGD adversarial training, with a checkpoint cache keyed by what determines the model.

The cache key hashes (data content, architecture, every training hyper-parameter, seed): change any
of them and a new model is trained; change none and the cached weights load in milliseconds.
Checkpoints are loaded with ``weights_only=True`` — a checkpoint can never execute code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from laaq.atomic import write_atomic
from laaq.attacks import PGDConfig, pgd
from laaq.cache import cache_root
from laaq.data import Split
from laaq.models import build_model
from laaq.normalize import normalized
from laaq.usermodel import ModelSource, check_model, load_weights


class CheckpointError(RuntimeError):
    """A checkpoint that is corrupt or belongs to another model."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (apart from the data content)."""

    arch: str = "smallcnn"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    adversarial: bool = True
    pgd: PGDConfig = field(default_factory=lambda: PGDConfig(eps=0.3, step_size=0.05, steps=10))
    # ε (and the PGD step) ramp linearly from 0 over this fraction of training: PGD-AT at MNIST's
    # ε = 0.3 from random weights otherwise often stalls at chance accuracy (measured: 19 % clean).
    eps_warmup: float = 0.3
    seed: int = 0
    # a user's model file (``--model``): its content digest, so that editing the file retrains ("" = built-in)
    model_digest: str = ""

    def key(self, data_digest: str) -> str:
        d = asdict(self)
        if not d["model_digest"]:  # absent for built-in models: their keys (and cached checkpoints) unchanged
            d.pop("model_digest")
        body = json.dumps({"data": data_digest, **d}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return cache_root()


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / max(len(x), 1)


def _fit(model: torch.nn.Module, data: Split, cfg: TrainConfig, progress: bool) -> None:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(data.x_train)
    steps = cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    kind = "PGD-AT" if cfg.adversarial else "plain"
    bar = tqdm(total=steps, desc=f"train {cfg.arch} ({kind})", disable=not progress, unit="batch")
    step = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            x, y = data.x_train[idx], data.y_train[idx]
            if cfg.adversarial:
                ramp = min(1.0, (step + 1) / max(1.0, cfg.eps_warmup * steps))
                atk = replace(cfg.pgd, eps=cfg.pgd.eps * ramp, step_size=cfg.pgd.step_size * ramp)
                model.eval()  # attack the current weights without touching BN statistics
                x = pgd(model, x, y, atk, generator=gen)
            step += 1
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()


def _atomic_save(obj: object, path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _one_line(e: Exception, limit: int = 240) -> str:
    """An exception's text on one line (torch's messages span several), cut to ``limit`` characters."""
    text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_checkpoint(path: Path, model: torch.nn.Module, expect_key: str | None = None) -> None:
    """Load weights safely; a corrupt file or another model's checkpoint raises CheckpointError."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {_one_line(e)}); "
                              "delete it to retrain") from e
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise CheckpointError(f"checkpoint {path} has no 'state_dict', so it is not a laaq-bench checkpoint; "
                              "delete it to retrain")
    if expect_key is not None and blob.get("key") != expect_key:
        raise CheckpointError(f"checkpoint {path} was trained for key {blob.get('key')}, expected {expect_key} "
                              "(another data set or training configuration); delete it to retrain")
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit architecture {type(model).__name__} "
                              f"({_one_line(e)}); delete it to retrain") from e
    for name, t in blob["state_dict"].items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"checkpoint {path} holds NaN/inf values in {name} (training diverged or the file "
                                  "was damaged); delete it to retrain, with a lower --lr if it diverged")
    model.eval()


def train_or_load(data: Split, cfg: TrainConfig, cache_dir: Path | None = None,
                  progress: bool = True, build: Callable[[], torch.nn.Module] | None = None
                  ) -> tuple[torch.nn.Module, Path, bool]:
    """Trained model for (data, cfg), from the cache when present; returns (model, path, was_cached).

    ``build`` makes the untrained model (a user's factory); default: the built-in ``cfg.arch``."""
    key = cfg.key(data.digest())
    path = (cache_dir or default_cache_dir()) / "checkpoints" / f"{data.name}-{cfg.arch}-{key}.pt"
    torch.manual_seed(cfg.seed)  # the initial weights are part of what the seed fixes, whatever ran before
    model = build() if build is not None else build_model(cfg.arch, data.input_shape, data.num_classes)
    model = normalized(model, data.normalization)  # the data's normalization is the model's first layer
    if path.exists():
        load_checkpoint(path, model, expect_key=key)
        return model, path, True
    _fit(model, data, cfg, progress)
    _atomic_save({"key": key, "arch": cfg.arch, "config": json.dumps(asdict(cfg)),
                  "state_dict": model.state_dict()}, path)
    return model, path, False


def obtain_model(data: Split, cfg: TrainConfig, source: ModelSource | None = None, cache_dir: Path | None = None,
                 progress: bool = True) -> tuple[torch.nn.Module, Path, bool]:
    """The run's model: built-in (``cfg.arch``) or a user's (``source``), trained or loaded.

    A user's model is checked before anything costly: it builds, accepts the data's input shape, returns
    ``[N, classes]``, its weights (if given) fit and are finite, and the importer translates every op
    (:class:`laaq.importer.ModelImportError` otherwise) — so an unsupported op never costs a training run.
    Given weights are used as they are (``was_cached`` True, the path is the weights file); without them the
    model is PGD-AT trained with the usual recipe and cached under a key that includes the file's digest.
    """
    if source is None:
        return train_or_load(data, cfg, cache_dir, progress)
    from laaq.importer import model_graph

    def build() -> torch.nn.Module:
        return source.build(data.input_shape, data.num_classes)

    torch.manual_seed(cfg.seed)
    model = build()
    what = f"--model {source.file}:{source.factory}"
    check_model(model, data.input_shape, data.num_classes, what)
    if source.weights:
        load_weights(model, source.weights)  # the bare model's state dict, before its normalization is put in front
    model = normalized(model, data.normalization)
    model_graph(model, data.input_shape, data.num_classes)
    if source.weights:
        return model, Path(source.weights), True
    cfg = replace(cfg, arch=source.arch, model_digest=source.digest())
    return train_or_load(data, cfg, cache_dir, progress, build=build)
