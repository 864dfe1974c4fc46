"""Triton kernels of the DPP ``triton`` tier (forward and backward) and their launchers.

Import this module only through :mod:`impls.dpp_triton`: Triton decides at
*kernel definition* time whether to compile for the GPU or to run in its
Python interpreter (``TRITON_INTERPRET=1``, which accepts CPU tensors), so the
environment variable must be set before this module is first imported.
:data:`INTERPRET` records which mode the kernels were defined in.

Maths (Saeedan et al., CVPR 2018, eq. 4-10), per output position p and channel c, over the valid
(non-padded) taps q of the window:

    d_q = I[q] − Ĩ[p]            (Asym: max(0, ·)),   c_q = d_q² + ε²
    ℓ_q = (λ/2)·(log c_q − log m),  m = mean_q c_q if scale-invariant else 1
    M   = max(max_q ℓ_q, log α),    w_q ∝ e^(ℓ_q − M) + e^(log α − M)
    y   = Σ w_q·I[q] / Σ w_q

Because λ ≥ 0, max_q ℓ_q sits at the tap with the largest c_q, so
``e^(ℓ_q − M) = exp((λ/2)·log(c_q / c_max) + (ℓ_max − M))``: the exponent is
formed from a ratio ≤ 1 instead of the difference of two large logs, which
keeps full relative precision at λ = 200 and |I| = 1e4.  α = 0 gives
``log α = −inf`` and an α-term of exactly 0 (never 0·inf).

Layout: every kernel works on one (n, c) plane per program row
(``program_id(0)``), so a channel's α, λ, F, b are scalars of the program and
per-channel gradient reductions are per-program partial sums, summed by
``torch.sum`` afterwards (deterministic: no atomics anywhere).  Windows are
2-D register tiles ``[BLOCK outputs, KP taps]`` (KP = next power of two ≥ k²),
so each input value is loaded once per window and all passes over the window
run in registers.

Backward recomputes the weights from x (nothing but the inputs is saved):

* ``_dpp_bwd_window_kernel``: one pass per window gives y, the weights, the
  α/λ (and F/b) partial sums and the gradient w.r.t. the guide Ĩ.  When windows
  cannot overlap (k ≤ s) it also writes ∂L/∂x for its own taps directly
  (``FUSED_GX``); otherwise it stores 8 per-window scalars ("stats").
* ``_dpp_bwd_input_kernel``: a gather over input pixels (no scatter, so no
  atomics): each pixel sums its contributions from the ≤ ⌈k/s⌉² windows that
  contain it (from the stats) and, for Full-DPP, from the ≤ ⌈3/s⌉² guide
  filters that read it (``gx += Σ ∂L/∂Ĩ · F``).

Gradient formulas (D = Σ_q w_q, ĝ = ∂L/∂y / D, e_q = e^(ℓ_q − M)):

    ∂L/∂α  = ĝ · e^(−M) · Σ_q (I_q − y),   Σ_q (I_q − y) = (Σe·Σ(I−Ĩ) − n·Σe·(I−Ĩ))/D
    ∂L/∂λ  = ĝ · Σ_q (I_q − y)·e_q·(log c_q − log m)/2
           = ĝ/2 · (Σ_q (I_q − y)·e_q·log(c_q/c_max) − a·(log c_max − log m)·Σ_q (I_q − y))
    β_q    = ĝ · (I_q − y)·e_q·λ/2                        (= ∂L/∂log c_q)
    γ_q    = 2·d_q·(β_q / c_q − [SI] Σ_j β_j / Σ_j c_j)    (= ∂L/∂d_q)
    ∂L/∂I_q (direct) = ĝ·w_q + γ_q,    ∂L/∂Ĩ = −Σ_q γ_q
    Lite: ∂L/∂I_q += (∂L/∂Ĩ)/n;   Full: ∂L/∂I[tap t] += ∂L/∂Ĩ·F_t, ∂L/∂F_t += ∂L/∂Ĩ·I[tap t], ∂L/∂b += ∂L/∂Ĩ
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

#: True when the kernels run in Triton's interpreter (CPU tensors, slow, for testing).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: Per-window scalars the backward stores when windows overlap (k > s).
N_STATS = 8  # centre Ĩ, y − Ĩ, c_max, ℓ_max − M, α-term, ∂L/∂y / D, SI term, ∂L/∂Ĩ (Lite: / n)

#: Programs the backward's window kernel aims for (it splits planes into chunks
#: so that small N·C still fills the GPU; chunk boundaries do not depend on the
#: autotuned BLOCK, so the partial sums are reproducible for a given config).
TARGET_PROGRAMS = 1024


def _configs(candidates):
    """Autotune candidates (BLOCK, num_warps) on GPU; one small config in the interpreter (no benchmarking)."""
    if INTERPRET:
        return [triton.Config({"BLOCK": MIN_BLOCK}, num_warps=1)]
    return [triton.Config({"BLOCK": block}, num_warps=warps) for block, warps in candidates]


def _prune(width_arg):
    """Drop configs whose register tile BLOCK × taps is too large (keeps at least the smallest)."""

    def prune(configs, named_args, **kwargs):
        width = kwargs.get(width_arg, named_args.get(width_arg, 1))
        kept = [c for c in configs if c.kwargs["BLOCK"] * width <= 8192]
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK"])]

    return prune


#: Smallest BLOCK of any config: bounds the grid's second dimension (CUDA allows 65535 there).
MIN_BLOCK = 64
_WINDOW_CONFIGS = _configs(((64, 2), (128, 2), (128, 4), (256, 4), (512, 4), (512, 8), (1024, 8)))
_PIXEL_CONFIGS = _configs(((128, 2), (256, 4), (512, 4), (1024, 4), (1024, 8)))
MAX_GRID_Y = 65535


# --------------------------------------------------------------------------- shared inline maths


@triton.jit
def _guide_taps(xp, oh, ow, pmask, H, W, S: tl.constexpr, ACC: tl.constexpr):
    """The 3×3 neighbourhood of (oh·s, ow·s), zero outside the image (conv padding 1): [BLOCK, 16]."""
    t = tl.arange(0, 16)
    r = oh[:, None] * S - 1 + (t // 3)[None, :]
    col = ow[:, None] * S - 1 + (t % 3)[None, :]
    inside = pmask[:, None] & (t < 9)[None, :] & (r >= 0) & (r < H) & (col >= 0) & (col < W)
    return tl.load(xp + r * W + col, mask=inside, other=0.0).to(ACC)


@triton.jit
def _pool_window(xp, w_ptr, b_ptr, ch, alpha, half, eps2, oh, ow, pmask, H, W,
                 K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, KP: tl.constexpr,
                 ASYM: tl.constexpr, FULL: tl.constexpr, SI: tl.constexpr, ACC: tl.constexpr):
    """Everything the forward and backward need about a block of windows, in registers.

    Returns (v, valid, n, g, r, d, c, lr, e, a, D, y − g, M, cmax, csum, log m, ℓ_max − M): taps
    [BLOCK, KP] and per-window [BLOCK] values; r = I − Ĩ before the Asym clamp, lr = log(c/c_max);
    invalid taps have v = r = lr = e = 0.  The output is formed as Ĩ + Σ w·(I − Ĩ)/Σ w, so a flat window gives exactly
    y = I (no rounding residue for the α-gradient at α = 0 to amplify) and large |I| with small
    spread keeps its precision.
    """
    t = tl.arange(0, KP)
    row = oh[:, None] * S - PAD + (t // K)[None, :]
    col = ow[:, None] * S - PAD + (t % K)[None, :]
    valid = pmask[:, None] & (t < K * K)[None, :] & (row >= 0) & (row < H) & (col >= 0) & (col < W)
    v = tl.load(xp + row * W + col, mask=valid, other=0.0).to(ACC)
    n = tl.maximum(tl.sum(valid.to(ACC), axis=1), 1.0)
    if FULL:
        xg = _guide_taps(xp, oh, ow, pmask, H, W, S, ACC)
        tg = tl.arange(0, 16)
        f = tl.load(w_ptr + ch * 9 + tg, mask=tg < 9, other=0.0).to(ACC)
        g = tl.sum(xg * f[None, :], axis=1) + tl.load(b_ptr + ch).to(ACC)
    else:
        g = tl.sum(v, axis=1) / n
    r = tl.where(valid, v - g[:, None], 0.0)
    d = r
    if ASYM:
        d = tl.maximum(d, 0.0)
    c = d * d + eps2
    cmax = tl.maximum(tl.max(tl.where(valid, c, 0.0), axis=1), eps2)
    csum = tl.sum(tl.where(valid, c, 0.0), axis=1)
    if SI:
        log_m = tl.log(tl.maximum(csum, eps2) / n)
    else:
        log_m = tl.zeros_like(cmax)
    ell_max = half * (tl.log(cmax) - log_m)
    log_alpha = tl.where(alpha > 0, tl.log(tl.where(alpha > 0, alpha, 1.0)), float("-inf"))
    M = tl.maximum(ell_max, log_alpha)
    shift = ell_max - M  # ≤ 0
    a = tl.exp(log_alpha - M)  # exactly 0 when α = 0
    lr = tl.where(valid, tl.log(c / cmax[:, None]), 0.0)
    e = tl.where(valid, tl.exp(half * lr + shift[:, None]), 0.0)
    D = tl.sum(e, axis=1) + a * n
    D = tl.where(pmask, D, 1.0)
    yg = (tl.sum(e * r, axis=1) + a * tl.sum(r, axis=1)) / D
    return v, valid, n, g, r, d, c, lr, e, a, D, yg, M, cmax, csum, log_m, shift


# --------------------------------------------------------------------------- forward


@triton.autotune(configs=_WINDOW_CONFIGS, key=["NC", "P", "K", "S", "FULL"], prune_configs_by={"early_config_prune": _prune("KP")})
@triton.jit
def _dpp_fwd_kernel(x_ptr, alpha_ptr, lam_ptr, w_ptr, b_ptr, eps_ptr, y_ptr,
                    NC, C, H, W, OW, P,
                    K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, KP: tl.constexpr,
                    ASYM: tl.constexpr, FULL: tl.constexpr, SI: tl.constexpr, ACC: tl.constexpr,
                    BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    ch = plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pmask = offs < P
    oh, ow = offs // OW, offs % OW
    alpha = tl.load(alpha_ptr + ch)
    half = tl.load(lam_ptr + ch) * 0.5
    eps2 = tl.load(eps_ptr)
    xp = x_ptr + plane * H * W
    _, _, _, g, _, _, _, _, _, _, _, yg, _, _, _, _, _ = _pool_window(
        xp, w_ptr, b_ptr, ch, alpha, half, eps2, oh, ow, pmask, H, W, K, S, PAD, KP, ASYM, FULL, SI, ACC)
    tl.store(y_ptr + plane * P + offs, (g + yg).to(y_ptr.dtype.element_ty), mask=pmask)


# --------------------------------------------------------------------------- backward


@triton.autotune(configs=_WINDOW_CONFIGS, key=["NC", "P", "K", "S", "FULL", "FUSED_GX"],
                 prune_configs_by={"early_config_prune": _prune("KP")})
@triton.jit
def _dpp_bwd_window_kernel(x_ptr, gy_ptr, alpha_ptr, lam_ptr, w_ptr, b_ptr, eps_ptr,
                           gx_ptr, stats_ptr, gg_ptr, part_ptr,
                           NC, C, H, W, OW, P, NCP, CHUNK, SPLIT,
                           K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr, KP: tl.constexpr,
                           ASYM: tl.constexpr, FULL: tl.constexpr, SI: tl.constexpr,
                           FUSED_GX: tl.constexpr, WRITE_STATS: tl.constexpr, NPART: tl.constexpr,
                           ACC: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    ch = plane % C
    alpha = tl.load(alpha_ptr + ch)
    half = tl.load(lam_ptr + ch) * 0.5
    eps2 = tl.load(eps_ptr)
    xp = x_ptr + plane * H * W
    start = split * CHUNK
    stop = tl.minimum(start + CHUNK, P)
    acc_alpha = tl.zeros((BLOCK,), ACC)
    acc_lam = tl.zeros((BLOCK,), ACC)
    acc_bias = tl.zeros((BLOCK,), ACC)
    acc_weight = tl.zeros((BLOCK, 16), ACC)
    for block_start in range(start, stop, BLOCK):
        offs = block_start + tl.arange(0, BLOCK)
        pmask = offs < stop
        oh, ow = offs // OW, offs % OW
        v, valid, n, g, r, d, c, lr, e, a, D, yg, M, cmax, csum, log_m, shift = _pool_window(
            xp, w_ptr, b_ptr, ch, alpha, half, eps2, oh, ow, pmask, H, W, K, S, PAD, KP, ASYM, FULL, SI, ACC)
        gy = tl.load(gy_ptr + plane * P + offs, mask=pmask, other=0.0).to(ACC)
        gyd = gy / D
        dev = tl.where(valid, r - yg[:, None], 0.0)  # I_q − y
        # Σ_q (I_q − y) = (Σe·Σr − n·Σe·r)/D: the α-terms cancel analytically, so windows whose ρ
        # are all equal or underflowed give exactly 0 instead of a rounding residue of |I| that
        # e^(−M) (up to 1/α) would amplify.
        sum_dev = (tl.sum(e, axis=1) * tl.sum(r, axis=1) - n * tl.sum(e * r, axis=1)) / D
        # ∂L/∂α = ĝ·e^(−M)·Σ(I−y), formed as ±exp(log|ĝ·Σ(I−y)| − M): e^(−M) alone overflows at
        # α = 0 on flat windows (M ≈ (λ/2)·log ε²) although the product is 0 or finite.
        t_alpha = gyd * sum_dev
        magnitude = tl.exp(tl.where(t_alpha == 0.0, 0.0, tl.log(tl.where(t_alpha == 0.0, 1.0, tl.abs(t_alpha))) - M))
        acc_alpha += tl.where(t_alpha == 0.0, 0.0, tl.where(t_alpha < 0, -magnitude, magnitude))
        # ∂L/∂λ = ĝ/2·Σ(I−y)·e·L with L = log c − log m; since Σ(I−y)·w = 0, subtracting L_max gives
        # Σ(I−y)·e·log(c/c_max) − a·L_max·Σ(I−y): both terms vanish on flat windows, exactly.
        log_cmax = tl.log(cmax) - log_m
        acc_lam += gyd * 0.5 * (tl.sum(dev * e * lr, axis=1) - a * log_cmax * sum_dev)
        beta = gyd[:, None] * dev * e * half
        two_d = tl.where(valid, 2.0 * d, 0.0)
        if SI:
            si_term = tl.sum(beta, axis=1) / tl.maximum(csum, eps2)
        else:
            si_term = tl.zeros_like(gyd)
        gamma = two_d * (beta / c - si_term[:, None])
        g_guide = -tl.sum(gamma, axis=1)
        if FULL:
            xg = _guide_taps(xp, oh, ow, pmask, H, W, S, ACC)
            acc_weight += g_guide[:, None] * xg
            acc_bias += g_guide
            g_spread = g_guide
        else:
            g_spread = g_guide / n
        if FUSED_GX:
            gx = gyd[:, None] * (e + a[:, None]) + gamma
            if not FULL:
                gx += g_spread[:, None]
            t = tl.arange(0, KP)
            row = oh[:, None] * S - PAD + (t // K)[None, :]
            col = ow[:, None] * S - PAD + (t % K)[None, :]
            tl.store(gx_ptr + plane * H * W + row * W + col, gx.to(gx_ptr.dtype.element_ty), mask=valid)
            if FULL:
                tl.store(gg_ptr + plane * P + offs, g_guide, mask=pmask)
        if WRITE_STATS:
            sp = stats_ptr + plane * P + offs
            tl.store(sp, g, mask=pmask)
            tl.store(sp + NCP, yg, mask=pmask)
            tl.store(sp + 2 * NCP, cmax, mask=pmask)
            tl.store(sp + 3 * NCP, shift, mask=pmask)
            tl.store(sp + 4 * NCP, a, mask=pmask)
            tl.store(sp + 5 * NCP, gyd, mask=pmask)
            tl.store(sp + 6 * NCP, si_term, mask=pmask)
            tl.store(sp + 7 * NCP, g_spread, mask=pmask)
    pp = part_ptr + (plane * SPLIT + split) * NPART
    tl.store(pp, tl.sum(acc_alpha, axis=0))
    tl.store(pp + 1, tl.sum(acc_lam, axis=0))
    if FULL:
        tl.store(pp + 2, tl.sum(acc_bias, axis=0))
        tg = tl.arange(0, 16)
        tl.store(pp + 3 + tg, tl.sum(acc_weight, axis=0), mask=tg < 9)


@triton.autotune(configs=_PIXEL_CONFIGS, key=["NC", "H", "W", "K", "S", "POOL", "GUIDE"],
                 prune_configs_by={"early_config_prune": _prune("CP")}, restore_value=["gx_ptr"])
@triton.jit
def _dpp_bwd_input_kernel(x_ptr, lam_ptr, w_ptr, eps_ptr, stats_ptr, gg_ptr, gx_ptr,
                          NC, C, H, W, OH, OW, P, NCP,
                          K: tl.constexpr, S: tl.constexpr, PAD: tl.constexpr,
                          CI: tl.constexpr, CP: tl.constexpr, GI: tl.constexpr, GP: tl.constexpr,
                          ASYM: tl.constexpr, FULL: tl.constexpr, POOL: tl.constexpr, GUIDE: tl.constexpr,
                          ACCUM: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    ch = plane % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pmask = offs < H * W
    h, w = offs // W, offs % W
    gx_ptrs = gx_ptr + plane * H * W + offs
    if ACCUM:
        gx = tl.load(gx_ptrs, mask=pmask, other=0.0).to(ACC)
    else:
        gx = tl.zeros((BLOCK,), ACC)
    if POOL:
        half = tl.load(lam_ptr + ch) * 0.5
        eps2 = tl.load(eps_ptr)
        xv = tl.load(x_ptr + plane * H * W + offs, mask=pmask, other=0.0).to(ACC)
        u = tl.arange(0, CP)
        i = ((h + PAD) // S)[:, None] - (u // CI)[None, :]
        j = ((w + PAD) // S)[:, None] - (u % CI)[None, :]
        inside = (pmask[:, None] & (u < CI * CI)[None, :] & (i >= 0) & (i < OH) & (j >= 0) & (j < OW)
                  & (h[:, None] + PAD - i * S < K) & (w[:, None] + PAD - j * S < K))
        sp = stats_ptr + plane * P + i * OW + j
        g = tl.load(sp, mask=inside, other=0.0)
        yg = tl.load(sp + NCP, mask=inside, other=0.0)
        cmax = tl.load(sp + 2 * NCP, mask=inside, other=1.0)
        shift = tl.load(sp + 3 * NCP, mask=inside, other=0.0)
        a = tl.load(sp + 4 * NCP, mask=inside, other=0.0)
        gyd = tl.load(sp + 5 * NCP, mask=inside, other=0.0)
        si_term = tl.load(sp + 6 * NCP, mask=inside, other=0.0)
        r = xv[:, None] - g
        d = r
        if ASYM:
            d = tl.maximum(d, 0.0)
        c = d * d + eps2
        e = tl.exp(half * tl.log(c / cmax) + shift)
        beta = gyd * (r - yg) * e * half
        contrib = gyd * (e + a) + 2.0 * d * (beta / c - si_term)
        if not FULL:
            contrib += tl.load(sp + 7 * NCP, mask=inside, other=0.0)
        gx += tl.sum(tl.where(inside, contrib, 0.0), axis=1)
    if GUIDE:
        u = tl.arange(0, GP)
        i = ((h + 1) // S)[:, None] - (u // GI)[None, :]
        j = ((w + 1) // S)[:, None] - (u % GI)[None, :]
        dy = h[:, None] + 1 - i * S
        dx = w[:, None] + 1 - j * S
        inside = (pmask[:, None] & (u < GI * GI)[None, :] & (i >= 0) & (i < OH) & (j >= 0) & (j < OW)
                  & (dy < 3) & (dx < 3))
        gg = tl.load(gg_ptr + plane * P + i * OW + j, mask=inside, other=0.0)
        f = tl.load(w_ptr + ch * 9 + dy * 3 + dx, mask=inside, other=0.0).to(ACC)
        gx += tl.sum(gg * f, axis=1)
    tl.store(gx_ptrs, gx.to(gx_ptr.dtype.element_ty), mask=pmask)


# --------------------------------------------------------------------------- launchers


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 (and fp32) accumulate in float32; float64 stays float64 (for gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def _pooled(size: int, kernel_size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel_size) // stride + 1


def _params(x, alpha, lam, weight, bias, eps2):
    acc = compute_dtype(x.dtype)
    cast = lambda t: None if t is None else t.detach().to(device=x.device, dtype=acc).contiguous()  # noqa: E731
    eps = torch.tensor([eps2], dtype=acc, device=x.device)
    weight, bias = cast(weight), cast(bias)
    if weight is None:  # Lite: the kernels never read these, but need valid pointers
        weight = bias = eps
    return acc, cast(alpha), cast(lam), weight, bias, eps


def _geometry(x, kernel_size, stride, padding):
    n, c, h, w = x.shape
    oh, ow = _pooled(h, kernel_size, stride, padding), _pooled(w, kernel_size, stride, padding)
    if triton.cdiv(max(h * w, oh * ow), MIN_BLOCK) > MAX_GRID_Y:
        # One grid row per (n, c) plane, blocks of a plane along the grid's y axis.
        raise ValueError(f"the triton DPP tier handles planes of at most {MAX_GRID_Y * MIN_BLOCK} pixels, "
                         f"got {h}x{w} -> {oh}x{ow}; use the vectorized or cuda tier")
    return n, c, h, w, oh, ow


def forward(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant):
    """DPP forward: y (N, C, OH, OW) in x's dtype."""
    full = weight is not None
    x = x.contiguous()
    acc, alpha, lam, weight, bias, eps = _params(x, alpha, lam, weight, bias, eps2)
    n, c, h, w, oh, ow = _geometry(x, kernel_size, stride, padding)
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    nc, p = n * c, oh * ow
    _dpp_fwd_kernel[lambda meta: (nc, triton.cdiv(p, meta["BLOCK"]))](
        x, alpha, lam, weight, bias, eps, y, nc, c, h, w, ow, p,
        K=kernel_size, S=stride, PAD=padding, KP=triton.next_power_of_2(kernel_size * kernel_size),
        ASYM=bool(asym), FULL=full, SI=bool(scale_invariant), ACC=_TL_DTYPE[acc])
    return y


def backward(grad, x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant):
    """Gradients (x, α, λ, F, b) of DPP; F and b grads are empty tensors for Lite-DPP."""
    full = weight is not None
    x = x.contiguous()
    grad = grad.contiguous()
    acc, alpha_c, lam_c, weight_c, bias_c, eps = _params(x, alpha, lam, weight, bias, eps2)
    n, c, h, w, oh, ow = _geometry(x, kernel_size, stride, padding)
    nc, p = n * c, oh * ow
    k, s, pad = kernel_size, stride, padding
    overlap = k > s
    exact_tiling = k == s and pad == 0 and h % k == 0 and w % k == 0
    # Pixels outside every window (k < s, ragged edges) get no write from the window kernel.
    gx = (torch.empty_like(x) if overlap or exact_tiling else torch.zeros_like(x))
    npart = 19 if full else 2
    split = max(1, min(triton.cdiv(p, 64), triton.cdiv(TARGET_PROGRAMS, nc)))
    chunk = triton.cdiv(p, split)
    split = triton.cdiv(p, chunk)
    partials = torch.empty((nc, split, npart), dtype=acc, device=x.device)
    stats = torch.empty((N_STATS, nc * p) if overlap else (1,), dtype=acc, device=x.device)
    gg = stats[7] if overlap else (torch.empty((nc * p,), dtype=acc, device=x.device) if full else stats)
    flags = dict(K=k, S=s, PAD=pad, ASYM=bool(asym), FULL=full, ACC=_TL_DTYPE[acc])
    _dpp_bwd_window_kernel[(nc, split)](
        x, grad, alpha_c, lam_c, weight_c, bias_c, eps, gx, stats, gg, partials,
        nc, c, h, w, ow, p, nc * p, chunk, split,
        KP=triton.next_power_of_2(k * k), SI=bool(scale_invariant), FUSED_GX=not overlap,
        WRITE_STATS=overlap, NPART=npart, **flags)
    if overlap or full:
        ci, gi = -(-k // s), -(-3 // s)
        _dpp_bwd_input_kernel[lambda meta: (nc, triton.cdiv(h * w, meta["BLOCK"]))](
            x, lam_c, weight_c, eps, stats, gg, gx, nc, c, h, w, oh, ow, p, nc * p,
            CI=ci, CP=triton.next_power_of_2(ci * ci), GI=gi, GP=triton.next_power_of_2(gi * gi),
            POOL=overlap, GUIDE=full, ACCUM=not overlap, **flags)
    # Fixed-order reduction of the per-program partials (deterministic); outputs are fresh tensors
    # (a custom op may not return views of each other).
    sums = partials.view(n, c, split, npart).sum(dim=(0, 2))
    g_alpha = sums[:, 0].to(alpha.dtype, copy=True).contiguous()
    g_lam = sums[:, 1].to(lam.dtype, copy=True).contiguous()
    if full:
        g_bias = sums[:, 2].to(bias.dtype, copy=True).contiguous()
        g_weight = sums[:, 3:12].to(weight.dtype, copy=True).reshape(c, 1, 3, 3).contiguous()
    else:
        g_weight, g_bias = x.new_empty((0,)), x.new_empty((0,))
    return gx, g_alpha, g_lam, g_weight, g_bias


__all__ = ["INTERPRET", "backward", "compute_dtype", "forward"]
