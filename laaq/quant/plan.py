"""The quantization plan: what a search hands to the harness.

A plan says, for every weighted layer, how many bits its weights get and how hard their range is
clipped; activations are 8-bit per tensor with scales calibrated on data. It is plain JSON so that a
plan can be written by one tool (a search) and compiled by another (the harness) without pickles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class LayerSetting:
    """Per-layer weight quantization: symmetric, per output channel.

    ``clip`` scales each channel's max-abs range: scale = clip · max|W_o| / (2^(bits-1) − 1).
    ``clip < 1`` trades saturation of a few large weights for resolution of the many small ones,
    which matters most for the heavy-tailed weights of adversarially trained networks.

    ``groups`` (optional): consecutive output-channel groups, each ``(channels, bits, clip)``, at their own
    width — finer than one width per layer, so a budget can be spent where inside a layer it matters.
    Then ``bits`` is the widest group's width: what the kernels and the packed storage run at (a 3-bit
    group stored in a 4-bit layer weighs 4 bits), while :attr:`mean_bits` is what budgets count.
    Use :meth:`grouped` to build one.
    """

    bits: int = 8
    clip: float = 1.0
    groups: tuple[tuple[int, int, float], ...] = ()

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"weight bits must be in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")
        if not 0.0 < self.clip <= 1.0:
            raise ValueError(f"clip ratio must be in (0, 1], got {self.clip}")
        for ch, b, c in self.groups:
            LayerSetting(b, c)
            if ch < 1:
                raise ValueError(f"a channel group needs at least one channel, got {ch}")
        widest = max((b for _, b, _ in self.groups), default=self.bits)
        if self.bits != widest:
            raise ValueError(f"a grouped setting's bits must be its widest group's ({widest}), got {self.bits}")

    @classmethod
    def grouped(cls, parts: list[tuple[int, LayerSetting]]) -> LayerSetting:
        """One layer's setting from ``(channels, setting)`` per consecutive output-channel group; a plain
        setting when every group has the same one (so ungrouped plans stay plain)."""
        if not parts:
            raise ValueError("a grouped setting needs at least one group")
        if len({s for _, s in parts}) == 1:
            return parts[0][1]
        groups = tuple((int(ch), s.bits, s.clip) for ch, s in parts)
        return cls(max(s.bits for _, s in parts), max(s.clip for _, s in parts), groups)

    @property
    def mean_bits(self) -> float:
        """Average width over output channels (= over weights: every channel has the same fan-in)."""
        if not self.groups:
            return float(self.bits)
        return sum(ch * b for ch, b, _ in self.groups) / sum(ch for ch, _, _ in self.groups)

    def per_channel(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(bits, clip) of each of a layer's ``channels`` output channels."""
        if not self.groups:
            return np.full(channels, self.bits), np.full(channels, self.clip)
        if sum(ch for ch, _, _ in self.groups) != channels:
            raise ValueError(f"grouped setting covers {sum(ch for ch, _, _ in self.groups)} output channels, "
                             f"the layer has {channels}")
        bits = np.concatenate([np.full(ch, b) for ch, b, _ in self.groups])
        clips = np.concatenate([np.full(ch, c) for ch, _, c in self.groups])
        return bits, clips

    def describe(self) -> str:
        """Short label: ``4b@0.8``, or per group ``[16×3b@0.7 16×4b@1]``."""
        if not self.groups:
            return f"{self.bits}b@{self.clip:g}"
        return "[" + " ".join(f"{ch}×{b}b@{c:g}" for ch, b, c in self.groups) + "]"

    def to_dict(self) -> dict:
        d: dict = {"bits": self.bits, "clip": self.clip}
        if self.groups:  # absent when plain, so ungrouped plans (and their digests) are unchanged
            d["groups"] = [list(g) for g in self.groups]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LayerSetting:
        groups = tuple((int(g[0]), int(g[1]), float(g[2])) for g in d.get("groups", ()))
        return cls(int(d["bits"]), float(d["clip"]), groups)


@dataclass(frozen=True)
class QuantPlan:
    """Settings for each weighted layer, by layer name, plus the activation bit width."""

    layers: dict[str, LayerSetting]
    act_bits: int = 8
    name: str = "plan"
    meta: dict[str, str] = field(default_factory=dict)  # who made it and how (search, budget, ...)

    def __post_init__(self) -> None:
        if self.act_bits != 8:
            raise ValueError("only 8-bit activations are supported by the integer pipeline")

    @classmethod
    def uniform(cls, layer_names: list[str], bits: int, clip: float = 1.0, name: str | None = None) -> QuantPlan:
        return cls({n: LayerSetting(bits, clip) for n in layer_names}, name=name or f"uniform-w{bits}")

    def setting(self, layer: str) -> LayerSetting:
        try:
            return self.layers[layer]
        except KeyError:
            raise KeyError(f"plan {self.name!r} has no setting for layer {layer!r}; "
                           f"it covers {sorted(self.layers)}") from None

    def check_covers(self, layer_names: list[str]) -> None:
        """Fail early, naming the mismatch, when a plan was made for another model."""
        missing = [n for n in layer_names if n not in self.layers]
        extra = [n for n in self.layers if n not in layer_names]
        if missing or extra:
            raise ValueError(f"plan {self.name!r} does not match the model: missing {missing}, unknown {extra}")

    def avg_bits(self, macs_or_params: dict[str, int] | None = None) -> float:
        """Average weight bits, weighted by parameter counts when given (the usual 'budget')."""
        if not macs_or_params:
            return sum(s.mean_bits for s in self.layers.values()) / len(self.layers)
        tot = sum(macs_or_params[n] for n in self.layers)
        return sum(self.layers[n].mean_bits * macs_or_params[n] for n in self.layers) / tot

    def to_json(self) -> str:
        d = {"name": self.name, "act_bits": self.act_bits, "meta": dict(self.meta),
             "layers": {k: v.to_dict() for k, v in self.layers.items()}}
        return json.dumps(d, indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> QuantPlan:
        try:
            d = json.loads(text)
            layers = {k: LayerSetting.from_dict(v) for k, v in d["layers"].items()}
            return cls(layers, act_bits=int(d.get("act_bits", 8)), name=str(d.get("name", "plan")),
                       meta={str(k): str(v) for k, v in d.get("meta", {}).items()})
        except (KeyError, TypeError, IndexError, json.JSONDecodeError) as e:
            raise ValueError(f"not a valid quantization plan: {e}") from e

    @classmethod
    def from_file(cls, path: str | Path) -> QuantPlan:
        return cls.from_json(Path(path).read_text())

    def digest(self) -> str:
        """Stable short hash of the settings (names of layers, bits, clips), for cache keys."""
        body = json.dumps({k: v.to_dict() for k, v in sorted(self.layers.items())}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:12]
