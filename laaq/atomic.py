"""The one way this project writes a file: to a temporary name beside it, flushed to disk, then renamed.

Why one: six writers had drifted apart — one fsynced, one set mode 0644, the others left ``mkstemp``'s 0600 (plot
PNGs and bundle files unreadable to a colleague) or could leave a half-written file after a crash. A reader of
a path written here sees the old content or the new, never a part; the file is 0644 (results are for sharing);
a failure leaves no temporary file and the previous version intact. (``harness/bundle/runner.py`` keeps its own
copy: it runs on a board that has only that file.)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

MODE = 0o644


def write_atomic(path: str | Path, content: str | bytes | Callable[[str], None]) -> None:
    """Write ``content`` (text, bytes, or a function that writes the file at the path it is given — e.g.
    ``torch.save``, ``savefig``, ``DataFrame.to_csv``) to ``path`` atomically; OSError propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        else:
            with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
