"""The importer's one refusal: which op, at which node, from which source line, and what is supported.

Why one exception class: the CLI turns it into one line and a non-zero exit before anything is
written, and a person fixing their model needs exactly those four facts, not a TVM or torch traceback.
"""

from __future__ import annotations

import re

#: what the importer translates (ATen ops of ``torch.export``'s graph) — the table in docs/method.md
SUPPORTED = (
    "conv2d (zero padding, stride and groups incl. depthwise; no dilation), linear, "
    "batch_norm right after a conv/linear (folded), relu, relu6 / hardtanh / clamp(0, m) after a conv, linear or add, "
    "add of two activations (fused into the conv before it as a residual when possible), cat along channels, "
    "max_pool2d / avg_pool2d (square k×k, no ceil_mode), adaptive_avg/max_pool2d and mean over H,W (global), "
    "flatten / view / reshape to [N, -1] before a linear, dropout / clone / contiguous (identity in eval); "
    "the model must end in a linear layer returning [N, classes]"
)

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)\n\s*(?P<code>[^\n]*)')


def source_line(stack_trace: str | None) -> str:
    """The innermost frame of the user's code in a ``torch.export`` stack trace (``file:line: code``).

    torch records the whole Python stack of the call that produced a node; frames inside torch itself
    (``nn.Module`` plumbing, functional wrappers) say nothing to the model's author, so the last frame
    outside the torch package is the line to point at.
    """
    if not stack_trace:
        return "no source line recorded"
    frames = [m for m in _FRAME.finditer(stack_trace)]
    user = [m for m in frames if "/torch/" not in m["file"]]
    m = (user or frames or [None])[-1]
    if m is None:
        return stack_trace.strip().splitlines()[-1].strip()
    return f'{m["file"]}:{m["line"]}: {m["code"].strip()}'


class ModelImportError(Exception):
    """A model (or a node of it) the importer cannot translate into the layer graph, said in one line."""

    def __init__(self, op: str, node: str, source: str, detail: str = "") -> None:
        self.op, self.node, self.source, self.detail = op, node, source, detail
        why = f": {detail}" if detail else ""
        super().__init__(f"cannot import op {op} at node {node!r} ({source}){why}. Supported: {SUPPORTED}")
