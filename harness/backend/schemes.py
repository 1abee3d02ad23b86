"""The blocked int8 schemes: which instruction pattern each CPU family gets for its convolutions.

A target never names code: its ``int8_layout`` field (or, when absent, the CPU features of its
``[tvm]`` table) selects one :class:`Scheme` here, once, in :func:`harness.profile.resolve`. The
lowering (:mod:`harness.lower.blocked`) reads the scheme's block sizes and storage dtypes; the
schedule (:mod:`harness.backend.schedule`) reads its intrinsic. **A new CPU family's scheme goes
here**: a ``Scheme`` row, its entry in :data:`SCHEMES`, the ``int8_layout`` value in
``harness/targets.py``, and the intrinsic's registration in :func:`harness.backend.schedule.ensure_intrinsic`.

=============  ==========================  =====================  ==============================
scheme         instruction                 operands               exact because
=============  ==========================  =====================  ==============================
nchwc_vnni     ``vpdpbusd`` (AVX-512 VNNI)  u8 act × s8 w, 16×4    32-bit accumulate, no int16 step;
                                                                  signed inputs stored as ``s8 + 128``
nchwc_avx2     ``vpmaddwd`` (AVX2)         s16 act × s16 w, 16×2  16×16→32-bit products, no
                                                                  saturation (``vpmaddubsw``
                                                                  would saturate for 8-bit w)
nchwc_sdot     ``sdot`` (Armv8.2 dotprod)  s8 act × s8 w, 4×4     act stored as ``u8 − 128``; the
                                                                  ``128·Σw`` it removes is added
                                                                  back through the bias
nchwc_neon     ``smull``+``saddlp`` (NEON)  s8 act × s8 w, 4×4     as sdot (s8×s8 fits int16)
nchwc_avx2_u8  ``vpmaddubsw``+``vpmaddwd``  u8 act × s8 w, 16×4    only for ≤ 7-bit weights: a pair
               (AVX2, layers ≤ 7 bits)                            sum 2·255·63 ≤ 32,767 (no
                                                                  saturation); signed inputs stored
                                                                  as ``s8 + 128``, ``128·Σw`` removed
                                                                  through the bias
nchwc_neon_i16 ``smull``+``smlal`` chain,  s8 act × s8 w, 4×16    only for ≤ 7-bit weights: an int16
               one ``saddlp`` (NEON,                              lane sums 4 products, 4·128·63 =
               layers ≤ 7 bits)                                   32,256 ≤ 32,767; input re-blocked to
                                                                  16 channels (zero weights pad it)
=============  ==========================  =====================  ==============================

A scheme may hand its narrow layers to a faster one (``narrower``): on AVX2, layers whose plan width
is ≤ 7 bits take ``nchwc_avx2_u8`` (twice the multiply rate of the int16 ``vpmaddwd`` path, no int16
widening of activations), the others keep ``nchwc_avx2``. Both use 16-channel output blocks, so
activations between layers need no re-layout; each convolution converts its input to its own stored
form (an element-wise op fused into the producer). On NEON without dot product, layers of ≤ 7 bits take
``nchwc_neon_i16``: the same 4-lane output blocks, but the intrinsic sums ``chain`` = 4 of TVM's 4×4
blocks in int16 (``smull`` then ``smlal``) before one widening ``saddlp``; its input is re-blocked from 4
to ``k_block·chain`` = 16 channels by that same per-layer conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm

CONV_BLOCK = "conv2d_NCHWc_int8"
VNNI_MCPUS = ("cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake", "alderlake",
              "sapphirerapids", "emeraldrapids", "graniterapids", "znver4", "znver5")
AVX2_MCPUS = ("x86-64-v3", "x86-64-v4", "haswell", "broadwell", "skylake", "skylake-avx512", "znver1", "znver2",
              "znver3", "alderlake") + VNNI_MCPUS
DOTPROD_MCPUS = ("cortex-a55", "cortex-a75", "cortex-a76", "cortex-a77", "cortex-a78", "cortex-x1", "neoverse-n1",
                 "neoverse-v1", "neoverse-n2", "apple-m1", "apple-m2")


@dataclass(frozen=True)
class Scheme:
    """How one family of CPUs gets its int8 convolutions: block sizes, storage dtypes, instruction."""

    name: str  # the target file's ``int8_layout`` value
    oc_block: int  # output channels per instruction (vector lanes of int32)
    k_block: int  # input channels summed per lane by one instruction
    act_dtype: str  # dtype activations are stored in as conv inputs
    act_offset: int  # stored = true value + act_offset for unsigned (uint8) activations
    weight_dtype: str
    intrin: str  # registered TensorIntrin name
    first_cb: int  # channel block of the network input (3 channels → padded to this)
    # output-width register blocking the hand schedule may pick (accumulators = ow × oc_block lanes)
    ow_options: tuple[int, ...] = (8, 7, 4, 2, 1)
    pad_per_row: bool = False  # parallel over (n, oh) with the padded input rows built per task
    # output-channel blocks per register tile (accumulators = oc_tile × ow × oc_block lanes): one broadcast
    # input quad then feeds oc_tile instructions; 1 where the register file is small (AVX2: 16 ymm)
    oc_tile: int = 1
    max_weight_bits: int = 8  # the widest weights this scheme is exact for
    signed_act_offset: int = 0  # stored = true + this for *signed* (int8) inputs; 0 with a uint8 act_dtype = refused
    narrower: Scheme | None = None  # a faster scheme for layers of ≤ narrower.max_weight_bits (same oc_block)
    # the largest |w| the instruction pattern is exact for; schemes without an int16 step take any int8
    max_abs_weight: int = 128
    # k_block-wide blocks one intrinsic call sums in int16 before widening (1: widen every block); the
    # conv then reads its input in blocks of k_block·chain channels (``in_block``)
    chain: int = 1
    # dense layers at small batch stream their weights through :mod:`harness.backend.gemv` (8/4/2-bit storage)
    streaming_dense: bool = False

    @property
    def in_block(self) -> int | None:
        """Channel block the conv's input must have (None: whatever the activation has)."""
        return self.k_block * self.chain if self.chain > 1 else None

    @property
    def instruction(self) -> str:
        """What to grep for in the disassembly of a compiled library."""
        return {"nchwc_vnni": "vpdpbusd", "nchwc_avx2": "vpmaddwd", "nchwc_sdot": "sdot",
                "nchwc_neon": "smull", "nchwc_avx2_u8": "vpmaddubsw", "nchwc_neon_i16": "smlal"}[self.name]

    def for_bits(self, bits: int) -> Scheme:
        """The scheme a layer with ``bits``-wide weights gets: the narrowest exact one of the family."""
        if self.narrower is not None and bits <= self.narrower.max_weight_bits:
            return self.narrower.for_bits(bits)
        if bits > self.max_weight_bits:
            raise ValueError(f"{self.name} is exact for weights of <= {self.max_weight_bits} bits, not {bits}")
        return self

    @property
    def family(self) -> tuple[Scheme, ...]:
        """This scheme and every narrower one it hands layers to."""
        return (self, *(self.narrower.family if self.narrower else ()))


# signed inputs (a conv after a linear bottleneck or a residual add without ReLU, MobileNetV2) are stored as
# s8 + 128 in uint8 and 128·Σw is removed through the bias, as on the vpmaddubsw path (32-bit accumulation:
# no saturation to worry about)
# 32 zmm registers: 2 output-channel blocks × 8 pixels = 16 accumulators + 2 weight vectors + a broadcast;
# rows built per task (no separate padding pass): ResNet-20 b1 0.131 → 0.106 ms on a 2-core znver5 (bit-exact)
VNNI = Scheme("nchwc_vnni", 16, 4, "uint8", 0, "int8", "dot_16x4_vnni", 4, pad_per_row=True,
              signed_act_offset=128, streaming_dense=True, oc_tile=2)
# 16 lanes = 2 ymm accumulators per output pixel; 4 pixels → 8 accumulators + 2 weight registers + 1
# broadcast of the 16 ymm registers (ow = 8 spills)
# the same register budget: 2 accumulators per pixel × 4 pixels + 2 weight registers + broadcast + ones
# vpmaddubsw pair sums: 2·255·|w| ≤ 32,767 ⇔ |w| ≤ 64
AVX2_U8 = Scheme("nchwc_avx2_u8", 16, 4, "uint8", 0, "int8", "laaq_dot_16x4_u8s8_avx2", 4, ow_options=(4, 2, 1),
                 pad_per_row=True, max_weight_bits=7, signed_act_offset=128, max_abs_weight=64)
AVX2 = Scheme("nchwc_avx2", 16, 2, "int16", 0, "int16", "laaq_dot_16x2_i16_avx2", 2, ow_options=(4, 2, 1),
              pad_per_row=True, narrower=AVX2_U8)
SDOT = Scheme("nchwc_sdot", 4, 4, "int8", -128, "int8", "dot_4x4_i8i8s32_sdot", 4)
# smull/smlal chain of 4: an int16 lane sums 4 products a·w, |a| ≤ 128 (s8), so 4·128·|w| ≤ 32,767 ⇔ |w| ≤ 63:
# every symmetric 7-bit weight (±63), not −64
NEON_I16 = Scheme("nchwc_neon_i16", 4, 4, "int8", -128, "int8", "laaq_dot_4x16_i8i8s32_neon_i16", 16,
                  max_weight_bits=7, max_abs_weight=32767 // (4 * 128), chain=4)
NEON = Scheme("nchwc_neon", 4, 4, "int8", -128, "int8", "dot_4x4_i8i8s32_neon", 4, narrower=NEON_I16)
SCHEMES = {s.name: s for s in (VNNI, AVX2, SDOT, NEON)}  # what a target file's int8_layout may name
ALL_SCHEMES = {s.name: s for s in (*SCHEMES.values(), AVX2_U8, NEON_I16)}  # + those only reached through ``narrower``
PLAIN = "nchw"


def _attrs(tvm_target: tvm.target.Target) -> tuple[str, list[str], str]:
    mcpu = str(tvm_target.attrs.get("mcpu", ""))
    mattr = [str(a) for a in tvm_target.attrs.get("mattr", [])]
    triple = str(tvm_target.attrs.get("mtriple", ""))
    return mcpu, mattr, triple


def _llvm_has(tvm_target: tvm.target.Target, feature: str) -> bool:
    """LLVM's own answer for a CPU outside the lists above (a host-native target's ``mcpu`` can be any CPU)."""
    from tvm.target import codegen

    mcpu, _, triple = _attrs(tvm_target)
    if not mcpu or (triple and not triple.startswith("x86_64")):
        return False
    try:
        return bool(codegen.llvm_cpu_has_features([feature], tvm_target))
    except Exception:  # an LLVM build without the query: the lists decide
        return False


def target_has_vnni(tvm_target: tvm.target.Target) -> bool:
    mcpu, mattr, _ = _attrs(tvm_target)
    if mcpu in AVX2_MCPUS and mcpu not in VNNI_MCPUS:
        return "+avx512vnni" in mattr
    return mcpu in VNNI_MCPUS or "+avx512vnni" in mattr or _llvm_has(tvm_target, "avx512vnni")


def auto_scheme(tvm_target: tvm.target.Target) -> Scheme | None:
    """The scheme a TVM target's CPU features allow (None: none — plain NCHW lowering)."""
    if tvm_target.kind.name != "llvm":
        return None
    mcpu, mattr, triple = _attrs(tvm_target)
    if triple.startswith(("aarch64", "arm64")):
        if "+dotprod" in mattr or mcpu in DOTPROD_MCPUS:
            return SDOT
        return NEON
    if triple and not triple.startswith("x86_64"):
        return None
    if target_has_vnni(tvm_target):
        return VNNI
    if mcpu in AVX2_MCPUS or "+avx2" in mattr or _llvm_has(tvm_target, "avx2"):
        return AVX2
    return None



def scheme_from_layout(layout: str, tvm_target: tvm.target.Target) -> Scheme | None:
    """The scheme a target file's ``int8_layout`` names (``"nchw"`` → None: plain lowering), or, when the
    field is empty, the one its CPU features allow (:func:`auto_scheme`)."""
    if layout == PLAIN:
        return None
    if layout:
        return SCHEMES[layout]  # validated against harness.targets.INT8_LAYOUTS when the file was loaded
    return auto_scheme(tvm_target)


def isa_family(tvm_target: tvm.target.Target) -> str:
    """'x86' | 'arm' | 'riscv' | 'cuda' | ...: which family of TVM tensor intrinsics the target's code uses."""
    kind = tvm_target.kind.name
    if kind != "llvm":
        return kind
    triple = str(tvm_target.attrs.get("mtriple", "")) or ""
    if triple.startswith(("aarch64", "arm")):
        return "arm"
    if triple.startswith("riscv"):
        return "riscv"
    return "x86"
