"""The quantization plan: what a search hands to the harness.

A plan says, for every weighted layer, how many bits its weights get and how hard their range is
clipped; activations are 8-bit per tensor with scales calibrated on data. It is plain JSON so that a
plan can be written by one tool (a search) and compiled by another (the harness) without pickles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class LayerSetting:
    """Per-layer weight quantization: symmetric, per output channel.

    ``clip`` scales each channel's max-abs range: scale = clip · max|W_o| / (2^(bits-1) − 1).
    ``clip < 1`` trades saturation of a few large weights for resolution of the many small ones,
    which matters most for the heavy-tailed weights of adversarially trained networks.
    """

    bits: int = 8
    clip: float = 1.0

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"weight bits must be in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")
        if not 0.0 < self.clip <= 1.0:
            raise ValueError(f"clip ratio must be in (0, 1], got {self.clip}")


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
            return sum(s.bits for s in self.layers.values()) / len(self.layers)
        tot = sum(macs_or_params[n] for n in self.layers)
        return sum(self.layers[n].bits * macs_or_params[n] for n in self.layers) / tot

    def to_json(self) -> str:
        d = {"name": self.name, "act_bits": self.act_bits, "meta": dict(self.meta),
             "layers": {k: asdict(v) for k, v in self.layers.items()}}
        return json.dumps(d, indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> QuantPlan:
        try:
            d = json.loads(text)
            layers = {k: LayerSetting(int(v["bits"]), float(v["clip"])) for k, v in d["layers"].items()}
            return cls(layers, act_bits=int(d.get("act_bits", 8)), name=str(d.get("name", "plan")),
                       meta={str(k): str(v) for k, v in d.get("meta", {}).items()})
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a valid quantization plan: {e}") from e

    @classmethod
    def from_file(cls, path: str | Path) -> QuantPlan:
        return cls.from_json(Path(path).read_text())

    def digest(self) -> str:
        """Stable short hash of the settings (names of layers, bits, clips), for cache keys."""
        body = json.dumps({k: asdict(v) for k, v in sorted(self.layers.items())}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:12]
