"""Any supported ``nn.Module`` → the layer graph (:class:`laaq.graph.Graph`), through ``torch.export``.

``model_graph(model, input_shape)`` is the one entry point the harness and the method use wherever a
model becomes a graph: the built-in architectures go through it like a person's own model (their
hand-written ``to_graph()`` survive only as the tests' cross-check). What is translated, and how
batch-norm, activations and residual adds are fused: :mod:`laaq.importer.translate`; what is refused
and how it is said: :mod:`laaq.importer.errors`.

Every import is checked before it is returned: each node's shape against torch's, and the float graph's
output against ``model(x)`` on random inputs — a graph that does not reproduce the model is refused,
never handed on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import weakref
from collections.abc import Iterator

import torch

from laaq.graph import Graph
from laaq.importer.errors import SUPPORTED, ModelImportError, source_line
from laaq.importer.translate import Translator, float_matches

__all__ = ["SUPPORTED", "ModelImportError", "capture", "import_model", "model_graph", "source_line"]

#: batch of the example input: 2, so that the batch axis cannot be mistaken for another axis of size 1
EXAMPLE_BATCH = 2
#: largest |graph − model| accepted on random inputs in [0, 1] (float32 arithmetic in another order)
TOLERANCE = 1e-4

_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, Graph]] = weakref.WeakKeyDictionary()


def _one_line(e: BaseException, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch.export logs and prints pages (graph dumps, symbolic-shape warnings) to stderr before it raises;
    the refusal is one line, so both are held back while it runs."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.fx.experimental.symbolic_shapes", "torch.export",
                                              "torch._export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def capture(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> torch.export.ExportedProgram:
    """``torch.export`` of the model in eval mode on an example input of the data set's shape."""
    model.eval()
    x = torch.rand((EXAMPLE_BATCH, *input_shape), generator=torch.Generator().manual_seed(0))
    try:
        with _quiet_torch():
            return torch.export.export(model, (x,))
    except Exception as e:  # data-dependent control flow, unsupported Python, a custom autograd function...
        where = source_line(str(e)) if 'File "' in str(e) else "the model's forward"
        raise ModelImportError(f"torch.export ({type(e).__name__})", "forward", where,
                               f"torch.export could not capture the model: {_one_line(e)}") from e


def import_model(model: torch.nn.Module, input_shape: tuple[int, int, int],
                 num_classes: int | None = None) -> Graph:
    """Translate the model (eval mode, batch-norm folded); raises :class:`ModelImportError` with one line."""
    input_shape = tuple(int(d) for d in input_shape)
    ep = capture(model, input_shape)
    tr = Translator(ep, input_shape)
    out = tr.run()
    graph = tr.graph(out, num_classes)
    tr.check_shapes(graph)
    x = torch.rand((4, *input_shape), generator=torch.Generator().manual_seed(1))
    diff = float_matches(graph, model, x)
    if not diff <= TOLERANCE:
        raise ModelImportError("model", "output", "the whole model",
                               f"internal: the imported graph differs from the model by {diff:.3g} (> {TOLERANCE})")
    return graph


def _fingerprint(model: torch.nn.Module) -> tuple:
    """Identity and in-place version of every tensor of the state: any weight update changes it."""
    return tuple((k, id(t), t._version) for k, t in model.state_dict(keep_vars=True).items())


def model_graph(model: torch.nn.Module, input_shape: tuple[int, ...], num_classes: int | None = None) -> Graph:
    """The model's layer graph, imported once per (model, weights, input shape) and then reused.

    Why a cache: ``bench`` asks for the graph of the same model at several stages and an export takes
    seconds; the key includes every state tensor's in-place version, so training or loading weights
    (both in place) invalidates it. Callers must not mutate the returned graph.
    """
    key = (tuple(input_shape), num_classes, _fingerprint(model))
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    graph = import_model(model, tuple(input_shape), num_classes)  # type: ignore[arg-type]
    _CACHE[model] = (key, graph)
    return graph
