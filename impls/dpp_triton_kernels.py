"""Triton kernels of the DPP ``triton`` tier (forward and backward) and their launch plans.

Import this module only through :mod:`impls.dpp_triton`: Triton decides at
*kernel definition* time whether to compile for the GPU or to run in its
Python interpreter (``TRITON_INTERPRET=1``, which accepts CPU tensors), so the
environment variable must be set before this module is first imported.
:data:`INTERPRET` records which mode the kernels were defined in.

Maths (Saeedan et al., CVPR 2018, eq. 4-10), per output position p and channel
c, over the valid (non-padded) taps q of the window, in base 2 (one hardware
instruction each for exp2 and the fast log2 on the GPU):

    d_q = I[q] − Ĩ[p]            (Asym: max(0, ·)),   c_q = d_q² + ε²
    ℓ_q = (λ/2)·(log2 c_q − log2 m),  m = mean_q c_q if scale-invariant else 1
    M   = max(max_q ℓ_q, log2 α),   w_q ∝ 2^(ℓ_q − M) + 2^(log2 α − M)
    y   = Ĩ + Σ w_q·(I[q] − Ĩ) / Σ w_q

Because λ ≥ 0, max_q ℓ_q sits at the tap with the largest c_q, so
``2^(ℓ_q − M) = 2^((λ/2)·log2(c_q / c_max) + (ℓ_max − M))``: the exponent is
formed from a ratio ≤ 1 instead of the difference of two large logs, which
keeps full relative precision at λ = 200 and |I| = 1e4.  α = 0 gives
``log2 α = −inf`` and an α-term of exactly 0 (never 0·inf).

Large magnitudes: d² overflows float32 for |d| > 1.8e19.  A window whose
largest |d| exceeds 2^50 (≈ 1.1e15) is rescaled by the power of two
``sc = 2^−⌊log2 max|d|⌋`` before squaring: c_q·sc² = (d_q·sc)² + ε²·sc²,
the ratios c_q/c_max are unchanged, and log2 c_max = log2(c_max·sc²) + 2⌊·⌋
(so ε²/d² is kept where it is representable and drops out, as
2·log|d| + log1p(ε²/d²) ≈ 2·log|d|, where it is not).  Every other window has
sc = 1 and takes the plain form.

Layout: one program row (``program_id(0)``) per (n, c) plane, so a channel's
α, λ, F, b and log2 α are scalars computed once per program.  Every tensor is
one-dimensional over a BLOCK of windows; a window's taps are unrolled
(``tl.static_range``) into tuples of such tensors, so every lane owns whole
windows under any compiler version: per-window reductions (sums, max) stay inside
one thread, with no shuffles, and the per-window maths (log2 c_max, 1/Σw, the
α-term) runs once per window.

Backward recomputes the weights from x (nothing but the inputs is saved):

* ``_dpp_bwd_window_kernel``: one pass per window gives y, the weights, the
  α/λ (and F/b) partial sums and the gradient w.r.t. the guide Ĩ.  When windows
  cannot overlap (k ≤ s) it also writes ∂L/∂x for its own taps directly
  (``FUSED_GX``).  For Full-DPP 2×2/2 and for k3s2p1 (Lite and Full, the ResNet
  stem) the whole backward is this one kernel and ∂x is written once
  (``RING_GX``): window (i, j) owns pixels (2i + {0, 1}, 2j + {0, 1}), which only
  it and its right, lower and lower-right neighbours reach (by pooling or by the
  3×3 guide), so a block writes its pixels once its successors' ∂L/∂Ĩ (2×2/2) or
  9 stats (k3s2p1) are in a per-program ring: a gather by owned pixel, no scatter,
  no atomics.  Otherwise (other overlapping geometries) it stores 9 per-window
  scalars ("stats") for the pixel gather.
* ``_dpp_bwd_input_kernel``: a gather over input pixels (no scatter, so no
  atomics): each pixel sums its contributions from the ≤ ⌈k/s⌉² windows that
  contain it (from the stats) and, for Full-DPP, from the ≤ ⌈3/s⌉² guide
  filters that read it (``gx += Σ ∂L/∂Ĩ · F``).  Used for overlapping windows
  other than k3s2p1 (e.g. stride 1) and for ``RING_GX`` planes wider than the
  largest block (a block must hold a window's lower-right neighbour).

Gradient formulas (D = Σ_q w_q, ĝ = ∂L/∂y / D, e_q = 2^(ℓ_q − M)):

    ∂L/∂α  = ĝ · 2^(−M) · Σ_q (I_q − y),   Σ_q (I_q − y) = (Σe·Σ(I−Ĩ) − n·Σe·(I−Ĩ))/D
    ∂L/∂λ  = ĝ·ln2/2 · (Σ_q (I_q − y)·e_q·log2(c_q/c_max) − a·(log2 c_max − log2 m)·Σ_q (I_q − y))
    β_q    = ĝ · (I_q − y)·e_q·λ/2                        (= ∂L/∂ln c_q)
    γ_q    = 2·d_q·(β_q / c_q − [SI] Σ_j β_j / Σ_j c_j)    (= ∂L/∂d_q; = 2·(d_q·sc)·sc·(β_q/(c_q·sc²) − …))
    ∂L/∂I_q (direct) = ĝ·w_q + γ_q,    ∂L/∂Ĩ = −Σ_q γ_q
    Lite: ∂L/∂I_q += (∂L/∂Ĩ)/n;   Full: ∂L/∂I[tap t] += ∂L/∂Ĩ·F_t, ∂L/∂F_t += ∂L/∂Ĩ·I[tap t], ∂L/∂b += ∂L/∂Ĩ

Parameters as stored (``LOG_PARAMS``, the modules' call): α and λ arrive as θα = ln α, θλ = ln λ;
log2 α = θα·log2 e and λ = exp(θλ) are formed once per program, and the kernels return
∂L/∂θα = α·∂L/∂α (per window ĝ·Σ(I − y)·2^(log2 α − M)) and ∂L/∂θλ = λ·∂L/∂λ (per program), so a
module call is the one op.  Without it (the functional form) α ≥ 0, λ ≥ 0 are taken as given.

The window kernel's last program (an atomic counter, reset by that program; one
counter per plan and CUDA stream, so concurrent same-shape backwards never share
one) sums every program's α/λ/F/b partials in a fixed order and writes the
parameter gradients in the parameters' dtypes: no reduction or copy launches follow.

Host path: everything that depends only on the call's shape, strides, dtypes,
device and settings (geometry checks, grid, config, scalar arguments) is a plan
cached per :func:`plan_key`; a call allocates its outputs and launches.  With
``POOLBENCH_TRITON_AUTOTUNE=0`` in the environment when this module is imported (or
:func:`set_autotune` ``(False)`` later) each kernel runs one fixed config per shape.
Every launch can be described by a :class:`Launch` (kernel, grid, arguments), built
by :func:`forward_plan` / :func:`backward_plan`; the static kernel report
(:mod:`poolbench.measure.kernel_report`) compiles exactly those specialisations.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import triton
import triton.language as tl

from poolbench.base import compute_dtype
from poolbench.validation import pooled_size

#: True when the kernels run in Triton's interpreter (CPU tensors, slow, for testing).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: The interpreter has no libdevice (extern calls), so it takes tl.log2; compiled fp32 code takes
#: the one-instruction approximate log2 (MUFU.LG2, ~2^-22 absolute error).
FAST_LOG2: tl.constexpr = tl.constexpr(not INTERPRET)
if not INTERPRET:
    from triton.language.extra.cuda import libdevice
#: ε² is a float64 scalar argument on the GPU (no tensor, no host→device copy per call); the
#: interpreter would round a Python float argument to float32, so there it is a 1-element tensor.
EPS2_IN_MEMORY: tl.constexpr = tl.constexpr(INTERPRET)

#: Per-window scalars the backward keeps when windows overlap (k > s): in the ring (k3s2p1) or for the gather.
N_STATS = 9  # centre Ĩ, y − Ĩ, 1/c_max (scaled), ℓ_max − M, α-term, ∂L/∂y / D, SI term, ∂L/∂Ĩ (Lite: / n), sc

#: Programs the backward's window kernel aims for (it splits planes into chunks
#: so that small N·C still fills the GPU; chunk boundaries do not depend on the
#: autotuned BLOCK, so the partial sums are reproducible for a given config).
TARGET_PROGRAMS = 1024

#: Windows whose largest |d| exceeds this are rescaled by a power of two before squaring.
BIG_DEVIATION: tl.constexpr = tl.constexpr(2.0 ** 50)
#: Floor of the (scaled) ε² so that log2 c stays finite when ε²·sc² underflows.
TINY: tl.constexpr = tl.constexpr(1.1754944e-38)
LN2: tl.constexpr = tl.constexpr(math.log(2.0))
LOG2E: tl.constexpr = tl.constexpr(1.0 / math.log(2.0))

#: Smallest BLOCK of any config: bounds the grid's second dimension (CUDA allows 65535 there).
MIN_BLOCK = 64
MAX_GRID_Y = 65535

#: Register budgets of the autotune prune, in (windows or pixels per thread) × (register-tile slots
#: per window): the forward, the backward's window kernel (≈ 4× the live values per slot) and the
#: pixel gather.  Calibrated with ``poolbench kernels`` on sm_90: kept configs stay at ≤ ~100
#: registers (occupancy for a memory-bound kernel) and never spill; e.g. the Lite 2×2 backward at
#: 4 windows per thread needs 243 registers, Full-DPP's at 2 windows 128.  The forward's 30 keeps
#: Lite k3s2p1 at one window per thread: at two, Triton 3.6 spills 8 B (Asym, bf16).
FORWARD_TILE_BUDGET = 30
BACKWARD_TILE_BUDGET = 8
PIXEL_TILE_BUDGET = 16


def _configs(candidates):
    """Autotune candidates (BLOCK, num_warps) on GPU; one small config in the interpreter (no benchmarking).

    Every BLOCK is at least one window per lane (BLOCK ≥ 32·num_warps): with fewer, Triton would
    spread a window's taps over lanes again.
    """
    if INTERPRET:
        return [triton.Config({"BLOCK": MIN_BLOCK}, num_warps=2)]
    return [triton.Config({"BLOCK": block}, num_warps=warps) for block, warps in candidates]


def windows_per_thread(config) -> int:
    return max(1, config.kwargs["BLOCK"] // (32 * config.num_warps))


def _prune(slots_of, budget):
    """Drop configs whose per-thread register tile exceeds ``budget`` (keeps at least the one-window configs).

    ``slots_of(args)`` is the number of tile slots one window (or pixel) keeps live: taps for the
    window kernels (plus the 3×3 guide taps for Full-DPP), contributing windows for the gather.
    """

    def prune(configs, named_args, **kwargs):
        slots = slots_of({**named_args, **kwargs})
        kept = [c for c in configs if windows_per_thread(c) * slots <= budget]
        fewest = min(windows_per_thread(c) for c in configs)
        return kept or [c for c in configs if windows_per_thread(c) == fewest]

    return prune


def _window_prune(budget):
    """The window kernel's prune: with RING_GX a block must hold a window's lower-right neighbour (BLOCK > OW)."""
    by_registers = _prune(_window_slots, budget)

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        if args.get("RING_GX"):
            configs = [c for c in configs if c.kwargs["BLOCK"] > args["OW"]]
        return by_registers(configs, named_args, **kwargs)

    return prune


def _window_slots(args) -> int:
    return args["KP"] + (9 if args["FULL"] else 0)  # taps + the 3×3 guide taps


def _pixel_slots(args) -> int:
    # A pooling contribution keeps 9 per-window scalars live, a guide contribution 2: weight them.
    return (2 * args["CP"] if args["POOL"] else 0) + (args["GP"] if args["GUIDE"] else 0)


#: Autotune keys: every argument that changes the compiled kernel or its best tile (the plane's
#: geometry, the variant flags; Triton adds the tensors' dtypes), never the batch size.
FORWARD_KEY = ["H", "W", "P", "K", "S", "PAD", "ASYM", "FULL", "SI", "LOG_PARAMS"]
BACKWARD_KEY = ["H", "W", "P", "K", "S", "PAD", "ASYM", "FULL", "SI", "FUSED_GX", "LOG_PARAMS"]
PIXEL_KEY = ["H", "W", "P", "K", "S", "PAD", "ASYM", "FULL", "POOL", "GUIDE", "ACCUM", "LOG_PARAMS"]

_FWD_CONFIGS = _configs(((64, 2), (128, 4), (256, 4), (512, 4)))
_BWD_WINDOW_CONFIGS = _configs(((64, 2), (128, 4), (256, 4), (256, 2)))
_PIXEL_CONFIGS = _configs(((128, 4), (256, 4), (512, 4), (1024, 4)))


# --------------------------------------------------------------------------- shared inline maths
#
# Per-tap values are *tuples* of [BLOCK] tensors, one per tap, built with ``tl.static_range``: every
# tensor of a kernel is one-dimensional, so every layout puts whole windows in one thread whatever
# the compiler version.  (A [taps, windows] register tile leaves the layout to Triton's coalescing
# heuristic: Triton 3.6 spreads the taps over lanes there, which replicates the per-window maths
# and the index divisions on every lane and adds shuffle reductions, ≈3× the instructions.)


@triton.jit
def _log2(x, ACC: tl.constexpr):
    """log2: one MUFU instruction for compiled float32, the precise routine for float64 (and the interpreter)."""
    if FAST_LOG2 and ACC == tl.float32:
        return libdevice.fast_log2f(x)
    else:
        return tl.log2(x)


@triton.jit
def _eps2_value(eps2, ACC: tl.constexpr):
    """ε² in the compute dtype (see :data:`EPS2_IN_MEMORY`)."""
    if EPS2_IN_MEMORY:
        return tl.load(eps2).to(ACC)
    else:
        return tl.cast(eps2, ACC)


@triton.jit
def _tsum(values, N: tl.constexpr):
    total = values[0]
    for t in tl.static_range(1, N):
        total += values[t]
    return total


@triton.jit
def _tmax(values, N: tl.constexpr):
    best = values[0]
    for t in tl.static_range(1, N):
        best = tl.maximum(best, values[t])
    return best


@triton.jit
def _window_taps(xp, oh, ow, pmask, H, W, K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr,
                 ACC: tl.constexpr):
    """(x, inside) of the K² taps, row-major: tuples of [BLOCK]; padded taps read 0."""
    values = ()
    masks = ()
    for t in tl.static_range(K * K):
        row = oh * S + (t // K - PAD)
        col = ow * S + (t % K - PAD)
        if PAD == 0:  # without padding every tap of an in-range window is inside the image
            inside = pmask
        else:
            inside = pmask & (row >= 0) & (row < H) & (col >= 0) & (col < W)
        values = values + (tl.load(xp + row * W + col, mask=inside, other=0.0).to(ACC),)
        masks = masks + (inside,)
    return values, masks


@triton.jit
def _guide_taps(xp, v, oh, ow, pmask, H, W, K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr,
                ACC: tl.constexpr):
    """The 3×3 neighbourhood of (oh·s, ow·s), zero outside the image (conv padding 1): a tuple of 9 [BLOCK].

    Taps that coincide with window taps are taken from ``v`` (all 9 for k=3, pad=1; 4 for k=2, pad=0).
    """
    values = ()
    for gr in tl.static_range(3):
        for gc in tl.static_range(3):
            # the window tap on the same pixel is (gr − 1 + pad, gc − 1 + pad) when inside the window
            if (gr - 1 + PAD >= 0) and (gr - 1 + PAD < K) and (gc - 1 + PAD >= 0) and (gc - 1 + PAD < K):
                values = values + (v[(gr - 1 + PAD) * K + (gc - 1 + PAD)],)
            else:
                row = oh * S + (gr - 1)
                col = ow * S + (gc - 1)
                inside = pmask & (row >= 0) & (row < H) & (col >= 0) & (col < W)
                values = values + (tl.load(xp + row * W + col, mask=inside, other=0.0).to(ACC),)
    return values


@triton.jit
def _guide(xp, w_ptr, b_ptr, ch, v, n, oh, ow, pmask, H, W,
           K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, FULL: tl.constexpr, ACC: tl.constexpr):
    """(Ĩ, guide taps) per window: the learned 3×3 filter plus bias (Full) or the window mean (Lite)."""
    if FULL:
        xg = _guide_taps(xp, v, oh, ow, pmask, H, W, K, S, PAD, ACC)
        g = xg[0] * tl.load(w_ptr + ch * 9).to(ACC)
        for t in tl.static_range(1, 9):
            g += xg[t] * tl.load(w_ptr + ch * 9 + t).to(ACC)
        return g + tl.load(b_ptr + ch).to(ACC), xg
    elif PAD == 0:
        return _tsum(v, K * K) * (1.0 / (K * K)), v
    else:
        return _tsum(v, K * K) / n, v


@triton.jit
def _window_scale(dmax, eps2, ACC: tl.constexpr):
    """(sc, 2·log2(1/sc), ε²·sc²): a power of two bringing max|d| near 1 where d² could overflow, else 1."""
    big = dmax > BIG_DEVIATION
    exponent = tl.where(big, tl.floor(_log2(tl.where(big, dmax, 1.0), ACC)), 0.0)
    sc = tl.exp2(-exponent)
    return sc, 2.0 * exponent, tl.maximum(eps2 * sc * sc, TINY)


@triton.jit
def _pool_window(xp, w_ptr, b_ptr, ch, log2_alpha, half, eps2, oh, ow, pmask, H, W,
                 K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr,
                 ASYM: tl.constexpr, FULL: tl.constexpr, SI: tl.constexpr, ACC: tl.constexpr):
    """Everything the forward and backward need about a block of windows, in registers.

    Returns (taps, windows): ``taps`` = (inside, r, ds, c, lr, e, guide taps), tuples over the K² taps of
    [BLOCK] tensors; ``windows`` = (n, g, a, D⁻¹, y − g, M, ℓ_max − M, 1/c_max, log2 c_max − log2 m,
    Σe, Σr, Σe·r, Σc, sc), [BLOCK] each.  r = I − Ĩ before the Asym clamp, ds = d·sc,
    c = ds² + ε²·sc², lr = log2(c/c_max); padded taps have r = ds = e = 0.  The output is formed as
    Ĩ + Σ w·(I − Ĩ)/Σ w, so a flat window gives exactly y = I (no rounding residue for the α-gradient
    at α = 0 to amplify) and large |I| with small spread keeps its precision.
    """
    KK: tl.constexpr = K * K
    v, inside = _window_taps(xp, oh, ow, pmask, H, W, K, S, PAD, ACC)
    if PAD == 0:
        n = tl.full(oh.shape, KK, ACC)
    else:
        count = inside[0].to(ACC)
        for t in tl.static_range(1, KK):
            count += inside[t].to(ACC)
        n = tl.maximum(count, 1.0)
    g, xg = _guide(xp, w_ptr, b_ptr, ch, v, n, oh, ow, pmask, H, W, K, S, PAD, FULL, ACC)
    r = ()
    d = ()
    for t in tl.static_range(KK):
        rt = v[t] - g
        if PAD != 0:
            rt = tl.where(inside[t], rt, 0.0)
        r = r + (rt,)
        if ASYM:
            d = d + (tl.maximum(rt, 0.0),)
        else:
            d = d + (rt,)
    if ASYM:
        dmax = _tmax(d, KK)
    else:
        dmax = tl.abs(d[0])
        for t in tl.static_range(1, KK):
            dmax = tl.maximum(dmax, tl.abs(d[t]))
    sc, log2_inv_sc2, eps2s = _window_scale(dmax, eps2, ACC)
    dmaxs = dmax * sc
    cmax = dmaxs * dmaxs + eps2s
    inv_cmax = 1.0 / cmax
    ds = ()
    c = ()
    lr = ()
    for t in tl.static_range(KK):
        dst = d[t] * sc
        ct = dst * dst + eps2s
        ds = ds + (dst,)
        c = c + (ct,)
        lr = lr + (_log2(ct * inv_cmax, ACC),)  # ≤ 0 (finite: c ≥ TINY)
    if SI:
        if PAD == 0:
            csum = _tsum(c, KK)
        else:
            csum = tl.where(inside[0], c[0], 0.0)
            for t in tl.static_range(1, KK):
                csum += tl.where(inside[t], c[t], 0.0)
        log_ratio_max = _log2(cmax * n / csum, ACC)  # log2 c_max − log2 m (the scale cancels)
    else:
        csum = cmax  # unused
        log_ratio_max = _log2(cmax, ACC) + log2_inv_sc2
    ell_max = half * log_ratio_max
    M = tl.maximum(ell_max, log2_alpha)
    a = tl.exp2(log2_alpha - M)  # exactly 0 when α = 0
    shift = ell_max - M  # ≤ 0
    e = ()
    for t in tl.static_range(KK):
        et = tl.exp2(half * lr[t] + shift)
        if PAD != 0:
            et = tl.where(inside[t], et, 0.0)
        e = e + (et,)
    sum_e = _tsum(e, KK)
    sum_r = _tsum(r, KK)
    sum_er = e[0] * r[0]
    for t in tl.static_range(1, KK):
        sum_er += e[t] * r[t]
    inv_D = 1.0 / (sum_e + a * n)
    yg = (sum_er + a * sum_r) * inv_D
    return ((inside, r, ds, c, lr, e, xg),
            (n, g, a, inv_D, yg, M, shift, inv_cmax, log_ratio_max, sum_e, sum_r, sum_er, csum, sc))


@triton.jit
def _log2_alpha(alpha_ptr, ch, ACC: tl.constexpr, LOG_PARAMS: tl.constexpr):
    """log2 α of the program's channel (−inf for α = 0), once per program.

    LOG_PARAMS: the pointer holds θα = ln α (the module's stored parameter), so log2 α = θα·log2 e
    exactly as far as rounding goes, without forming α.
    """
    alpha = tl.load(alpha_ptr + ch).to(ACC)
    if LOG_PARAMS:
        return alpha * LOG2E
    else:
        return tl.where(alpha > 0, _log2(tl.where(alpha > 0, alpha, 1.0), ACC), float("-inf"))


@triton.jit
def _half_lambda(lam_ptr, ch, ACC: tl.constexpr, LOG_PARAMS: tl.constexpr):
    """λ/2 of the program's channel, once per program (LOG_PARAMS: the pointer holds θλ = ln λ)."""
    lam = tl.load(lam_ptr + ch).to(ACC)
    if LOG_PARAMS:
        lam = tl.exp(lam)
    return lam * 0.5


# --------------------------------------------------------------------------- forward


@triton.autotune(configs=_FWD_CONFIGS, key=FORWARD_KEY,
                 prune_configs_by={"early_config_prune": _prune(_window_slots, FORWARD_TILE_BUDGET)})
@triton.jit
def _dpp_fwd_kernel(x_ptr, alpha_ptr, lam_ptr, w_ptr, b_ptr, y_ptr, eps2: tl.float64,
                    C, H, W, OW, P,
                    K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, KP: tl.constexpr,
                    ASYM: tl.constexpr, FULL: tl.constexpr, SI: tl.constexpr, LOG_PARAMS: tl.constexpr,
                    ACC: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    ch = plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pmask = offs < P
    oh = offs // OW
    ow = offs - oh * OW
    log2_alpha = _log2_alpha(alpha_ptr, ch, ACC, LOG_PARAMS)
    half = _half_lambda(lam_ptr, ch, ACC, LOG_PARAMS)
    xp = x_ptr + plane * H * W
    _, window = _pool_window(xp, w_ptr, b_ptr, ch, log2_alpha, half, _eps2_value(eps2, ACC), oh, ow, pmask, H, W,
                             K, S, PAD, ASYM, FULL, SI, ACC)
    g, yg = window[1], window[4]
    tl.store(y_ptr + plane * P + offs, (g + yg).to(y_ptr.dtype.element_ty), mask=pmask)


# --------------------------------------------------------------------------- backward


@triton.jit
def _alpha_grad(t_alpha, M, ACC: tl.constexpr):
    """t·2^(−M) formed as ±2^(log2|t| − M): 2^(−M) alone overflows at α = 0 on flat windows."""
    zero = t_alpha == 0.0
    magnitude = tl.exp2(tl.where(zero, 0.0, _log2(tl.where(zero, 1.0, tl.abs(t_alpha)), ACC) - M))
    return tl.where(zero, 0.0, tl.where(t_alpha < 0, -magnitude, magnitude))


@triton.jit
def _store_stats(stats_ptr, plane, P, offs, pmask, g, yg, inv_cmax, shift, a, gyd, si_term, g_spread, sc):
    """The 9 per-window scalars of the gather backward, plane-major: [NC, N_STATS, P] (64-bit offsets)."""
    sp = stats_ptr + plane * 9 * P + offs
    tl.store(sp, g, mask=pmask)
    tl.store(sp + P, yg, mask=pmask)
    tl.store(sp + 2 * P, inv_cmax, mask=pmask)
    tl.store(sp + 3 * P, shift, mask=pmask)
    tl.store(sp + 4 * P, a, mask=pmask)
    tl.store(sp + 5 * P, gyd, mask=pmask)
    tl.store(sp + 6 * P, si_term, mask=pmask)
    tl.store(sp + 7 * P, g_spread, mask=pmask)
    tl.store(sp + 8 * P, sc, mask=pmask)


@triton.jit
def _window_grads(xp, gy_ptr, plane, P, offs, pmask, keep, w_ptr, b_ptr, ch, log2_alpha, half, eps2c, H, W, OW,
                  K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, ASYM: tl.constexpr, FULL: tl.constexpr,
                  SI: tl.constexpr, LOG_PARAMS: tl.constexpr, ACC: tl.constexpr):
    """Backward maths of a block of windows: per-tap direct ∂L/∂I and per-window terms (see the module docstring).

    ``pmask``: the windows computed; ``keep`` (⊆ pmask): those whose α/λ terms count (the chunk's own,
    not the look-ahead windows of the single-kernel backward, which only feed their neighbours).

    LOG_PARAMS: the α term is ∂L/∂θα = α·∂L/∂α = ĝ·Σ(I − y)·2^(log2 α − M) = ĝ·Σ(I − y)·a (a ≤ 1: no
    overflow to guard against); the λ term stays ∂L/∂λ, scaled by λ once per program.
    """
    KK: tl.constexpr = K * K
    oh = offs // OW
    ow = offs - oh * OW
    taps, window = _pool_window(xp, w_ptr, b_ptr, ch, log2_alpha, half, eps2c, oh, ow, pmask, H, W,
                                K, S, PAD, ASYM, FULL, SI, ACC)
    inside, r, ds, c, lr, e, xg = taps
    n, g, a, inv_D, yg, M, shift, inv_cmax, log_ratio_max, sum_e, sum_r, sum_er, csum, sc = window
    gyd = tl.load(gy_ptr + plane * P + offs, mask=pmask, other=0.0).to(ACC) * inv_D
    # Σ_q (I_q − y) = (Σe·Σr − n·Σe·r)/D: the α-terms cancel analytically, so windows whose ρ
    # are all equal or underflowed give exactly 0 instead of a rounding residue of |I| that
    # 2^(−M) (up to 1/α) would amplify.
    sum_dev = (sum_e * sum_r - n * sum_er) * inv_D
    if LOG_PARAMS:
        alpha_term = tl.where(keep, gyd * sum_dev * a, 0.0)
    else:
        alpha_term = tl.where(keep, _alpha_grad(gyd * sum_dev, M, ACC), 0.0)
    dev = ()
    for t in tl.static_range(KK):
        if PAD != 0:
            dev = dev + (tl.where(inside[t], r[t] - yg, 0.0),)  # I_q − y
        else:
            dev = dev + (r[t] - yg,)
    # ∂L/∂λ: since Σ(I−y)·w = 0, subtracting L_max gives Σ(I−y)·e·log2(c/c_max) − a·L_max·Σ(I−y),
    # where both terms vanish on flat windows, exactly.
    dev_e_lr = dev[0] * e[0] * lr[0]
    for t in tl.static_range(1, KK):
        dev_e_lr += dev[t] * e[t] * lr[t]
    lam_term = tl.where(keep, gyd * (0.5 * LN2) * (dev_e_lr - a * log_ratio_max * sum_dev), 0.0)
    gh = gyd * half
    beta = ()
    for t in tl.static_range(KK):
        beta = beta + (gh * dev[t] * e[t],)
    if SI:
        si_term = _tsum(beta, KK) / csum
    else:
        si_term = tl.zeros_like(gyd)
    two_sc = 2.0 * sc
    gamma = ()
    for t in tl.static_range(KK):
        if SI:
            gamma = gamma + (ds[t] * two_sc * (beta[t] / c[t] - si_term),)
        else:
            gamma = gamma + (ds[t] * two_sc * (beta[t] / c[t]),)
    g_guide = -_tsum(gamma, KK)
    g_spread = g_guide if FULL else g_guide / n
    direct = ()
    for t in tl.static_range(KK):
        if FULL:
            direct = direct + (gyd * (e[t] + a) + gamma[t],)
        else:
            direct = direct + (gyd * (e[t] + a) + gamma[t] + g_spread,)
    return (oh, ow, inside, xg, direct, g_guide, alpha_term, lam_term,
            (g, yg, inv_cmax, shift, a, gyd, si_term, g_spread, sc))


@triton.jit
def _store_taps(gx_ptr, plane, H, W, oh, ow, values, inside, K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr):
    gxp = gx_ptr + plane * H * W
    for t in tl.static_range(K * K):
        row = oh * S + (t // K - PAD)
        col = ow * S + (t % K - PAD)
        tl.store(gxp + row * W + col, values[t].to(gx_ptr.dtype.element_ty), mask=inside[t])


@triton.jit
def _tap_grad(xv, inside, g, yg, inv_cmax, shift, a, gyd, si_term, spread, sc, eps2c, half,
              ASYM: tl.constexpr, FULL: tl.constexpr, ACC: tl.constexpr):
    """∂L/∂x at a pixel of value ``xv`` from one window's pooling, rebuilt from that window's stats.

    Lite adds the window's ∂L/∂Ĩ / n (``spread``); Full's guide share (∂L/∂Ĩ·F) is the caller's.  Pixels of
    no window (``inside`` false) give 0, and their r is 0 so that no |x|² overflows on the way.
    """
    r = tl.where(inside, xv - g, 0.0)
    d = r
    if ASYM:
        d = tl.maximum(d, 0.0)
    ds = d * sc
    c = ds * ds + tl.maximum(eps2c * sc * sc, TINY)
    e = tl.exp2(half * _log2(c * inv_cmax, ACC) + shift)
    beta = gyd * (r - yg) * e * half
    contrib = gyd * (e + a) + 2.0 * ds * sc * (beta / c - si_term)
    if not FULL:
        contrib += spread
    return tl.where(inside, contrib, 0.0)


@triton.jit
def _ring_store(ring, slot, pmask, stats, RING_STATS: tl.constexpr, RING: tl.constexpr):
    """A block's windows into the ring: all 9 stats (k3s2p1), or just ∂L/∂Ĩ (Full-DPP 2×2/2)."""
    if RING_STATS == 1:
        tl.store(ring + slot, stats[7], mask=pmask)
    else:
        for q in tl.static_range(RING_STATS):
            tl.store(ring + q * RING + slot, stats[q], mask=pmask)


@triton.jit
def _neighbour_grad(ring, slot, mask, xv, inside, f, ftap: tl.constexpr, eps2c, half,
                    POOL_NB: tl.constexpr, FULL: tl.constexpr, ASYM: tl.constexpr, ACC: tl.constexpr,
                    RING: tl.constexpr):
    """∂L/∂x at an owned pixel from a right / lower neighbour window (its stats in the ring, slot ``slot``):
    its pooling share (POOL_NB: overlapping windows) plus, for Full-DPP, its guide's ∂L/∂Ĩ·F[ftap]."""
    if POOL_NB:
        g = tl.load(ring + slot, mask=mask, other=0.0)
        yg = tl.load(ring + RING + slot, mask=mask, other=0.0)
        inv_cmax = tl.load(ring + 2 * RING + slot, mask=mask, other=1.0)
        shift = tl.load(ring + 3 * RING + slot, mask=mask, other=0.0)
        a = tl.load(ring + 4 * RING + slot, mask=mask, other=0.0)
        gyd = tl.load(ring + 5 * RING + slot, mask=mask, other=0.0)
        si_term = tl.load(ring + 6 * RING + slot, mask=mask, other=0.0)
        spread = tl.load(ring + 7 * RING + slot, mask=mask, other=0.0)
        sc = tl.load(ring + 8 * RING + slot, mask=mask, other=1.0)
        out = _tap_grad(xv, mask & inside, g, yg, inv_cmax, shift, a, gyd, si_term, spread, sc, eps2c, half,
                        ASYM, FULL, ACC)
        if FULL:
            out += spread * f[ftap]
    else:
        out = tl.load(ring + slot, mask=mask, other=0.0) * f[ftap]
    return out


@triton.jit
def _owned_gx(gx_ptr, ring, start, plane, H, W, OW, P, offs, own, g_guide, direct, xo, f, eps2c, half,
              POOL_NB: tl.constexpr, FULL: tl.constexpr, ASYM: tl.constexpr, ACC: tl.constexpr,
              BLOCK: tl.constexpr):
    """∂L/∂x of the pixels a block of windows owns, written once: window (i, j) owns (2i + dh, 2j + dw), dh, dw ∈ {0, 1}.

    Stride 2 with a 3-wide reach (the 3×3 guide of Full-DPP 2×2/2, the window and guide of k3s2p1) puts
    every pixel a window owns in the reach of at most that window and its right, lower and lower-right
    neighbours, never of an earlier one: row 2i + 1 is tap row 2 of window row i and tap row 0 of i + 1
    (columns alike).  ``direct``/``xo``: the owned taps' direct ∂L/∂I and values, (dh, dw) row-major;
    the neighbours' terms come from ``ring`` (the program's last 2·BLOCK windows, written before a barrier).
    """
    RING: tl.constexpr = 2 * BLOCK
    oh = offs // OW
    ow = offs - oh * OW
    rel = offs - start
    right = own & (ow + 1 < OW)
    down = own & (offs + OW < P)
    diag = right & down
    values = ()
    masks = ()
    for dh in tl.static_range(2):
        for dw in tl.static_range(2):
            if POOL_NB:  # k3s2p1: the last window row / column may own one pixel row / column only
                inside = own & (oh * 2 + dh < H) & (ow * 2 + dw < W)
            else:  # 2×2/2 windows lie inside the image
                inside = own
            v = direct[dh * 2 + dw]
            if POOL_NB:
                xv = xo[dh * 2 + dw]
            else:
                xv = v  # unused: only the neighbours' ∂L/∂Ĩ reach the pixel
            if FULL:
                v += g_guide * f[(dh + 1) * 3 + dw + 1]
            if dh == 1:  # tap (0, dw + 1) of window (i + 1, j)
                v += _neighbour_grad(ring, (rel + OW) % RING, down, xv, inside, f, dw + 1,
                                     eps2c, half, POOL_NB, FULL, ASYM, ACC, RING)
            if dw == 1:  # tap (dh + 1, 0) of window (i, j + 1)
                v += _neighbour_grad(ring, (rel + 1) % RING, right, xv, inside, f, (dh + 1) * 3,
                                     eps2c, half, POOL_NB, FULL, ASYM, ACC, RING)
            if dh == 1 and dw == 1:  # tap (0, 0) of window (i + 1, j + 1)
                v += _neighbour_grad(ring, (rel + OW + 1) % RING, diag, xv, inside, f, 0,
                                     eps2c, half, POOL_NB, FULL, ASYM, ACC, RING)
            values = values + (v,)
            masks = masks + (inside,)
    _store_taps(gx_ptr, plane, H, W, oh, ow, values, masks, 2, 2, 0)


@triton.autotune(configs=_BWD_WINDOW_CONFIGS, key=BACKWARD_KEY,
                 prune_configs_by={"early_config_prune": _window_prune(BACKWARD_TILE_BUDGET)})
@triton.jit
def _dpp_bwd_window_kernel(x_ptr, gy_ptr, alpha_ptr, lam_ptr, w_ptr, b_ptr, eps2: tl.float64,
                           gx_ptr, stats_ptr, gg_ptr, part_ptr, count_ptr, ga_ptr, gl_ptr, gw_ptr, gb_ptr,
                           N, C, H, W, OW, P, CHUNK, SPLIT,
                           K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, KP: tl.constexpr,
                           ASYM: tl.constexpr, FULL: tl.constexpr, SI: tl.constexpr,
                           FUSED_GX: tl.constexpr, RING_GX: tl.constexpr, RING_STATS: tl.constexpr,
                           WRITE_STATS: tl.constexpr, NPART: tl.constexpr, LOG_PARAMS: tl.constexpr,
                           ACC: tl.constexpr, BLOCK: tl.constexpr):
    """One pass over a chunk of windows.  FUSED_GX: ∂L/∂x of the windows' own taps (k ≤ s).

    RING_GX (Full-DPP 2×2/2, and k3s2p1 Lite and Full): the whole backward is this kernel and ∂L/∂x is
    written once, by the window owning each pixel (:func:`_owned_gx`).  Each block puts its windows'
    ∂L/∂Ĩ (2×2/2) or all 9 stats (k3s2p1) into a per-program ring of 2·BLOCK windows, and a block's ∂L/∂x
    is written one iteration later, once its right and lower neighbours are in the ring.  The loop runs
    one block past the chunk: windows past ``stop`` are computed for the ring only (their α/λ/F/b terms
    belong to the next chunk), so no neighbour is ever read before it is written.  No atomics on ∂L/∂x,
    no second launch: the neighbours' terms are recomputed from their stats, as the pixel gather does.
    """
    plane = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    ch = plane % C
    log2_alpha = _log2_alpha(alpha_ptr, ch, ACC, LOG_PARAMS)
    half = _half_lambda(lam_ptr, ch, ACC, LOG_PARAMS)
    eps2c = _eps2_value(eps2, ACC)
    xp = x_ptr + plane * H * W
    start = split * CHUNK
    stop = tl.minimum(start + CHUNK, P)
    acc_alpha = tl.zeros((BLOCK,), ACC)
    acc_lam = tl.zeros((BLOCK,), ACC)
    acc_bias = tl.zeros((BLOCK,), ACC)
    acc_weight = ()
    for t in tl.static_range(9 if FULL else 1):
        acc_weight = acc_weight + (tl.zeros((BLOCK,), ACC),)
    if RING_GX:
        ring = stats_ptr + (plane * SPLIT + split) * (RING_STATS * 2 * BLOCK)
        f = ()
        if FULL:
            for t in tl.static_range(9):
                f = f + (tl.load(w_ptr + ch * 9 + t).to(ACC),)
        # the block whose ∂L/∂x is written next iteration (none yet)
        pend_offs = start + tl.arange(0, BLOCK)
        pend_own = pend_offs < 0
        pend_gg = tl.zeros((BLOCK,), ACC)
        pend_direct = (pend_gg, pend_gg, pend_gg, pend_gg)
        pend_x = pend_direct if RING_STATS > 1 else ()  # the owned taps' values (k3s2p1 neighbours need them)
        blocks_end = CHUNK + BLOCK  # one look-ahead block: the last block's right and lower neighbours
    else:
        blocks_end = CHUNK
    # A while loop, not range(start, stop, BLOCK): Triton 3.6's interpreter passes integer arguments
    # as 1-element arrays, which range() cannot take.
    block_start = 0
    while block_start < blocks_end:
        offs = start + block_start + tl.arange(0, BLOCK)
        block_start += BLOCK
        own = offs < stop
        if RING_GX:
            pmask = offs < P
        else:
            pmask = own
        oh, ow, inside, xg, direct, g_guide, alpha_term, lam_term, stats = _window_grads(
            xp, gy_ptr, plane, P, offs, pmask, own, w_ptr, b_ptr, ch, log2_alpha, half, eps2c, H, W, OW,
            K, S, PAD, ASYM, FULL, SI, LOG_PARAMS, ACC)
        acc_alpha += alpha_term
        acc_lam += lam_term
        if FULL:
            gg_kept = tl.where(own, g_guide, 0.0)
            new_weight = ()
            for t in tl.static_range(9):
                new_weight = new_weight + (acc_weight[t] + gg_kept * xg[t],)
            acc_weight = new_weight
            acc_bias += gg_kept
        if RING_GX:
            _ring_store(ring, (offs - start) % (2 * BLOCK), pmask, stats, RING_STATS, 2 * BLOCK)
            tl.debug_barrier()
            _owned_gx(gx_ptr, ring, start, plane, H, W, OW, P, pend_offs, pend_own, pend_gg, pend_direct, pend_x,
                      f, eps2c, half, RING_STATS > 1, FULL, ASYM, ACC, BLOCK)
            tl.debug_barrier()  # the ring slots read above are overwritten next iteration
            pend_offs = offs
            pend_own = own
            pend_gg = g_guide
            own_direct = ()
            own_x = ()
            for t in tl.static_range(4):  # the owned taps (dh, dw): tap (dh + PAD, dw + PAD)
                own_direct = own_direct + (direct[(t // 2 + PAD) * K + t % 2 + PAD],)
                if RING_STATS > 1:
                    own_x = own_x + (xg[(t // 2 + PAD) * K + t % 2 + PAD],)
            pend_direct = own_direct
            pend_x = own_x
        elif FUSED_GX:
            _store_taps(gx_ptr, plane, H, W, oh, ow, direct, inside, K, S, PAD)
            if FULL:
                tl.store(gg_ptr + plane * P + offs, g_guide, mask=pmask)
        if WRITE_STATS:
            g, yg, inv_cmax, shift, a, gyd, si_term, g_spread, sc = stats
            _store_stats(stats_ptr, plane, P, offs, pmask, g, yg, inv_cmax, shift, a, gyd, si_term, g_spread, sc)
    pp = part_ptr + (plane * SPLIT + split) * NPART
    tl.store(pp, tl.sum(acc_alpha, axis=0))
    if LOG_PARAMS:  # ∂L/∂θλ = λ·∂L/∂λ, λ the program's one channel's
        tl.store(pp + 1, tl.sum(acc_lam, axis=0) * (2.0 * half))
    else:
        tl.store(pp + 1, tl.sum(acc_lam, axis=0))
    if FULL:
        tl.store(pp + 2, tl.sum(acc_bias, axis=0))
        for t in tl.static_range(9):
            tl.store(pp + 3 + t, tl.sum(acc_weight[t], axis=0))
    # The last program to finish sums every program's partials in a fixed order (deterministic)
    # and writes the parameter gradients: no reduction or copy launches after the kernel.
    tl.debug_barrier()
    finished = tl.atomic_add(count_ptr, 1, sem="acq_rel")
    if finished == N * C * SPLIT - 1:
        _reduce_partials(part_ptr, ga_ptr, gl_ptr, gw_ptr, gb_ptr, N, C, SPLIT, NPART, FULL, ACC, BLOCK)
        tl.atomic_xchg(count_ptr, 0)  # ready for the next launch (and for CUDA-graph replays)


@triton.jit
def _reduce_partials(part_ptr, ga_ptr, gl_ptr, gw_ptr, gb_ptr, N, C, SPLIT, NPART: tl.constexpr,
                     FULL: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Σ over (n, split) of the partials [N, C, SPLIT, NPART], channels along the block, in a fixed order."""
    c0 = 0
    while c0 < C:
        ch = c0 + tl.arange(0, BLOCK)
        cmask = ch < C
        sums = ()
        for q in tl.static_range(NPART):
            sums = sums + (tl.zeros((BLOCK,), ACC),)
        n = 0
        while n < N:
            sp = 0
            while sp < SPLIT:
                base = part_ptr + ((n * C + ch).to(tl.int64) * SPLIT + sp) * NPART
                new = ()
                for q in tl.static_range(NPART):
                    new = new + (sums[q] + tl.load(base + q, mask=cmask, other=0.0, cache_modifier=".cg"),)
                sums = new
                sp += 1
            n += 1
        tl.store(ga_ptr + ch, sums[0].to(ga_ptr.dtype.element_ty), mask=cmask)
        tl.store(gl_ptr + ch, sums[1].to(gl_ptr.dtype.element_ty), mask=cmask)
        if FULL:
            tl.store(gb_ptr + ch, sums[2].to(gb_ptr.dtype.element_ty), mask=cmask)
            for t in tl.static_range(9):
                tl.store(gw_ptr + ch * 9 + t, sums[3 + t].to(gw_ptr.dtype.element_ty), mask=cmask)
        c0 += BLOCK


@triton.autotune(configs=_PIXEL_CONFIGS, key=PIXEL_KEY,
                 prune_configs_by={"early_config_prune": _prune(_pixel_slots, PIXEL_TILE_BUDGET)}, restore_value=["gx_ptr"])
@triton.jit
def _dpp_bwd_input_kernel(x_ptr, lam_ptr, w_ptr, eps2: tl.float64, stats_ptr, gg_ptr, gx_ptr,
                          C, H, W, OH, OW, P, GG_PLANE,
                          K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr,
                          CI: tl.constexpr, CP: tl.constexpr, GI: tl.constexpr, GP: tl.constexpr,
                          ASYM: tl.constexpr, FULL: tl.constexpr, POOL: tl.constexpr, GUIDE: tl.constexpr,
                          ACCUM: tl.constexpr, LOG_PARAMS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    ch = plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pmask = offs < H * W
    h = offs // W
    w = offs - h * W
    gx_ptrs = gx_ptr + plane * H * W + offs
    if ACCUM:
        gx = tl.load(gx_ptrs, mask=pmask, other=0.0).to(ACC)
    else:
        gx = tl.zeros((BLOCK,), ACC)
    if POOL:  # the ≤ CI² windows (i, j) containing pixel (h, w)
        eps2c = _eps2_value(eps2, ACC)
        half = _half_lambda(lam_ptr, ch, ACC, LOG_PARAMS)
        xv = tl.load(x_ptr + plane * H * W + offs, mask=pmask, other=0.0).to(ACC)
        i0 = (h + PAD) // S
        j0 = (w + PAD) // S
        for u in tl.static_range(CI * CI):
            i = i0 - u // CI
            j = j0 - u % CI
            inside = (pmask & (i >= 0) & (i < OH) & (j >= 0) & (j < OW)
                      & (h + PAD - i * S < K) & (w + PAD - j * S < K))
            sp = stats_ptr + plane * 9 * P + i * OW + j
            g = tl.load(sp, mask=inside, other=0.0)
            yg = tl.load(sp + P, mask=inside, other=0.0)
            inv_cmax = tl.load(sp + 2 * P, mask=inside, other=1.0)
            shift = tl.load(sp + 3 * P, mask=inside, other=0.0)
            a = tl.load(sp + 4 * P, mask=inside, other=0.0)
            gyd = tl.load(sp + 5 * P, mask=inside, other=0.0)
            si_term = tl.load(sp + 6 * P, mask=inside, other=0.0)
            sc = tl.load(sp + 8 * P, mask=inside, other=1.0)
            if FULL:
                spread = sc  # unused: Full's guide share comes below
            else:
                spread = tl.load(sp + 7 * P, mask=inside, other=0.0)
            gx += _tap_grad(xv, inside, g, yg, inv_cmax, shift, a, gyd, si_term, spread, sc, eps2c, half,
                            ASYM, FULL, ACC)
    if GUIDE:  # the ≤ GI² guide filters (i, j) reading pixel (h, w)
        i0 = (h + 1) // S
        j0 = (w + 1) // S
        for u in tl.static_range(GI * GI):
            i = i0 - u // GI
            j = j0 - u % GI
            dy = h + 1 - i * S
            dx = w + 1 - j * S
            inside = pmask & (i >= 0) & (i < OH) & (j >= 0) & (j < OW) & (dy < 3) & (dx < 3)
            gg = tl.load(gg_ptr + plane * GG_PLANE + i * OW + j, mask=inside, other=0.0)
            f = tl.load(w_ptr + ch * 9 + dy * 3 + dx, mask=inside, other=0.0).to(ACC)
            gx += gg * f
    tl.store(gx_ptrs, gx.to(gx_ptr.dtype.element_ty), mask=pmask)


# --------------------------------------------------------------------------- launch plans

#: ``POOLBENCH_TRITON_AUTOTUNE=0``: launch every kernel with one fixed config per shape (the kept
#: config with the most windows per thread, the one the static kernel report counts) instead of
#: autotuning; checks and tests use it so a new shape costs one compile, not one per config.
AUTOTUNE_ENV = "POOLBENCH_TRITON_AUTOTUNE"
_OFF = frozenset(("0", "false", "False", "no", "off"))


def autotune_from_environment() -> bool:
    """What ``POOLBENCH_TRITON_AUTOTUNE`` asks for now: autotune unless it is 0/false/no/off."""
    return os.environ.get(AUTOTUNE_ENV) not in _OFF


#: Whether launches autotune, read from the environment once, when this module is imported: every
#: call's plan key holds it, and reading ``os.environ`` costs ~0.7 µs a call (a twentieth of the
#: whole host path).  A process that changes its mind later calls :func:`set_autotune`.
AUTOTUNE = autotune_from_environment()


def set_autotune(enabled: bool) -> None:
    """Autotune later launches (True) or give each kernel one fixed config per shape (False)."""
    global AUTOTUNE
    if not isinstance(enabled, bool):
        raise TypeError(f"set_autotune takes a bool, got {type(enabled).__name__}")
    AUTOTUNE = enabled


def autotune_enabled() -> bool:
    """Whether launches autotune (the default) or take one fixed config (see :data:`AUTOTUNE`)."""
    return AUTOTUNE


def fixed_config(kernel, named_args: dict):
    """The one config of ``kernel`` used without autotuning: the kept config with the most windows per thread."""
    kept = kernel.early_config_prune(kernel.configs, named_args) if kernel.early_config_prune else kernel.configs
    return max(kept, key=windows_per_thread)


@dataclass
class Launch:
    """One kernel launch: the autotuned kernel, its grid and its arguments.

    The launchers run these; the static kernel report compiles exactly these argument
    specialisations (built on meta tensors) for a GPU architecture without a GPU.
    ``config`` set: the kernel runs with that config (no autotuning) on a fixed grid.
    """

    kernel: Any
    grid: Callable | tuple
    args: tuple
    constexprs: dict = field(default_factory=dict)
    config: Any = None

    def __call__(self) -> None:
        if self.config is None:
            self.kernel[self.grid](*self.args, **self.constexprs)
        else:
            self.kernel.fn[self.grid](*self.args, **self.constexprs, **self.config.all_kwargs())


_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def _cast(t, acc):
    """A parameter in the compute dtype, contiguous (no copy when it already is)."""
    if t is None or (t.dtype == acc and t.is_contiguous()):
        return t
    return t.to(dtype=acc).contiguous()


def _geometry(shape, kernel_size, stride, padding):
    n, c, h, w = shape
    oh, ow = pooled_size(h, kernel_size, stride, padding), pooled_size(w, kernel_size, stride, padding)
    if triton.cdiv(max(h * w, oh * ow), MIN_BLOCK) > MAX_GRID_Y:
        # One grid row per (n, c) plane, blocks of a plane along the grid's y axis.
        raise ValueError(f"the triton DPP tier handles planes of at most {MAX_GRID_Y * MIN_BLOCK} pixels, "
                         f"got {h}x{w} -> {oh}x{ow}; use the vectorized or cuda tier")
    return n, c, h, w, oh, ow


def _eps2_argument(eps2: float, device):
    return torch.tensor([eps2], dtype=torch.float64, device=device) if INTERPRET else float(eps2)


def _launch_all(x, bounds, tensors) -> None:
    """Launch each bound kernel with its tensor arguments on x's GPU, not the current one (Triton launches on
    the current device)."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        with torch.cuda.device(x.device):
            _launch_all(x, bounds, tensors)
        return
    for bound, args in zip(bounds, tensors):
        bound.run(*args, *bound.scalars, **bound.kwargs)


@dataclass
class _Plan:
    """Everything about a call that depends only on its key (see :func:`plan_key`), built and validated once."""

    out_shape: tuple
    acc: torch.dtype
    launches: list  # (kernel, grid, fixed config or None, constexprs, extra scalar arguments)
    dims: tuple  # (n, c, h, w, oh, ow, p)
    eps2: Any
    split: int = 1
    npart: int = 2
    gx_zeroed: bool = False
    overlap: bool = False
    scratch: dict = field(default_factory=dict)  # the window kernel's (counter, partials) per stream (:func:`_scratch`)
    ring: int = 0  # single-kernel backward (RING_GX): ring slots per program (values × 2·largest BLOCK)


#: Launch plans per :func:`plan_key`; a plan is never shared between shapes, strides, dtypes, devices or settings.
_PLANS: dict = {}
#: Bound on the plan cache (a long sweep over shapes must not grow it without limit).
MAX_PLANS = 512


def plan_key(direction, x, alpha, weight, kernel_size, stride, padding, asym, eps2, scale_invariant,
             log_params=False) -> tuple:
    """What a cached launch plan depends on: x's shape, strides, dtype and device, the parameter dtype, the settings."""
    return (direction, x.shape, x.stride(), x.dtype, x.device, alpha.dtype, weight is not None,
            kernel_size, stride, padding, asym, eps2, scale_invariant, bool(log_params), AUTOTUNE)


def _remember(key, plan: _Plan) -> _Plan:
    """Cache a plan just built (and so validated: a new key is never launched unchecked) under ``key``.

    Callers look the key up in ``_PLANS`` themselves and build only on a miss (no closure per call).
    """
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _empty(x, dtype, *size):
    """A fresh tensor of ``size`` on x's device; sizes as separate ints and no dtype argument when it is
    x's own take half the host time of ``torch.empty(shape, dtype=, device=)`` (~0.9 vs 1.7 µs)."""
    return x.new_empty(*size) if dtype == x.dtype else x.new_empty(size, dtype=dtype)


@dataclass
class _Bound:
    """A kernel bound to a grid and config once per plan; ``run(*args)`` launches it."""

    kernel: Any
    grid: Callable | tuple
    config: Any
    constexprs: dict
    scalars: tuple
    run: Callable = None
    kwargs: dict = None

    def __post_init__(self):
        if self.config is None:  # autotuned: the autotuner picks BLOCK, the grid follows
            self.run, self.kwargs = self.kernel[self.grid], dict(self.constexprs)
        else:
            self.run, self.kwargs = self.kernel.fn[self.grid], {**self.constexprs, **self.config.all_kwargs()}

    def launch(self, tensors: tuple) -> Launch:
        return Launch(self.kernel, self.grid, tensors + self.scalars, self.constexprs, self.config)


def _bind_launch(kernel, grid_of, args, constexprs, scalars) -> _Bound:
    """A fixed config and grid without autotuning (or in the interpreter), else the autotuner's grid."""
    if AUTOTUNE and not INTERPRET:
        return _Bound(kernel, lambda meta: grid_of(meta["BLOCK"]), None, constexprs, scalars)
    named = {**dict(zip(kernel.fn.arg_names, args)), **constexprs}
    config = kernel.configs[0] if INTERPRET else fixed_config(kernel, named)
    return _Bound(kernel, grid_of(config.kwargs["BLOCK"]), config, constexprs, scalars)


def _forward_plan_of(x, alpha, weight, kernel_size, stride, padding, asym, eps2, scale_invariant,
                     log_params) -> _Plan:
    acc = compute_dtype(x.dtype)
    n, c, h, w, oh, ow = _geometry(x.shape, kernel_size, stride, padding)
    nc, p = n * c, oh * ow
    eps2_arg = _eps2_argument(eps2, x.device)
    constexprs = dict(K=kernel_size, S=stride, PAD=padding, KP=triton.next_power_of_2(kernel_size * kernel_size),
                      ASYM=bool(asym), FULL=weight is not None, SI=bool(scale_invariant),
                      LOG_PARAMS=bool(log_params), ACC=_TL_DTYPE[acc])
    scalars = (c, h, w, ow, p)
    probe = (x, alpha, alpha, alpha, alpha, x, eps2_arg) + scalars
    launch = _bind_launch(_dpp_fwd_kernel, lambda block: (nc, triton.cdiv(p, block)), probe, constexprs, scalars)
    return _Plan((n, c, oh, ow), acc, [launch] if nc * p else [], (n, c, h, w, oh, ow, p), eps2_arg)


def _forward_call(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant,
                  log_params):
    """(y, plan, kernel tensor arguments) of a forward call; the plan is cached per :func:`plan_key`."""
    x = x.contiguous()
    key = plan_key("forward", x, alpha, weight, kernel_size, stride, padding, asym, eps2, scale_invariant, log_params)
    plan = _PLANS.get(key) or _remember(key, _forward_plan_of(x, alpha, weight, kernel_size, stride, padding, asym,
                                                              eps2, scale_invariant, log_params))
    y = _empty(x, x.dtype, *plan.out_shape)  # x is contiguous, so is y
    acc = plan.acc
    alpha, lam = _cast(alpha, acc), _cast(lam, acc)
    weight, bias = (_cast(weight, acc), _cast(bias, acc)) if weight is not None else (alpha, alpha)
    return y, plan, (x, alpha, lam, weight, bias, y, plan.eps2)


def forward_plan(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant,
                 log_params=False):
    """(y, launches) of the forward; y (N, C, OH, OW) in x's dtype is filled by the launches."""
    y, plan, tensors = _forward_call(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2,
                                     scale_invariant, log_params)
    return y, [bound.launch(tensors) for bound in plan.launches]


def forward(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant,
            log_params=False):
    """DPP forward: y (N, C, OH, OW) in x's dtype; ``log_params``: alpha, lam hold ln α, ln λ."""
    y, plan, tensors = _forward_call(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2,
                                     scale_invariant, log_params)
    _launch_all(x, plan.launches, (tensors,))  # one launch (none for an empty input)
    return y


@dataclass
class BackwardPlan:
    """The backward's launches and the tensors its result is read from afterwards."""

    launches: list
    gx: torch.Tensor
    grads: tuple  # (α, λ, F (C, 1, 3, 3) or empty, b or empty), written by the window kernel


def _backward_plan_of(x, alpha, weight, kernel_size, stride, padding, asym, eps2, scale_invariant,
                      log_params) -> _Plan:
    full = weight is not None
    acc = compute_dtype(x.dtype)
    n, c, h, w, oh, ow = _geometry(x.shape, kernel_size, stride, padding)
    nc, p = n * c, oh * ow
    k, s, pad = kernel_size, stride, padding
    overlap = k > s
    exact_tiling = k == s and pad == 0 and h % k == 0 and w % k == 0
    npart = 12 if full else 2
    split = max(1, min(triton.cdiv(p, 64), triton.cdiv(TARGET_PROGRAMS, nc)))
    chunk = triton.cdiv(p, split)
    split = triton.cdiv(p, chunk)
    eps2_arg = _eps2_argument(eps2, x.device)
    flags = dict(K=k, S=s, PAD=pad, ASYM=bool(asym), FULL=full, LOG_PARAMS=bool(log_params), ACC=_TL_DTYPE[acc])
    gg_plane = N_STATS * p if overlap else p
    # One kernel (∂L/∂x written once by the window owning each pixel, neighbours through a ring) for the
    # geometries where a pixel's windows and guides are its owner and the owner's right/lower neighbours
    # (Full-DPP 2×2/2, k3s2p1), when a block can hold a window's lower-right neighbour (OW < BLOCK);
    # otherwise the overlap and the guide's share of ∂L/∂x come from the pixel gather, a second launch.
    max_block = max(config.kwargs["BLOCK"] for config in _dpp_bwd_window_kernel.configs)
    ring_gx = ((k, s, pad) == (3, 2, 1) or (full and (k, s, pad) == (2, 2, 0))) and ow < max_block
    ring_stats = N_STATS if overlap else 1
    window_scalars = (n, c, h, w, ow, p, chunk, split)
    window_constexprs = dict(KP=triton.next_power_of_2(k * k), SI=bool(scale_invariant), FUSED_GX=not overlap,
                             RING_GX=ring_gx, RING_STATS=ring_stats, WRITE_STATS=overlap and not ring_gx,
                             NPART=npart, **flags)
    probe = (x, x, alpha, alpha, alpha, alpha, eps2_arg, x, x, x, x, x, alpha, alpha, alpha, alpha) + window_scalars
    launches = [_bind_launch(_dpp_bwd_window_kernel, lambda block: (nc, split), probe, window_constexprs,
                             window_scalars)]
    if not ring_gx and (overlap or full):
        ci, gi = -(-k // s), -(-3 // s)
        pixel_scalars = (c, h, w, oh, ow, p, gg_plane)
        pixel_constexprs = dict(CI=ci, CP=triton.next_power_of_2(ci * ci), GI=gi, GP=triton.next_power_of_2(gi * gi),
                                POOL=overlap, GUIDE=full, ACCUM=not overlap, **flags)
        probe = (x, alpha, alpha, eps2_arg, x, x, x) + pixel_scalars
        launches.append(_bind_launch(_dpp_bwd_input_kernel, lambda block: (nc, triton.cdiv(h * w, block)), probe,
                                     pixel_constexprs, pixel_scalars))
    return _Plan(tuple(x.shape), acc, launches, (n, c, h, w, oh, ow, p), eps2_arg, split=split, npart=npart,
                 gx_zeroed=not (overlap or exact_tiling), overlap=overlap,
                 ring=ring_stats * 2 * max_block if ring_gx else 0)


@functools.cache
def _raw_stream_of():
    """Triton's own current-stream query (the stream its launches go to), looked up once."""
    from triton.runtime import driver

    return driver.active.get_current_stream


def stream_key(device: torch.device):
    """The stream a launch on ``device`` goes to now (its raw handle); None off the GPU (one stream there)."""
    if device.type != "cuda" or INTERPRET:
        return None
    return _raw_stream_of()(device.index)


def _scratch(plan: _Plan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The window kernel's finish counter and partial-sum buffer for the stream this call launches on.

    Each program of the window kernel writes its α/λ/F/b partial sums to the buffer; the program that
    finds, through the counter, that it is the last one reduces them and resets the counter to 0 for
    the next launch.  Launches in one stream run in order and can share both; two same-shape backwards
    in two streams can run at once, and sharing one counter each would count the other's programs (a
    reduction over unfinished partials, or none at all).  Hence one (counter, partials) pair per (plan,
    stream), made once (the counter zeroed on that stream, so before its first launch there): no extra
    launch and no allocation per call.  The partials hold 2 (Lite) or 12 (Full) values per program, at most
    (N·C + ``TARGET_PROGRAMS``)·12 floats (~100 kB for VGG-16's first pooling at batch 32), so keeping them
    with the plan costs little.

    Inside a CUDA graph capture the pair is made fresh instead and not kept: the graph's own memory pool
    then holds it for as long as the graph lives (a zeroing launch recorded in the graph), whereas a
    cached pair could be freed under a captured graph when the plan cache is cleared.
    """
    if capturing(device):
        return _new_scratch(plan, device)
    key = stream_key(device)
    scratch = plan.scratch.get(key)
    if scratch is None:
        scratch = plan.scratch[key] = _new_scratch(plan, device)
    return scratch


def _new_scratch(plan: _Plan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    n, c = plan.dims[:2]
    return (torch.zeros((1,), dtype=torch.int32, device=device),
            torch.empty((n * c * plan.split * plan.npart,), dtype=plan.acc, device=device))


def capturing(device: torch.device) -> bool:
    """Whether the current CUDA stream is capturing a graph (never off the GPU)."""
    return device.type == "cuda" and not INTERPRET and torch.cuda.is_current_stream_capturing()


def _backward_call(grad, x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant,
                   log_params):
    """(plan, gx, parameter gradients, tensor arguments per launch) of a backward call."""
    full = weight is not None
    x, grad = x.contiguous(), grad.contiguous()
    key = plan_key("backward", x, alpha, weight, kernel_size, stride, padding, asym, eps2, scale_invariant,
                   log_params)
    plan = _PLANS.get(key) or _remember(key, _backward_plan_of(x, alpha, weight, kernel_size, stride, padding, asym,
                                                               eps2, scale_invariant, log_params))
    acc = plan.acc
    n, c, h, w, oh, ow, p = plan.dims
    # Pixels outside every window (k < s, ragged edges) get no write from the window kernel.
    # ``*_like`` allocations: half the host cost of torch.empty(shape, dtype=, device=); every
    # parameter is a dense (C,) or (C, 1, 3, 3) tensor, so its gradient comes out contiguous too.
    gx = torch.zeros_like(x) if plan.gx_zeroed else torch.empty_like(x)
    g_alpha, g_lam = torch.empty_like(alpha), torch.empty_like(lam)
    if full:
        g_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
        g_bias = torch.empty_like(bias)
        outs = (g_alpha, g_lam, g_weight, g_bias)
    else:
        g_weight = g_bias = None
        outs = (g_alpha, g_lam, g_alpha, g_alpha)  # the kernel never writes the last two for Lite
    if plan.ring:  # per-program ring of the single-kernel backward (∂L/∂Ĩ, or the 9 stats for k3s2p1)
        stats = gg = _empty(x, acc, n * c * plan.split * plan.ring)
    elif plan.overlap:  # per-window stats for the gather; row 7 is the guide gradient
        stats = _empty(x, acc, n * c, N_STATS, p)
        gg = stats[:, 7]
    elif full:  # the guide gradient of each window, for the guide gather
        stats = gg = _empty(x, acc, n * c * p)
    else:
        stats = gg = gx  # never read
    alpha_c, lam_c = _cast(alpha, acc), _cast(lam, acc)
    weight_c, bias_c = (_cast(weight, acc), _cast(bias, acc)) if full else (alpha_c, alpha_c)
    counter, partials = _scratch(plan, x.device)
    tensors = [(x, grad, alpha_c, lam_c, weight_c, bias_c, plan.eps2, gx, stats, gg, partials, counter) + outs]
    if len(plan.launches) > 1:
        tensors.append((x, lam_c, weight_c, plan.eps2, stats, gg, gx))
    return plan, gx, (g_alpha, g_lam, g_weight, g_bias), tensors


def backward_plan(grad, x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant,
                  log_params=False):
    """Launches of the backward: the window kernel, then (overlap or Full-DPP) the pixel gather."""
    plan, gx, grads, tensors = _backward_call(grad, x, alpha, lam, weight, bias, kernel_size, stride, padding, asym,
                                              eps2, scale_invariant, log_params)
    return BackwardPlan([bound.launch(args) for bound, args in zip(plan.launches, tensors)], gx, grads)


def backward(grad, x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant,
             log_params=False):
    """Gradients (x, α, λ, F, b) of DPP; F and b grads are None for Lite-DPP.

    ``log_params``: alpha, lam hold ln α, ln λ and the gradients are w.r.t. them (∂L/∂θ = α·∂L/∂α, λ·∂L/∂λ).

    The parameter gradients are reduced inside the window kernel (fixed order, deterministic) and
    written in the parameters' dtypes: no launch besides the kernels.
    """
    plan, gx, grads, tensors = _backward_call(grad, x, alpha, lam, weight, bias, kernel_size, stride, padding, asym,
                                              eps2, scale_invariant, log_params)
    _launch_all(x, plan.launches, tensors)
    return (gx, *grads)


__all__ = ["AUTOTUNE_ENV", "INTERPRET", "Launch", "autotune_enabled", "backward", "backward_plan", "forward",
           "forward_plan", "plan_key", "stream_key"]
