"""Every adversarial example an evaluation judged, so that the judging can happen somewhere else.

Why: :func:`laaq.robustness.evaluate` crafts examples (white-box on the twin, Square black-box on the
deployed function) and judges each one on the deployed function as it goes. An offline bundle cannot
ask the device while it crafts: the device is a board in another room. So the host crafts with a
bit-exact stand-in of the artefact and *records* each member's examples here (:meth:`ExampleLog.add`);
the device runs them; then :func:`laaq.robustness.rejudge` *replays* the same evaluation with the
device's outputs as the judge and the recorded examples in place of the attacks. Where the device
agrees with the stand-in (bit-exact integer artefacts) the replay is the host evaluation, stage by
stage; where it does not, an image the device still gets right may ask a later member for an example
the host never crafted (the host had it broken already): such requests are counted in
:attr:`ExampleLog.unattacked`, and that image's robust outcome is an upper bound.

Entries are keyed ``"<stage>/<member>"`` (stage ``main``, ``stronger``, ``transfer``, ``curve:<eps>``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ExampleLog:
    """Recorded (image indices, examples) per stage and member; ``replaying`` serves them back."""

    entries: dict[str, tuple[np.ndarray, torch.Tensor]] = field(default_factory=dict)
    replaying: bool = False
    unattacked: dict[str, int] = field(default_factory=dict)  # replay: requested images with no recorded example

    def add(self, key: str, idx: np.ndarray, x: torch.Tensor) -> None:
        if key in self.entries:
            raise ValueError(f"example log: {key} recorded twice (stage and member names must be unique)")
        self.entries[key] = (np.asarray(idx, dtype=np.int64).copy(), x.detach().clone())

    def take(self, key: str, idx: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """The recorded examples of ``key`` for the requested images ``idx``: (positions in ``idx`` that have
        one, those examples). Requested images without one are counted as unattacked."""
        rec_idx, rec_x = self.entries.get(key, (np.zeros(0, dtype=np.int64), torch.zeros(0)))
        where = {int(i): k for k, i in enumerate(rec_idx)}
        have = np.array([k for k, i in enumerate(idx) if int(i) in where], dtype=np.int64)
        missing = len(idx) - len(have)
        if missing:
            self.unattacked[key] = self.unattacked.get(key, 0) + missing
        if len(have) == 0:
            return have, rec_x[:0]
        return have, rec_x[[where[int(idx[k])] for k in have]]

    def examples(self) -> list[torch.Tensor]:
        """Every recorded example, in entry order (what the device has to run, besides the clean inputs)."""
        return [x for _, x in self.entries.values() if len(x)]

    # ------------------------------------------------------------------ storage (plain npz, no pickle)
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {"keys": np.array(list(self.entries), dtype=str)}
        for k, (idx, x) in enumerate(self.entries.values()):
            arrays[f"idx{k}"], arrays[f"x{k}"] = idx, x.numpy()
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, replaying: bool = True) -> ExampleLog:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            keys = [str(k) for k in z["keys"]]
            entries = {key: (z[f"idx{k}"], torch.from_numpy(z[f"x{k}"])) for k, key in enumerate(keys)}
        return cls(entries, replaying=replaying)
