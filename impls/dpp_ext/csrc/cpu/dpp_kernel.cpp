// DPP forward/backward on the CPU: registers the CPU dispatch key only.
//
// Parallelism: at::parallel_for (OpenMP in torch's builds) over the N·C planes.
// One plane is owned by one thread, so the backward's scatter into overlapping
// windows needs no atomics and every reduction has a fixed order: results do
// not depend on the thread count.
//
// Vectorisation: for the common windows (k ∈ {2, 3}, s ∈ {1, 2}, float32 and
// fp16/bf16 computed in float32) the windows that lie inside the image are
// processed in blocks: their taps are packed tap-major into small buffers, then
// one auto-vectorised loop runs the dpp_math.h window maths across the block
// with unit-stride loads (hundreds of windows per loop even where a row has only
// 7 outputs).  Border windows and every other geometry/dtype take the generic
// one-window-at-a-time path, which calls the same dpp_math.h functions.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__SSE2__) || defined(_M_X64)
#include <xmmintrin.h>
#define DPP_HAS_MXCSR 1
#endif

#include "../dpp_args.h"

namespace poolbench_dpp {
namespace {

// The loops over windows carry per-window arrays (v, lc, e) through inlined dpp_math.h calls.
// `omp simd` would turn those into per-lane "simd arrays" read by gathers; plain
// auto-vectorisation after full unrolling keeps them in registers.  ivdep only drops the
// run-time aliasing checks (inputs are read-only, every window writes its own slots).
#if defined(__clang__)
#define DPP_VECTORIZE _Pragma("clang loop vectorize(enable) interleave(enable)")
#elif defined(__GNUC__)
#define DPP_VECTORIZE _Pragma("GCC ivdep")
#else
#define DPP_VECTORIZE
#endif

// Windows per SIMD block: enough to fill vectors even where a row has only 7 outputs
// (VGG-16's last pooling layer), few enough that the packed taps stay in L1/L2.
constexpr int64_t kBlockWindows = 512;

// While a float32 kernel runs on this thread: flush subnormal results to zero and read subnormal
// inputs as zero (x86 MXCSR FTZ|DAZ), restored afterwards.  Weights 2^(ℓ−M) far below a window's
// largest one (large λ, a guide far from the taps) make subnormal products, and each costs x86
// CPUs a ~100-cycle microcode assist: Full-DPP backward with random guides ran 15× slower.
// Anything below 2^-126 of the window's largest weight is invisible at float32 precision.
class FlushSubnormals {
 public:
  explicit FlushSubnormals(bool enable) {
#ifdef DPP_HAS_MXCSR
    saved_ = _mm_getcsr();
    if (enable) _mm_setcsr(saved_ | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
#else
    (void)enable;
#endif
  }
  ~FlushSubnormals() {
#ifdef DPP_HAS_MXCSR
    _mm_setcsr(saved_);
#endif
  }
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

 private:
  unsigned saved_ = 0;
};

// Per-thread scratch: window arrays for the generic path, packed tap buffers for the SIMD path.
template <typename T>
struct Scratch {
  std::vector<T> v, lc, e, gv;  // k² each (generic path)
  int64_t capacity = 0;         // windows per SIMD block
  std::vector<T> taps;          // k² × capacity, tap-major: taps[t·capacity + j]
  std::vector<T> stencil;       // 9 × capacity (Full-DPP guide inputs)
  std::vector<T> tap_grads;     // k² × capacity
  std::vector<T> out, upstream, centre_grad, alpha_grad, lam_grad;  // capacity each
  std::vector<T> plane_grad;    // H·W (fp16/bf16 backward accumulates in T)

  explicit Scratch(const Geometry& g) {
    const size_t n = static_cast<size_t>(g.kernel_size) * g.kernel_size;
    v.resize(n);
    lc.resize(n);
    e.resize(n);
    gv.resize(n);
  }

  void reserve_simd(const Geometry& g, int64_t row_width, bool backward) {
    capacity = std::max<int64_t>(kBlockWindows, row_width);
    const size_t n = static_cast<size_t>(g.kernel_size) * g.kernel_size;
    taps.resize(n * capacity);
    if (g.full) stencil.resize(9 * capacity);
    out.resize(capacity);
    if (backward) {
      tap_grads.resize(n * capacity);
      upstream.resize(capacity);
      centre_grad.resize(capacity);
      alpha_grad.resize(capacity);
      lam_grad.resize(capacity);
    }
  }
};

// ---------------------------------------------------------------------------
// Generic path: one window at a time (any k, s, padding).
// ---------------------------------------------------------------------------

template <typename scalar_t, typename T>
T generic_forward(const scalar_t* plane, const Geometry& g, int64_t oh, int64_t ow, const Params<T>& p, const T* f9,
                  T bias, Scratch<T>& s) {
  const int n = gather_window(plane, g, oh, ow, s.v.data());
  T centre;
  if (g.full) {
    T v9[9];
    gather_stencil(plane, g, oh, ow, v9);
    centre = full_centre(v9, f9, bias);
  } else {
    centre = lite_centre(s.v.data(), n);
  }
  return window_forward(s.v.data(), n, centre, p, s.lc.data(), s.e.data()).out;
}

// Adds this window's input gradient into `grad_plane` and its parameter gradients into `acc`.
template <typename scalar_t, typename T>
void generic_backward(const scalar_t* plane, T* grad_plane, const Geometry& g, int64_t oh, int64_t ow, T gy,
                      const Params<T>& p, const T* f9, T bias, Scratch<T>& s, double* acc) {
  const int n = gather_window(plane, g, oh, ow, s.v.data());
  T v9[9];
  T centre;
  if (g.full) {
    gather_stencil(plane, g, oh, ow, v9);
    centre = full_centre(v9, f9, bias);
  } else {
    centre = lite_centre(s.v.data(), n);
  }
  const WindowStats<T> st = window_forward(s.v.data(), n, centre, p, s.lc.data(), s.e.data());
  const WindowGrads<T> gr = window_backward(gy, s.v.data(), n, centre, p, st, s.lc.data(), s.e.data(), s.gv.data());
  const T share = g.full ? T(0) : gr.centre / static_cast<T>(n);
  int64_t h0, h1, w0, w1;
  window_span(oh, g.kernel_size, g.stride, g.padding, g.height, h0, h1);
  window_span(ow, g.kernel_size, g.stride, g.padding, g.width, w0, w1);
  int i = 0;
  for (int64_t h = h0; h < h1; ++h)
    for (int64_t w = w0; w < w1; ++w) grad_plane[h * g.width + w] += s.gv[i++] + share;
  acc[0] += gr.alpha;
  acc[1] += gr.lam;
  if (g.full) {
    for (int dy = 0; dy < 3; ++dy) {
      for (int dx = 0; dx < 3; ++dx) {
        const int64_t h = oh * g.stride - 1 + dy, w = ow * g.stride - 1 + dx;
        if (h >= 0 && h < g.height && w >= 0 && w < g.width) grad_plane[h * g.width + w] += gr.centre * f9[dy * 3 + dx];
        acc[2 + dy * 3 + dx] += gr.centre * v9[dy * 3 + dx];
      }
    }
    acc[11] += gr.centre;
  }
}

// ---------------------------------------------------------------------------
// SIMD path: windows inside the image, K×K window, stride S.
//
// A block of output rows × interior columns is packed tap-major (taps[t][j] for
// window j), one vectorised loop runs the window maths over the block with
// unit-stride loads, and the results are unpacked.  Packing is a strided copy
// (plus the dtype conversion); the loop it feeds does the transcendental work.
// ---------------------------------------------------------------------------

template <int K, int S, bool FULL>
struct Simd {
  static constexpr int kTaps = K * K;
  // Full-DPP's guide fits the pooled grid only with padding 1 for K = 3 and 0 for K = 2, so its
  // 3×3 stencil (rows o·S − 1 + dy) overlaps the window (rows o·S − pad + i) at i = dy − 1 + pad:
  // all nine taps for K = 3, four for K = 2.  Those are read from the packed window, not packed twice.
  static constexpr int kGuidePad = K == 3 ? 1 : 0;

  // Window tap that holds stencil tap t (row-major 3×3), or −1 if it lies outside the window.
  static constexpr int window_tap(int t) {
    return (t / 3 - 1 + kGuidePad >= 0 && t / 3 - 1 + kGuidePad < K && t % 3 - 1 + kGuidePad >= 0 &&
            t % 3 - 1 + kGuidePad < K)
               ? (t / 3 - 1 + kGuidePad) * K + (t % 3 - 1 + kGuidePad)
               : -1;
  }

  // Packed row of stencil tap t for a block: inside the window's taps, or its own stencil row.
  template <typename T>
  static const T* stencil_source(const Scratch<T>& s, int t) {
    const int w = window_tap(t);
    return w >= 0 ? s.taps.data() + w * s.capacity : s.stencil.data() + t * s.capacity;
  }

  // Output columns [a, b) ⊂ [lo, hi) whose stencil column ow·S − 1 + dx is inside the image.
  static void stencil_columns(const Geometry& g, int64_t lo, int64_t hi, int dx, int64_t& a, int64_t& b) {
    a = lo;
    b = hi;
    while (a < b && a * S - 1 + dx < 0) ++a;
    while (b > a && (b - 1) * S - 1 + dx >= g.width) --b;
  }

  // Pack windows of rows [oh0, oh1) × columns [lo, hi); window j = (oh − oh0)·(hi − lo) + (ow − lo).
  template <typename scalar_t, typename T>
  static void pack(const scalar_t* plane, const Geometry& g, int64_t oh0, int64_t oh1, int64_t lo, int64_t hi,
                   Scratch<T>& s) {
    const int64_t width = hi - lo, cap = s.capacity, W = g.width;
    const int pad = g.padding;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const int64_t base = (oh - oh0) * width - lo;
      for (int i = 0; i < K; ++i) {
        const scalar_t* src = plane + (oh * S - pad + i) * W - pad;
        for (int j = 0; j < K; ++j) {
          T* dst = s.taps.data() + (i * K + j) * cap + base;
          for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = static_cast<T>(src[ow * S + j]);
        }
      }
      if (FULL) {
        for (int dy = 0; dy < 3; ++dy) {
          const int64_t h = oh * S - 1 + dy;
          const bool row_inside = h >= 0 && h < g.height;
          for (int dx = 0; dx < 3; ++dx) {
            if (window_tap(dy * 3 + dx) >= 0) continue;  // read from the window's taps
            T* dst = s.stencil.data() + (dy * 3 + dx) * cap + base;
            int64_t a, b;
            stencil_columns(g, lo, hi, dx, a, b);
            if (!row_inside) a = b = hi;  // the whole row is conv padding
            for (int64_t ow = lo; ow < a; ++ow) dst[ow] = T(0);
            if (a < b) {
              const scalar_t* src = plane + h * W - 1 + dx;
              for (int64_t ow = a; ow < b; ++ow) dst[ow] = static_cast<T>(src[ow * S]);
            }
            for (int64_t ow = std::max(a, b); ow < hi; ++ow) dst[ow] = T(0);
          }
        }
      }
    }
  }

  // Window j of a packed block: its K×K taps into v, and returns its centre c̃ (Full-DPP: the
  // guide over the stencil, read from the window's own taps where the two overlap; Lite: the mean).
  // Inlined into the vectorised loops over windows.
  template <typename T>
  DPP_HD static T load_packed(const T* taps, const T* sten, int64_t cap, int64_t j, const T* f9, T bias, T* v) {
    DPP_UNROLL
    for (int t = 0; t < kTaps; ++t) v[t] = taps[t * cap + j];
    if (!FULL) return lite_centre(v, kTaps);
    T v9[9];
    DPP_UNROLL
    for (int t = 0; t < 9; ++t) v9[t] = window_tap(t) >= 0 ? v[window_tap(t)] : sten[t * cap + j];
    return full_centre(v9, f9, bias);
  }

  template <typename T>
  static void forward_block(Scratch<T>& s, int64_t count, const Params<T>& p_in, const T* f9_in, T bias) {
    const Params<T> p = p_in;  // local copies: provably not aliased by the stores below
    T f9[9];
    for (int t = 0; t < 9; ++t) f9[t] = FULL ? f9_in[t] : T(0);
    const int64_t cap = s.capacity;
    const T* taps = s.taps.data();
    const T* sten = FULL ? s.stencil.data() : nullptr;
    T* out = s.out.data();
    DPP_VECTORIZE
    for (int64_t j = 0; j < count; ++j) {
      T v[kTaps], lc[kTaps], e[kTaps];
      const T centre = load_packed(taps, sten, cap, j, f9, bias, v);
      out[j] = window_forward(v, kTaps, centre, p, lc, e).out;
    }
  }

  template <typename T>
  static void backward_block(Scratch<T>& s, int64_t count, const Params<T>& p_in, const T* f9_in, T bias,
                             double* acc) {
    const Params<T> p = p_in;
    T f9[9];
    for (int t = 0; t < 9; ++t) f9[t] = FULL ? f9_in[t] : T(0);
    const int64_t cap = s.capacity;
    const T* taps = s.taps.data();
    const T* sten = FULL ? s.stencil.data() : nullptr;
    const T* gy = s.upstream.data();
    T* tap_grads = s.tap_grads.data();
    T* centre_grad = s.centre_grad.data();
    T* alpha_grad = s.alpha_grad.data();
    T* lam_grad = s.lam_grad.data();
    DPP_VECTORIZE
    for (int64_t j = 0; j < count; ++j) {
      T v[kTaps], lc[kTaps], e[kTaps], gv[kTaps];
      const T centre = load_packed(taps, sten, cap, j, f9, bias, v);
      const WindowStats<T> st = window_forward(v, kTaps, centre, p, lc, e);
      const WindowGrads<T> gr = window_backward(gy[j], v, kTaps, centre, p, st, lc, e, gv);
      const T share = FULL ? T(0) : gr.centre * T(1.0 / kTaps);  // Lite: c̃ is the window mean
      DPP_UNROLL
      for (int t = 0; t < kTaps; ++t) tap_grads[t * cap + j] = gv[t] + share;
      centre_grad[j] = gr.centre;
      alpha_grad[j] = gr.alpha;
      lam_grad[j] = gr.lam;
    }
    // Per-channel sums in a fixed order (vectorised within the block, then added in float64).
    T g_alpha = 0, g_lam = 0;
#pragma omp simd reduction(+ : g_alpha, g_lam)
    for (int64_t j = 0; j < count; ++j) {
      g_alpha += alpha_grad[j];
      g_lam += lam_grad[j];
    }
    acc[0] += g_alpha;
    acc[1] += g_lam;
    if (FULL) {
      T g_bias = 0;
#pragma omp simd reduction(+ : g_bias)
      for (int64_t j = 0; j < count; ++j) g_bias += centre_grad[j];
      acc[11] += g_bias;
      for (int t = 0; t < 9; ++t) {
        const T* src = stencil_source(s, t);
        T g_f = 0;
#pragma omp simd reduction(+ : g_f)
        for (int64_t j = 0; j < count; ++j) g_f += centre_grad[j] * src[j];
        acc[2 + t] += g_f;
      }
    }
  }

  // Add the block's input gradients into grad_plane, row by row and tap by tap: for one
  // tap the windows of a row write distinct columns, so overlapping windows are fine.
  template <typename T>
  static void unpack_grads(const Scratch<T>& s, const Geometry& g, int64_t oh0, int64_t oh1, int64_t lo, int64_t hi,
                           const T* f9, T* grad_plane) {
    const int64_t width = hi - lo, cap = s.capacity, W = g.width;
    const int pad = g.padding;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const int64_t base = (oh - oh0) * width - lo;
      for (int i = 0; i < K; ++i) {
        T* dst = grad_plane + (oh * S - pad + i) * W - pad;
        for (int j = 0; j < K; ++j) {
          const T* src = s.tap_grads.data() + (i * K + j) * cap + base;
          DPP_VECTORIZE
          for (int64_t ow = lo; ow < hi; ++ow) dst[ow * S + j] += src[ow];
        }
      }
      if (FULL) {
        const T* src = s.centre_grad.data() + base;
        for (int dy = 0; dy < 3; ++dy) {
          const int64_t h = oh * S - 1 + dy;
          if (h < 0 || h >= g.height) continue;
          for (int dx = 0; dx < 3; ++dx) {
            int64_t a, b;
            stencil_columns(g, lo, hi, dx, a, b);
            if (a >= b) continue;
            T* dst = grad_plane + h * W - 1 + dx;
            const T f = f9[dy * 3 + dx];
            DPP_VECTORIZE
            for (int64_t ow = a; ow < b; ++ow) dst[ow * S] += src[ow] * f;
          }
        }
      }
    }
  }

  template <typename scalar_t, typename T>
  static void forward_plane(const scalar_t* plane, scalar_t* out_plane, const Geometry& g, const Params<T>& p,
                            const T* f9, T bias, Scratch<T>& s) {
    int64_t row_lo, row_hi, lo, hi;
    interior_span(g.height, g.out_height, g.kernel_size, g.stride, g.padding, row_lo, row_hi);
    interior_span(g.width, g.out_width, g.kernel_size, g.stride, g.padding, lo, hi);
    const int64_t width = hi - lo;
    const bool any_inner = row_hi > row_lo && width > 0;
    for (int64_t oh = 0; oh < g.out_height; ++oh) {
      const bool inner = any_inner && oh >= row_lo && oh < row_hi;
      for (int64_t ow = 0; ow < g.out_width; ++ow)
        if (!inner || ow < lo || ow >= hi)
          out_plane[oh * g.out_width + ow] = static_cast<scalar_t>(generic_forward(plane, g, oh, ow, p, f9, bias, s));
    }
    if (!any_inner) return;
    if (s.capacity < width) s.reserve_simd(g, width, false);
    const int64_t rows_per_block = std::max<int64_t>(1, s.capacity / width);
    for (int64_t oh0 = row_lo; oh0 < row_hi; oh0 += rows_per_block) {
      const int64_t oh1 = std::min(oh0 + rows_per_block, row_hi);
      pack(plane, g, oh0, oh1, lo, hi, s);
      forward_block(s, (oh1 - oh0) * width, p, f9, bias);
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const T* src = s.out.data() + (oh - oh0) * width - lo;
        scalar_t* dst = out_plane + oh * g.out_width;
        for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = static_cast<scalar_t>(src[ow]);
      }
    }
  }

  template <typename scalar_t, typename T>
  static void backward_plane(const scalar_t* plane, const scalar_t* gy_plane, T* grad_plane, const Geometry& g,
                             const Params<T>& p, const T* f9, T bias, Scratch<T>& s, double* acc) {
    int64_t row_lo, row_hi, lo, hi;
    interior_span(g.height, g.out_height, g.kernel_size, g.stride, g.padding, row_lo, row_hi);
    interior_span(g.width, g.out_width, g.kernel_size, g.stride, g.padding, lo, hi);
    const int64_t width = hi - lo;
    const bool any_inner = row_hi > row_lo && width > 0;
    if (any_inner) {
      if (s.capacity < width || s.tap_grads.empty()) s.reserve_simd(g, width, true);
      const int64_t rows_per_block = std::max<int64_t>(1, s.capacity / width);
      for (int64_t oh0 = row_lo; oh0 < row_hi; oh0 += rows_per_block) {
        const int64_t oh1 = std::min(oh0 + rows_per_block, row_hi);
        pack(plane, g, oh0, oh1, lo, hi, s);
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          const scalar_t* src = gy_plane + oh * g.out_width;
          T* dst = s.upstream.data() + (oh - oh0) * width - lo;
          for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = static_cast<T>(src[ow]);
        }
        backward_block(s, (oh1 - oh0) * width, p, f9, bias, acc);
        unpack_grads(s, g, oh0, oh1, lo, hi, f9, grad_plane);
      }
    }
    for (int64_t oh = 0; oh < g.out_height; ++oh) {
      const bool inner = any_inner && oh >= row_lo && oh < row_hi;
      for (int64_t ow = 0; ow < g.out_width; ++ow)
        if (!inner || ow < lo || ow >= hi)
          generic_backward(plane, grad_plane, g, oh, ow, static_cast<T>(gy_plane[oh * g.out_width + ow]), p, f9,
                           bias, s, acc);
    }
  }
};

struct Generic {
  template <typename scalar_t, typename T>
  static void forward_plane(const scalar_t* plane, scalar_t* out_plane, const Geometry& g, const Params<T>& p,
                            const T* f9, T bias, Scratch<T>& s) {
    for (int64_t oh = 0; oh < g.out_height; ++oh)
      for (int64_t ow = 0; ow < g.out_width; ++ow)
        out_plane[oh * g.out_width + ow] = static_cast<scalar_t>(generic_forward(plane, g, oh, ow, p, f9, bias, s));
  }

  template <typename scalar_t, typename T>
  static void backward_plane(const scalar_t* plane, const scalar_t* gy_plane, T* grad_plane, const Geometry& g,
                             const Params<T>& p, const T* f9, T bias, Scratch<T>& s, double* acc) {
    for (int64_t oh = 0; oh < g.out_height; ++oh)
      for (int64_t ow = 0; ow < g.out_width; ++ow)
        generic_backward(plane, grad_plane, g, oh, ow, static_cast<T>(gy_plane[oh * g.out_width + ow]), p, f9, bias, s, acc);
  }
};

// Calls fn(Path{}) with the SIMD path matching the geometry, or Generic.
template <typename T, typename Fn>
void dispatch_path(const Geometry& g, Fn&& fn) {
  // Full-DPP's SIMD paths read the guide's stencil from the window (Simd::kGuidePad); the one
  // other padding its guide allows (2×2/2 pad 1 on odd sizes) takes the generic path.
  const bool guide_in_window = !g.full || g.padding == (g.kernel_size == 3 ? 1 : 0);
  if (std::is_same<T, float>::value && guide_in_window) {
    const int key = g.kernel_size * 100 + g.stride * 10 + (g.full ? 1 : 0);
    switch (key) {
      case 220: return fn(Simd<2, 2, false>{});
      case 221: return fn(Simd<2, 2, true>{});
      case 320: return fn(Simd<3, 2, false>{});
      case 321: return fn(Simd<3, 2, true>{});
      case 210: return fn(Simd<2, 1, false>{});
      case 211: return fn(Simd<2, 1, true>{});
      case 310: return fn(Simd<3, 1, false>{});
      case 311: return fn(Simd<3, 1, true>{});
      default: break;
    }
  }
  fn(Generic{});
}

at::Tensor dpp_forward_cpu(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& lam,
                           const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                           int64_t kernel_size, int64_t stride, int64_t padding, bool asym, double eps2,
                           bool scale_invariant) {
  TORCH_CHECK(x_in.device().is_cpu(), "dpp_forward (CPU kernel): input must be on the CPU");
  const at::Tensor x = x_in.contiguous();
  const Geometry g = make_geometry(x, kernel_size, stride, padding, weight.has_value());
  const ChannelParams cp = make_channel_params(x, alpha, lam, weight, bias);
  const int64_t batch = x.size(0), channels = x.size(1);
  at::Tensor y = at::empty({batch, channels, g.out_height, g.out_width}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dpp_forward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const ChannelArgs<T> args = channel_args<T>(cp, eps2, asym, scale_invariant);
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.data_ptr<scalar_t>();
    dispatch_path<T>(g, [&](auto path) {
      using Path = decltype(path);
      at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
        const FlushSubnormals flush(std::is_same<T, float>::value);
        Scratch<T> s(g);
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t c = plane % channels;
          const Params<T> p = args.params(c);
          const T* f9 = args.weight ? args.weight + c * 9 : nullptr;
          const T b = args.bias ? args.bias[c] : T(0);
          Path::forward_plane(x_data + plane * g.height * g.width, y_data + plane * g.out_height * g.out_width, g, p,
                              f9, b, s);
        }
      });
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dpp_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& lam,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t kernel_size, int64_t stride,
    int64_t padding, bool asym, double eps2, bool scale_invariant) {
  TORCH_CHECK(x_in.device().is_cpu() && grad_in.device().is_cpu(), "dpp_backward (CPU kernel): tensors must be on the CPU");
  const at::Tensor x = x_in.contiguous();
  const Geometry g = make_geometry(x, kernel_size, stride, padding, weight.has_value());
  const at::Tensor grad = upstream_grad(grad_in, x, g);
  const ChannelParams cp = make_channel_params(x, alpha, lam, weight, bias);
  const int64_t batch = x.size(0), channels = x.size(1);
  const int slots = channel_grad_slots(g.full);
  at::Tensor grad_x = at::empty_like(x);
  // Per-plane parameter gradients in float64, reduced over the batch in a fixed order below.
  std::vector<double> partial(static_cast<size_t>(batch * channels * slots), 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dpp_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const ChannelArgs<T> args = channel_args<T>(cp, eps2, asym, scale_invariant);
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* gy_data = grad.const_data_ptr<scalar_t>();
    scalar_t* gx_data = grad_x.data_ptr<scalar_t>();
    const int64_t plane_size = g.height * g.width;
    dispatch_path<T>(g, [&](auto path) {
      using Path = decltype(path);
      at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
        const FlushSubnormals flush(std::is_same<T, float>::value);
        Scratch<T> s(g);
        constexpr bool same = std::is_same<scalar_t, T>::value;
        if (!same) s.plane_grad.resize(plane_size);
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t c = plane % channels;
          const Params<T> p = args.params(c);
          const T* f9 = args.weight ? args.weight + c * 9 : nullptr;
          const T b = args.bias ? args.bias[c] : T(0);
          scalar_t* gx_plane = gx_data + plane * plane_size;
          T* acc_plane = same ? reinterpret_cast<T*>(gx_plane) : s.plane_grad.data();
          std::fill(acc_plane, acc_plane + plane_size, T(0));
          Path::backward_plane(x_data + plane * plane_size, gy_data + plane * g.out_height * g.out_width, acc_plane, g,
                               p, f9, b, s, partial.data() + plane * slots);
          if (!same) {
            for (int64_t i = 0; i < plane_size; ++i) gx_plane[i] = static_cast<scalar_t>(acc_plane[i]);
          }
        }
      });
    });
  });
  at::Tensor table = at::zeros({channels, slots}, x.options().dtype(at::kDouble));
  double* t = table.data_ptr<double>();
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t c = 0; c < channels; ++c)
      for (int k = 0; k < slots; ++k) t[c * slots + k] += partial[(n * channels + c) * slots + k];
  auto [g_alpha, g_lam, g_weight, g_bias] = split_channel_grads(table, alpha, lam, weight, bias);
  return {grad_x, g_alpha, g_lam, g_weight, g_bias};
}

}  // namespace
}  // namespace poolbench_dpp

TORCH_LIBRARY_IMPL(poolbench_dpp, CPU, m) {
  m.impl("dpp_forward", &poolbench_dpp::dpp_forward_cpu);
  m.impl("dpp_backward", &poolbench_dpp::dpp_backward_cpu);
}
