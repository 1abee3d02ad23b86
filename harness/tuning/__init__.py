"""Tuning: MetaSchedule databases per (target, kernel set), tuning what they lack, measuring on the device.

* :mod:`harness.tuning.database` — where databases live, what they hold, applying one (no tuning);
* :mod:`harness.tuning.tuner` — tuning the kernels a database lacks;
* :mod:`harness.tuning.rpc` — measuring candidates on a remote or emulated board.

The compile stage (:func:`harness.compile.compile_module`) calls :func:`tune` when asked for trials
and hands :func:`existing_database` to the backend; nothing here compiles a whole model.
"""

from __future__ import annotations

from harness.tuning.database import (
    apply_database,
    database_dir,
    default_key,
    existing_database,
    fuse,
    missing_tasks,
    workload_digest,
)
from harness.tuning.rpc import EMULATED_NOTE, TuneDeviceUnavailable
from harness.tuning.tuner import TuneReport, hand_scheduled, tune

__all__ = ["EMULATED_NOTE", "TuneDeviceUnavailable", "TuneReport", "apply_database", "database_dir", "default_key",
           "existing_database", "fuse", "hand_scheduled", "missing_tasks", "tune", "workload_digest"]
