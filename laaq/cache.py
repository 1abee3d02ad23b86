"""The one cache root of the project: checkpoints, tuning databases, CUDA device code, the emulator.

Why one function: the root used to be worked out in three places, and a test (or a lab with a shared
cache disk) must be able to move *everything* with one variable, ``$LAAQ_CACHE``. Read at call time,
not import time, so a test can point it elsewhere after import. Lives in ``laaq`` (the lowest layer)
so that both the method (checkpoints) and the harness (tuning, CUDA, emulator) use it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$LAAQ_CACHE`` when set, else ``~/.cache/laaq-bench``; each user of the cache takes a sub-folder."""
    return Path(os.environ.get("LAAQ_CACHE") or Path.home() / ".cache" / "laaq-bench")
