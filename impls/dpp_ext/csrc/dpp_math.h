// Detail-Preserving Pooling: the per-window maths, shared by the CPU and CUDA kernels.
//
// Everything here is inline and __host__ __device__, so the exact formulas the
// GPU runs are also what the CPU kernel runs (and is tested against the float64
// reference on every machine).  Kernels differ only in how they walk memory.
//
// One output position p has a window of n valid taps v[0..n) (padding is not
// part of a window) and a centre c̃ (Saeedan et al., CVPR 2018, eq. 4-10):
//
//   Lite-DPP  c̃ = mean of the window              (avg_pool2d, count_include_pad=False)
//   Full-DPP  c̃ = Σ F·x over the 3×3 stencil + b  (conv2d, stride s, padding 1, groups=C)
//
//   d_i  = v_i − c̃              (Asym: max(0, v_i − c̃))
//   c_i  = d_i² + ε²             (scale-invariant option: c_i / mean_i c_i)
//   ℓ_i  = (λ/2)·log2 c_i        (log domain, base 2: exp2/log2 are the cheap hardware ops)
//
// log2 c_i is formed without d_i² where d_i² would overflow (|d| > 1e15 in float32):
// log2(d² + ε²) = 2·log2|d| + log2(1 + ε²/d²), evaluated as 2k + log2((d·2^-k)² + ε²·2^-2k)
// (scaling by a power of two is exact, so this is the same value with one log), and the
// backward's d/c likewise; inputs up to |x| ~ 1e30 keep finite outputs and gradients.
//   M    = max(max_i ℓ_i, log2 α)
//   e_i  = 2^(ℓ_i − M),  a = 2^(log2 α − M)   (0 when α = 0)
//   y    = Σ (e_i + a)·v_i / Σ (e_i + a)
//
// which is w_i = α + c_i^(λ/2) scaled by 2^-M, so neither large deviations
// (overflow) nor flat windows at large λ (0/0) break it.
//
// Backward (per window, upstream gradient g), with S = Σ(e_i + a) and
// h_i = (v_i − y)·e_i (the gradient w.r.t. ln w_i, scaled):
//
//   ∂y/∂v_i (direct)  = (e_i + a)/S
//   ∂y/∂λ             = (ln 2 / 2) · Σ h_i·log2 c_i / S
//   ∂y/∂α             = Σ (v_i − y) · (a/α) / S                  (0 at α = 0, as the vectorized tier)
//   ∂y/∂c_i           = (λ/2)/S · (h_i / c_i − [scale-invariant] Σ h / Σ c)
//   ∂y/∂d_i           = ∂y/∂c_i · 2 d_i,   ∂y/∂c̃ = −Σ ∂y/∂d_i
//
// and the caller spreads ∂y/∂c̃ to the centre's inputs (1/n per tap for Lite;
// F to the stencil and to ∂F, ∂b for Full).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DPP_HD __host__ __device__ __forceinline__
#elif defined(_MSC_VER)
#define DPP_HD __forceinline
#else
#define DPP_HD inline __attribute__((always_inline))
#endif

// Fully unroll the per-tap loops (the trip count is a constant at every SIMD call site),
// so the CPU kernel's `omp simd` loop over output columns has a straight-line body.
#if defined(__CUDACC__) || defined(__clang__)
#define DPP_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define DPP_UNROLL _Pragma("GCC unroll 16")
#else
#define DPP_UNROLL
#endif

namespace poolbench_dpp {

// ---------------------------------------------------------------------------
// exp2 / log2.  On the GPU the hardware-backed exp2f/__log2f (≤ 2 ulp); on the
// host a branch-free Cephes-style polynomial (≈ 1 ulp) that compilers
// vectorise inside `omp simd` loops (libm calls would stop vectorisation).
// float64 uses libm everywhere (gradcheck only; speed does not matter).
// ---------------------------------------------------------------------------

// The bits of a float as uint32_t or back (a bit cast: the CUDA intrinsic, or memcpy on the host).
template <typename To, typename From>
DPP_HD To bit_cast_32(From from) {
  static_assert(sizeof(To) == 4 && sizeof(From) == 4, "32-bit values only");
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same<To, float>::value) {
    return __uint_as_float(from);
  } else {
    return __float_as_uint(from);
  }
#else
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
#endif
}

// a·b + c, rounded once where the CPU has FMA (and on the GPU), else twice.  Written out rather than
// left to the compiler's contraction: the CPU library is built with -ffp-contract=off, because GCC
// contracted the vectorised body of a window loop and its scalar remainder differently, so a window's
// result (by an ulp) depended on where in a block it fell, i.e. on the thread count.  The window
// maths' hot multiply-adds call it, so the CPU keeps (most of) the fused work without the choice.
DPP_HD float dpp_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return fmaf(a, b, c);
#elif defined(__FMA__)
  return std::fma(a, b, c);  // one vfmadd (GCC's builtin; vectorised like any multiply-add)
#else
  return a * b + c;
#endif
}

DPP_HD double dpp_fma(double a, double b, double c) {
#if defined(__CUDA_ARCH__) || defined(__FMA__)
  return fma(a, b, c);
#else
  return a * b + c;
#endif
}

DPP_HD float bits_to_float(uint32_t u) { return bit_cast_32<float>(u); }
DPP_HD uint32_t float_to_bits(float f) { return bit_cast_32<uint32_t>(f); }

// log2 of the positive normal float with these bits, less `extra` in the exponent (the core of
// poly_log2; poly_log2_normal on its own where the caller knows x is positive, finite and normal).
DPP_HD float poly_log2_bits(uint32_t bits, int extra) {
  // Integer/boolean arithmetic instead of conditionals keeps the body branch-free (vectorisable).
  float m = bits_to_float((bits & 0x007fffffu) | 0x3f800000u);  // mantissa in [1, 2)
  const bool upper = m > 1.41421356f;                             // fold to [√½, √2)
  m = upper ? 0.5f * m : m;
  const int exponent = static_cast<int>((bits >> 23) & 0xffu) - 127 - extra + static_cast<int>(upper);
  const float f = m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = dpp_fma(p, f, -1.1514610310e-1f);
  p = dpp_fma(p, f, 1.1676998740e-1f);
  p = dpp_fma(p, f, -1.2420140846e-1f);
  p = dpp_fma(p, f, 1.4249322787e-1f);
  p = dpp_fma(p, f, -1.6668057665e-1f);
  p = dpp_fma(p, f, 2.0000714765e-1f);
  p = dpp_fma(p, f, -2.4999993993e-1f);
  p = dpp_fma(p, f, 3.3333331174e-1f);
  p = dpp_fma(p * f, z, -0.5f * z);
  return dpp_fma(f + p, 1.44269504088896341f, static_cast<float>(exponent));
}

DPP_HD float poly_log2_normal(float x) { return poly_log2_bits(float_to_bits(x), 0); }

// log2(x) for x ≥ 0 (x = 0 → −inf, inf → inf, NaN/negative → NaN), subnormals included.
DPP_HD float poly_log2(float x) {
  const bool subnormal = x < 1.17549435e-38f;
  const float xs = subnormal ? x * 8388608.0f : x;  // 2^23
  float result = poly_log2_bits(float_to_bits(xs), 23 * static_cast<int>(subnormal));
  result = (x == 0.0f) ? -std::numeric_limits<float>::infinity() : result;
  result = (x == std::numeric_limits<float>::infinity()) ? x : result;
  result = !(x >= 0.0f) ? std::numeric_limits<float>::quiet_NaN() : result;  // NaN or negative
  return result;
}

// 2^x for x ≤ 127 (x < −126 flushes to 0; −inf → 0; NaN → NaN).  The kernels
// only call it with x ≤ 0 (everything is shifted by the window's maximum).
DPP_HD float poly_exp2(float x) {
  const bool tiny = x < -126.0f;
  float xc = tiny ? -126.0f : x;
  xc = xc > 127.0f ? 127.0f : xc;
  const float shifter = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  const float rounded = xc + shifter;
  const int n = static_cast<int>(float_to_bits(rounded)) - 0x4B400000;
  const float r = xc - (rounded - shifter);  // in [−½, ½]
  const float y = r * 0.693147180559945309f;
  const float z = y * y;
  float p = 1.9875691500e-4f;
  p = dpp_fma(p, y, 1.3981999507e-3f);
  p = dpp_fma(p, y, 8.3334519073e-3f);
  p = dpp_fma(p, y, 4.1665795894e-2f);
  p = dpp_fma(p, y, 1.6666665459e-1f);
  p = dpp_fma(p, y, 5.0000001201e-1f);
  p = dpp_fma(p, z, y) + 1.0f;
  float result = p * bits_to_float(static_cast<uint32_t>(n + 127) << 23);
  result = tiny ? 0.0f : result;
  result = (x != x) ? x : result;
  return result;
}

#if defined(__CUDA_ARCH__)
// One MUFU.LG2 (≤ 2 ulp; abs. error 2^-22 on [0.5, 2]) instead of log2f's ~40-instruction
// precise routine; its inputs are never subnormal (c ≥ ε², or ε²-scaled sums).
DPP_HD float dpp_log2(float x) { return __log2f(x); }
DPP_HD float dpp_log2_normal(float x) { return __log2f(x); }
DPP_HD float dpp_exp2(float x) { return exp2f(x); }
DPP_HD double dpp_log2(double x) { return ::log2(x); }
DPP_HD double dpp_log2_normal(double x) { return ::log2(x); }
DPP_HD double dpp_exp2(double x) { return ::exp2(x); }
#else
DPP_HD float dpp_log2(float x) { return poly_log2(x); }
// log2 of x known to be positive, finite and normal: poly_log2's value without its special cases.
DPP_HD float dpp_log2_normal(float x) { return poly_log2_normal(x); }
DPP_HD float dpp_exp2(float x) { return poly_exp2(x); }
DPP_HD double dpp_log2(double x) { return std::log2(x); }
DPP_HD double dpp_log2_normal(double x) { return std::log2(x); }
DPP_HD double dpp_exp2(double x) { return std::exp2(x); }
#endif

// a / b where b ≥ 1 and far below 2^126 (a window's weight sum, normalised so its largest weight
// is 1): on the GPU the two-instruction approximate divide (≤ 2 ulp) instead of the IEEE routine.
DPP_HD float dpp_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdividef(a, b);
#else
  return a / b;
#endif
}
DPP_HD double dpp_div(double a, double b) { return a / b; }

template <typename T>
DPP_HD T dpp_max(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
DPP_HD T dpp_min(T a, T b) {
  return a < b ? a : b;
}

template <typename T>
DPP_HD T dpp_abs(T a) {
  return a < T(0) ? -a : a;
}

// Where d² + ε² would overflow the compute dtype: above `threshold`, d is scaled by 2^-shift
// (exact) before squaring.  threshold² stays far below the dtype's max, and (threshold·2^-shift)²
// far above its min, so neither branch loses the d² term.
template <typename T>
struct HugeDeviation;
template <>
struct HugeDeviation<float> {
  static constexpr float threshold = 1e15f;
  static constexpr float scale = 0x1p-70f;  // 2^-70: |d| ≤ 3.4e38 → (d·2^-70)² ≤ 1e35
  static constexpr float log2_inv_scale2 = 140.0f;
};
template <>
struct HugeDeviation<double> {
  static constexpr double threshold = 1e150;
  static constexpr double scale = 0x1p-600;
  static constexpr double log2_inv_scale2 = 1200.0;
};

// The exact rescaling of d before squaring: 2^-shift where |d| is huge, else 1.  A plain value
// (no struct with a bool) keeps the CPU kernel's window loop vectorised.
template <typename T>
DPP_HD T huge_deviation_scale(T d) {
  return dpp_abs(d) > HugeDeviation<T>::threshold ? HugeDeviation<T>::scale : T(1);
}

// What a caller can promise the window maths at compile time (bit flags; 0 promises nothing), so
// the work they make unnecessary is left out.  Each gives the same values as without it where
// the promise holds (a vectorised CPU block checks it first and takes the general code otherwise).
constexpr int kPromiseSym = 1;   // p.asym == 0 (ρ_Sym)
constexpr int kPromiseTame = 2;  // every deviation |d| ≤ 1e15 (no rescaling) and ε² a normal number
                                 // ≤ 1e30, so d² + ε² is positive, finite and normal (log2 needs
                                 // none of its special cases)

// log2(d² + ε²) for any finite d (see the header comment): log2((s·d)² + s²·ε²) − 2·log2 s.
template <int PROMISE = 0, typename T>
DPP_HD T log2_charbonnier(T d, T eps2) {
  if constexpr ((PROMISE & kPromiseTame) != 0) {
    return dpp_log2_normal(dpp_fma(d, d, eps2));  // s = 1: the same value
  } else {
    const T s = huge_deviation_scale(d), ds = d * s;
    return dpp_log2(dpp_fma(ds, ds, eps2 * s * s)) + (s < T(1) ? HugeDeviation<T>::log2_inv_scale2 : T(0));
  }
}

// d / (d² + ε²) = s·(s·d) / ((s·d)² + s²·ε²) for any finite d, without forming d² when it would overflow.
template <int PROMISE = 0, typename T>
DPP_HD T deviation_over_charbonnier(T d, T eps2) {
  if constexpr ((PROMISE & kPromiseTame) != 0) {
    return d / dpp_fma(d, d, eps2);  // s = 1: the same value
  } else {
    const T s = huge_deviation_scale(d), ds = d * s;
    return ds * s / dpp_fma(ds, ds, eps2 * s * s);
  }
}

// ---------------------------------------------------------------------------
// Geometry
// ---------------------------------------------------------------------------

struct Geometry {
  int64_t height, width, out_height, out_width;
  int kernel_size, stride, padding;
  bool full;  // Full-DPP (3×3 learned guide) vs Lite-DPP (box guide)
};

// Valid window rows (or columns) [lo, hi) of output index `o` along an axis of `size`.
DPP_HD void window_span(int64_t o, int kernel_size, int stride, int padding, int64_t size, int64_t& lo, int64_t& hi) {
  const int64_t start = o * stride - padding;
  lo = dpp_max<int64_t>(start, 0);
  hi = dpp_min<int64_t>(start + kernel_size, size);
}

// Output indices [lo, hi) along an axis whose whole window lies inside the input
// (o·s − pad ≥ 0 and o·s − pad + k ≤ size): the kernels' fast paths with no bounds checks.
DPP_HD void interior_span(int64_t size, int64_t out_size, int kernel_size, int stride, int padding, int64_t& lo,
                          int64_t& hi) {
  lo = dpp_min<int64_t>((padding + stride - 1) / stride, out_size);
  hi = dpp_min<int64_t>((size - kernel_size + padding) / stride + 1, out_size);
  hi = dpp_max(hi, lo);
}

// The block of interior windows of a plane: rows [row0, row0 + rows) × columns [col0, col0 + cols);
// empty (all zero) when either extent is.
struct InteriorRegion {
  int64_t row0, rows, col0, cols;
};

DPP_HD InteriorRegion interior_region(const Geometry& g) {
  int64_t r0, r1, c0, c1;
  interior_span(g.height, g.out_height, g.kernel_size, g.stride, g.padding, r0, r1);
  interior_span(g.width, g.out_width, g.kernel_size, g.stride, g.padding, c0, c1);
  if (r1 == r0 || c1 == c0) return {0, 0, 0, 0};
  return {r0, r1 - r0, c0, c1 - c0};
}

// Output indices [lo, hi] (inclusive, clipped) whose window or Full guide stencil touches input index `i`.
DPP_HD void touching_outputs(int64_t i, int kernel_size, int stride, int padding, bool full, int64_t out_size,
                             int64_t& lo, int64_t& hi) {
  // window: o·s − pad ≤ i < o·s − pad + k
  int64_t first = i + padding - kernel_size + 1;
  lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  hi = (i + padding) / stride;
  if (full) {  // stencil: o·s − 1 ≤ i ≤ o·s + 1
    const int64_t slo = i - 1 <= 0 ? 0 : (i - 1 + stride - 1) / stride;
    const int64_t shi = (i + 1) / stride;
    lo = dpp_min(lo, slo);
    hi = dpp_max(hi, shi);
  }
  lo = dpp_max<int64_t>(lo, 0);
  hi = dpp_min<int64_t>(hi, out_size - 1);
}

// ---------------------------------------------------------------------------
// Tap loops.  N is the most taps a caller's windows can have when it is known at compile
// time (K×K for a fixed kernel size), else 0.  With N > 0 every per-tap loop has a constant
// trip count (taps ≥ n are skipped), so it unrolls completely and a GPU keeps the window's
// arrays in registers; a runtime trip count would index them dynamically and put them in
// local memory.  N = 0 loops over the n taps (any kernel size).
// ---------------------------------------------------------------------------

template <int N>
DPP_HD int tap_bound(int n) {
  return N > 0 ? N : n;
}

template <int N>
DPP_HD bool tap_valid(int i, int n) {
  return N == 0 || i < n;
}

// Gather the valid taps of output (oh, ow) from one (H, W) plane, row-major; returns n.
template <int N = 0, typename scalar_t, typename T>
DPP_HD int gather_window(const scalar_t* plane, const Geometry& g, int64_t oh, int64_t ow, T* v) {
  int64_t h0, h1, w0, w1;
  window_span(oh, g.kernel_size, g.stride, g.padding, g.height, h0, h1);
  window_span(ow, g.kernel_size, g.stride, g.padding, g.width, w0, w1);
  const int span = static_cast<int>(w1 - w0), n = static_cast<int>(h1 - h0) * span;
  const scalar_t* origin = plane + h0 * g.width + w0;
  if constexpr (N > 0) {  // constant tap indices; row and column of each tap from the clipped width
DPP_UNROLL
    for (int t = 0; t < N; ++t) {
      if (t >= n) continue;
      const int row = t / span;
      v[t] = static_cast<T>(origin[row * g.width + (t - row * span)]);
    }
  } else {
    int t = 0;
    for (int64_t h = 0; h < h1 - h0; ++h)
      for (int w = 0; w < span; ++w) v[t++] = static_cast<T>(origin[h * g.width + w]);
  }
  return n;
}

// Gather Full-DPP's 3×3 stencil around (oh·s, ow·s); zeros outside the image (conv padding 1).
template <typename scalar_t, typename T>
DPP_HD void gather_stencil(const scalar_t* plane, const Geometry& g, int64_t oh, int64_t ow, T* v9) {
DPP_UNROLL
  for (int dy = 0; dy < 3; ++dy) {
DPP_UNROLL
    for (int dx = 0; dx < 3; ++dx) {
      const int64_t h = oh * g.stride - 1 + dy, w = ow * g.stride - 1 + dx;
      const bool inside = h >= 0 && h < g.height && w >= 0 && w < g.width;
      v9[dy * 3 + dx] = inside ? static_cast<T>(plane[h * g.width + w]) : T(0);
    }
  }
}

// ---------------------------------------------------------------------------
// The guide (centre)
// ---------------------------------------------------------------------------

template <int N = 0, typename T>
DPP_HD T lite_centre(const T* v, int n) {
  const int taps = tap_bound<N>(n);  // a plain bound: GCC drops the unroll pragma otherwise
  T sum = 0;
DPP_UNROLL
  for (int i = 0; i < taps; ++i)
    if (tap_valid<N>(i, n)) sum += v[i];
  // A multiply by 1/n: constant-folded where n is known (interior windows), no divide per window.
  return sum * (T(1) / static_cast<T>(n));
}

template <typename T>
DPP_HD T full_centre(const T* v9, const T* f9, T bias) {
  T sum = bias;
DPP_UNROLL
  for (int i = 0; i < 9; ++i) sum = dpp_fma(f9[i], v9[i], sum);
  return sum;
}

// ---------------------------------------------------------------------------
// Weights, weighted sum, and their backward
// ---------------------------------------------------------------------------

// Flags are 0/1 values of T, not bools: arithmetic instead of selects on loop-invariant
// booleans is what lets compilers vectorise the CPU kernel's loop over windows.
template <typename T>
struct Params {
  T inv_alpha;        // 1/α (0 when α = 0: no α gradient, like the vectorized tier)
  T log2_alpha;       // log2 α (−inf when α = 0)
  T half_lam;         // λ / 2
  T eps2;             // ε²
  T asym;             // 1: ρ_Asym, 0: ρ_Sym
  T scale_invariant;  // 1: divide c by its window mean (authors' code option)
};

template <typename T>
DPP_HD Params<T> make_params(T alpha, T log2_alpha, T lam, T eps2, bool asym, bool scale_invariant) {
  Params<T> p;
  p.inv_alpha = alpha > T(0) ? T(1) / alpha : T(0);
  p.log2_alpha = log2_alpha;
  p.half_lam = lam * T(0.5);
  p.eps2 = eps2;
  p.asym = asym ? T(1) : T(0);
  p.scale_invariant = scale_invariant ? T(1) : T(0);
  return p;
}

// e^x for a per-channel parameter (λ = e^θλ): the hardware exp2 on the GPU, libm in double on
// the host (once per plane there, so its cost does not matter).
DPP_HD float dpp_exp(float x) {
#if defined(__CUDA_ARCH__)
  return exp2f(x * 1.44269504088896341f);
#else
  return static_cast<float>(std::exp(static_cast<double>(x)));
#endif
}
DPP_HD double dpp_exp(double x) { return ::exp(x); }

// log2 of a per-channel α > 0 (the functional form): accurate libm on the host (once per plane).
DPP_HD float param_log2(float x) {
#if defined(__CUDA_ARCH__)
  return __log2f(x);
#else
  return static_cast<float>(std::log2(static_cast<double>(x)));
#endif
}
DPP_HD double param_log2(double x) { return ::log2(x); }

// Per-channel parameter pointers (accumulation dtype, on the kernel's device) and the
// per-call options: what every CPU and CUDA kernel reads to set up a channel.
//
// log_params: alpha and lam hold θα = ln α and θλ = ln λ, as the module stores them, and the
// kernels return ∂L/∂θ (= α·∂L/∂α, λ·∂L/∂λ); otherwise they hold α, λ ≥ 0 (the functional form,
// where α = 0 and λ = 0 are reachable) and the kernels return ∂L/∂α, ∂L/∂λ.
template <typename T>
struct ChannelArgs {
  const T* alpha;   // α or θα
  const T* lam;     // λ or θλ
  const T* weight;  // (C, 9) or nullptr (Lite-DPP)
  const T* bias;    // (C,) or nullptr
  T eps2;
  bool asym;
  bool scale_invariant;
  bool log_params;

  DPP_HD Params<T> params(int64_t c) const {
    if (log_params) {
      Params<T> p;
      // ∂/∂θα = α·∂/∂α: window_backward's a·(1/α) becomes a, so the factor is 1 (no exp, no divide).
      p.inv_alpha = T(1);
      p.log2_alpha = alpha[c] * T(1.44269504088896341);
      p.half_lam = T(0.5) * dpp_exp(lam[c]);
      p.eps2 = eps2;
      p.asym = asym ? T(1) : T(0);
      p.scale_invariant = scale_invariant ? T(1) : T(0);
      return p;
    }
    const T a = alpha[c];
    return make_params(a, a > T(0) ? param_log2(a) : -std::numeric_limits<T>::infinity(), lam[c], eps2, asym,
                       scale_invariant);
  }

  // Factor from the kernels' ∂L/∂λ to the op's λ gradient: λ for log_params (∂L/∂θλ), else 1.
  DPP_HD T lam_grad_scale(int64_t c) const { return log_params ? dpp_exp(lam[c]) : T(1); }

  // Full-DPP's 3×3 filter and bias of channel c (zeros for Lite-DPP, where they are unused).
  DPP_HD void guide(int64_t c, T* f9, T& b) const {
DPP_UNROLL
    for (int t = 0; t < 9; ++t) f9[t] = weight != nullptr ? weight[c * 9 + t] : T(0);
    b = bias != nullptr ? bias[c] : T(0);
  }
};

template <typename T>
struct WindowStats {
  T shift;      // M
  T alpha_w;    // a = 2^(log2 α − M)
  T sum_w;      // S = Σ (e_i + a)
  T out;        // y
  T sum_c;      // Σ c_i before scale normalisation (scale-invariant backward)
};

// d = v − c̃, or max(0, v − c̃) for Asym (d − min(d, 0) is exact).
template <int PROMISE = 0, typename T>
DPP_HD T deviation(T v, T centre, T asym) {
  const T d = v - centre;
  if constexpr ((PROMISE & kPromiseSym) != 0) return d;
  return d - asym * dpp_min(d, T(0));
}

// Forward of one window.  Fills lc[i] = log2 c_i (scale-normalised) and
// e[i] = 2^(ℓ_i − M) for the backward; both may be discarded by a forward-only caller.
// SI: the scale-invariant option fixed at compile time (0 off, 1 on; the GPU forward
// instantiates both), or −1 to read it from p branch-free.  PROMISE: kPromise* flags.
template <int N = 0, int SI = -1, int PROMISE = 0, typename T>
DPP_HD WindowStats<T> window_forward(const T* v, int n, T centre, const Params<T>& p, T* lc, T* e) {
  const int taps = tap_bound<N>(n);  // a plain bound: GCC drops the unroll pragma otherwise
  T sum_c = 0;
DPP_UNROLL
  for (int i = 0; i < taps; ++i) {
    if (!tap_valid<N>(i, n)) continue;
    const T d = deviation<PROMISE>(v[i], centre, p.asym);
    lc[i] = log2_charbonnier<PROMISE>(d, p.eps2);
    if (SI != 0) sum_c += dpp_fma(d, d, p.eps2);  // scale-invariant option only (inf for huge deviations)
  }
  T shift = p.log2_alpha;
  if (SI != 0) {
    // Branch-free on purpose: the CPU kernel vectorises this across windows.  Σc ≥ n·ε² > 0; the
    // clamp keeps 0·log2(inf) = NaN out of the default (not scale-invariant) path.
    const T mean_c = dpp_min(sum_c / static_cast<T>(n), std::numeric_limits<T>::max());
    const T log2_mean = (SI == 1 ? T(1) : p.scale_invariant) * dpp_log2(mean_c);
DPP_UNROLL
    for (int i = 0; i < taps; ++i) {
      if (!tap_valid<N>(i, n)) continue;
      lc[i] -= log2_mean;
      shift = dpp_max(shift, p.half_lam * lc[i]);
    }
  } else {
    sum_c = T(1);  // unused without the option
DPP_UNROLL
    for (int i = 0; i < taps; ++i)
      if (tap_valid<N>(i, n)) shift = dpp_max(shift, p.half_lam * lc[i]);
  }
  const T alpha_w = dpp_exp2(p.log2_alpha - shift);  // log2 α = −inf (α = 0) gives 0
  T sum_e = 0, sum_ev = 0, sum_v = 0;
DPP_UNROLL
  for (int i = 0; i < taps; ++i) {
    if (!tap_valid<N>(i, n)) continue;
    e[i] = dpp_exp2(dpp_fma(p.half_lam, lc[i], -shift));
    sum_e += e[i];
    sum_ev = dpp_fma(e[i], v[i], sum_ev);
    sum_v += v[i];
  }
  WindowStats<T> s;
  s.shift = shift;
  s.alpha_w = alpha_w;
  s.sum_w = dpp_fma(static_cast<T>(n), alpha_w, sum_e);
  s.out = dpp_div(dpp_fma(alpha_w, sum_v, sum_ev), s.sum_w);
  s.sum_c = sum_c;
  return s;
}

template <typename T>
struct WindowGrads {
  T centre;  // ∂L/∂c̃
  T alpha;   // ∂L/∂α
  T lam;     // ∂L/∂λ
};

// Backward of one window for upstream gradient g: gv[i] = ∂L/∂v_i through the
// weights and the weighted sum (not through the centre — the caller adds
// centre.grad's share, which depends on the guide).  SI, PROMISE: as window_forward's (the same
// values as the forward's call).
template <int N = 0, int SI = -1, int PROMISE = 0, typename T>
DPP_HD WindowGrads<T> window_backward(T g, const T* v, int n, T centre, const Params<T>& p, const WindowStats<T>& s,
                                      const T* lc, const T* e, T* gv) {
  const int taps = tap_bound<N>(n);
  const T gs = dpp_div(g, s.sum_w);
  T sum_h = 0, sum_hlc = 0, sum_dv = 0;
DPP_UNROLL
  for (int i = 0; i < taps; ++i) {
    if (!tap_valid<N>(i, n)) continue;
    const T dv = v[i] - s.out;
    const T h = dv * e[i];
    sum_h += h;
    sum_hlc = dpp_fma(h, lc[i], sum_hlc);
    sum_dv += dv;
  }
  // Without the option the correction is 0 (sum_c is 1 then), so SI = 0 leaves it out.
  const T correction = SI == 0 ? T(0) : (SI == 1 ? T(1) : p.scale_invariant) * (sum_h / s.sum_c);
  T g_centre = 0;
DPP_UNROLL
  for (int i = 0; i < taps; ++i) {
    if (!tap_valid<N>(i, n)) continue;
    const T d = deviation<PROMISE>(v[i], centre, p.asym);
    const T h = (v[i] - s.out) * e[i];
    const T hd = h * deviation_over_charbonnier<PROMISE>(d, p.eps2);
    const T g_d = gs * p.half_lam * T(2) * (SI == 0 ? hd : hd - correction * d);
    gv[i] = dpp_fma(gs, e[i] + s.alpha_w, g_d);
    g_centre -= g_d;
  }
  WindowGrads<T> r;
  r.centre = g_centre;
  r.lam = gs * T(0.34657359027997264) * sum_hlc;  // ln 2 / 2
  // ∂w/∂α = 1, i.e. 2^-M = a/α in the scaled domain; α = 0 gets 0 like the vectorized tier.
  r.alpha = gs * sum_dv * (s.alpha_w * p.inv_alpha);
  return r;
}

}  // namespace poolbench_dpp
