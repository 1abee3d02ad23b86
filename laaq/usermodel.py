"""A person's own model: ``--model path/to/file.py:factory`` and ``--weights state_dict.pt``.

Why its own module: everything that can be wrong with someone else's file must be said in one line
*before* any training, compiling or writing — the file or factory missing, a factory that raises or
returns something else than an ``nn.Module``, a model that rejects the data set's input shape or does
not return ``[N, classes]``, weights whose names or shapes do not match, weights with NaN/Inf. Each is a
:class:`ModelError` (a ``ValueError``: the CLI prints it as one line and exits non-zero).

The factory is called with the keyword arguments it accepts among ``in_channels``, ``num_classes`` and
``image_size`` (the data set's), so one file serves MNIST and CIFAR-10; a factory without parameters is
called bare. The file's SHA-256 is part of the checkpoint key: editing the model retrains it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class ModelError(ValueError):
    """A user-supplied model, factory or weights file that cannot be used (one line: cause and remedy)."""


def _one_line(e: BaseException, limit: int = 240) -> str:
    text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``file``'s function ``factory``, and optionally a weights file."""

    file: str
    factory: str
    weights: str = ""

    @classmethod
    def parse(cls, spec: str, weights: str = "") -> ModelSource:
        """``path/to/file.py:factory`` (checked: the file exists and is a .py file; the weights file exists)."""
        path, sep, factory = spec.rpartition(":")
        if not sep or not path or not factory.isidentifier():
            raise ModelError(f"--model {spec!r}: expected path/to/file.py:factory (a function returning an nn.Module)")
        if not Path(path).is_file():
            raise ModelError(f"--model {spec!r}: file {path} not found")
        if Path(path).suffix != ".py":
            raise ModelError(f"--model {spec!r}: {path} is not a Python file")
        if weights and not Path(weights).is_file():
            raise ModelError(f"--weights {weights}: file not found")
        return cls(path, factory, weights)

    @property
    def arch(self) -> str:
        """A file-name-safe architecture name for run folders, checkpoints and tuning keys."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(self.file).stem}.{self.factory}")

    def digest(self) -> str:
        """The model file's content (the factory name is in :attr:`arch`)."""
        return file_digest(self.file)

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        """Import the file and call the factory; any failure is one :class:`ModelError`."""
        name = f"laaq_user_model_{self.digest()}"
        try:
            spec = importlib.util.spec_from_file_location(name, self.file)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module  # dataclasses and pickling look their module up here
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as e:
            raise ModelError(f"--model {self.file}: importing the file failed ({type(e).__name__}: {_one_line(e)})"
                             ) from e
        fn = getattr(module, self.factory, None)
        if not callable(fn):
            raise ModelError(f"--model {self.file}:{self.factory}: no function {self.factory!r} in the file")
        offered = {"in_channels": input_shape[0], "num_classes": num_classes, "image_size": input_shape[1]}
        try:
            params = inspect.signature(fn).parameters
            kwargs = {k: v for k, v in offered.items() if k in params}
            model = fn(**kwargs)
        except Exception as e:
            raise ModelError(f"--model {self.file}:{self.factory}: the factory raised {type(e).__name__}: "
                             f"{_one_line(e)}") from e
        if not isinstance(model, nn.Module):
            raise ModelError(f"--model {self.file}:{self.factory}: the factory returned {type(model).__name__}, "
                             "not an nn.Module")
        return model


def check_model(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int, what: str) -> None:
    """The model accepts ``[N, *input_shape]`` and returns ``[N, num_classes]`` (eval mode, no gradients)."""
    x = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise ModelError(f"{what}: the model rejects the data set's input shape {list(x.shape)} "
                         f"({type(e).__name__}: {_one_line(e)})") from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{what}: the model returns {got} for a batch of 2, expected [N, classes] = "
                         f"[2, {num_classes}]")


def load_weights(model: nn.Module, path: str) -> None:
    """``torch.load(weights_only=True)`` of a state dict (or a laaq checkpoint holding one); names, shapes and
    finiteness checked, each failure one line."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"--weights {path}: not a loadable weights file ({type(e).__name__}: {_one_line(e)})") from e
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"--weights {path}: expected a state dict (name → tensor), got {type(blob).__name__}")
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        more = lambda names: "..." if len(names) > 4 else ""  # noqa: E731
        raise ModelError(f"--weights {path}: names do not match the model (missing {missing[:4]}{more(missing)}, "
                         f"unexpected {extra[:4]}{more(extra)})")
    wrong = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise ModelError(f"--weights {path}: shapes do not match the model ({'; '.join(wrong[:3])})")
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelError(f"--weights {path}: NaN or infinite values in {', '.join(bad[:4])}")
    model.load_state_dict(state)
    model.eval()
