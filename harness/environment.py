"""The host a run was made on, as ``run.json`` records it: versions, CPU model and core count, platform."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def environment() -> dict[str, Any]:
    import pandas
    import tvm

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": sys.version.split()[0], "torch": torch.__version__, "tvm": tvm.__version__,
            "numpy": np.__version__, "pandas": pandas.__version__, "host_cpu": cpu, "host_cores": os.cpu_count(),
            "host_machine": platform.machine(), "platform": platform.platform()}
