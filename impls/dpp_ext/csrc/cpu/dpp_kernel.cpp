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
// with unit-stride loads.  A block spans planes (each window carries its
// channel's parameters), so a thread's small planes (49 windows at 14²) share
// one loop of hundreds of windows instead of paying the setup, the short
// packing loops and a scalar remainder plane by plane.  A block of windows
// whose values are moderate (the common case, checked per plane) runs a loop
// specialised for it (dpp_math.h's kPromise* flags; ρ_Sym also drops the Asym
// clamp), the same values with about a third less work.  Border windows (padding) run vectorised too, grouped by
// their count of valid taps; every other geometry/dtype takes the generic
// one-window-at-a-time path.  All of them call the same dpp_math.h functions.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../dpp_args.h"
#include "dpp_cpu_common.h"
#include "dpp_kernel_nhwc.h"

namespace poolbench_dpp {
namespace {

// A window loop compiled as a function of its own: GCC vectorises each variant of the loop
// reliably only when it is not inlined beside the others.
#if defined(__GNUC__)
#define DPP_NOINLINE __attribute__((noinline))
#else
#define DPP_NOINLINE
#endif

// Windows per SIMD block: enough to fill vectors even where a row has only 7 outputs
// (VGG-16's last pooling layer), few enough that the packed taps stay in L1/L2.
constexpr int64_t kBlockWindows = 512;

// Rows of one plane that go into a packed block together, and where they start in it.
struct Segment {
  int64_t plane, oh0, oh1, offset;
};

// Border windows [begin, end) of a plane with `count` valid taps each.
struct BorderGroup {
  int count;
  int64_t begin, end;
};

// Per-thread scratch: window arrays for the generic path, packed tap buffers for the SIMD path.
template <typename T>
struct Scratch {
  std::vector<T> v, lc, e, gv;  // k² each (generic path)
  int64_t capacity = 0;         // windows per SIMD block
  int64_t used = 0;             // windows queued in the block
  bool block_tame = false;      // the block's planes keep the common case's promises (Simd::plane_is_tame)
  std::vector<Segment> segments;
  std::vector<T> taps;          // k² × capacity, tap-major: taps[t·capacity + j]
  std::vector<T> stencil;       // 9 × capacity (Full-DPP guide inputs)
  std::vector<T> tap_grads;     // k² × capacity
  std::vector<T> out, upstream, centre_grad, alpha_grad, lam_grad;  // capacity each
  std::vector<T> log2_alpha, half_lam, inv_alpha, centre;           // per window: its channel's λ, α; c̃
  std::vector<T> plane_grad;    // H·W (fp16/bf16 backward accumulates in T)
  std::vector<T> row_buffer;    // a segment's input rows, end to end (flat packing)
  // Border windows (SIMD path with padding): output index oh·OW + ow of each, their valid taps
  // packed compactly (tap-major, zeros past n) and what the window maths needs.
  std::vector<int64_t> border;        // by group of valid-tap count
  std::vector<int64_t> border_order;  // slots in border, row-major
  std::vector<BorderGroup> border_groups;
  int64_t border_capacity = 0;        // border windows per plane
  std::vector<T> border_taps, border_stencil, border_grads;  // k² (9 for the stencil) × capacity
  std::vector<T> border_centre, border_out, border_upstream, border_centre_grad, border_alpha_grad,
      border_lam_grad;  // capacity each

  // Ready for a call with geometry g (buffers keep their allocation from earlier calls).
  void reset(const Geometry& g) {
    const size_t n = static_cast<size_t>(g.kernel_size) * g.kernel_size;
    v.resize(n);
    lc.resize(n);
    e.resize(n);
    gv.resize(n);
    segments.clear();
    used = 0;
  }

  void reserve_simd(const Geometry& g, int64_t windows, bool backward) {
    capacity = windows;
    const size_t n = static_cast<size_t>(g.kernel_size) * g.kernel_size;
    taps.resize(n * capacity);
    if (g.full) stencil.resize(9 * capacity);
    for (std::vector<T>* a : {&out, &log2_alpha, &half_lam, &inv_alpha, &centre}) a->resize(capacity);
    row_buffer.resize(static_cast<size_t>(g.stride) * capacity + g.width);
    if (backward) {
      tap_grads.resize(n * capacity);
      for (std::vector<T>* a : {&upstream, &centre_grad, &alpha_grad, &lam_grad}) a->resize(capacity);
    }
  }

  void reserve_border(const Geometry& g, int64_t windows, bool backward) {
    border_capacity = windows;
    const size_t n = static_cast<size_t>(g.kernel_size) * g.kernel_size;
    border_taps.resize(n * windows);
    if (g.full) border_stencil.resize(9 * windows);
    for (std::vector<T>* a : {&border_centre, &border_out}) a->resize(windows);
    if (backward) {
      border_grads.resize(n * windows);
      for (std::vector<T>* a : {&border_upstream, &border_centre_grad, &border_alpha_grad, &border_lam_grad})
        a->resize(windows);
    }
  }
};

// This thread's scratch, reset for g: allocated once per thread and dtype, not per call (on small
// inputs the allocations were a good part of a call's host cost).
template <typename T>
Scratch<T>& thread_scratch(const Geometry& g) {
  static thread_local Scratch<T> scratch;
  scratch.reset(g);
  return scratch;
}

// ---------------------------------------------------------------------------
// Adding one window's gradients, window by window (the generic path and the SIMD path's border
// windows): the input gradient into a plane, the parameter gradients into the plane's float64 slots.
// ---------------------------------------------------------------------------

// ∂L/∂x of window (oh, ow): its valid taps' gradients gv[i·gv_stride] (row-major) plus, for Lite-DPP,
// its share of ∂L/∂c̃ = centre_grad (c̃ is the mean of the valid taps).
template <typename T>
void add_window_gradient(T* grad_plane, const Geometry& g, int64_t oh, int64_t ow, const T* gv, int64_t gv_stride,
                         T centre_grad) {
  int64_t h0, h1, w0, w1;
  window_span(oh, g.kernel_size, g.stride, g.padding, g.height, h0, h1);
  window_span(ow, g.kernel_size, g.stride, g.padding, g.width, w0, w1);
  const T share = g.full ? T(0) : centre_grad / static_cast<T>((h1 - h0) * (w1 - w0));
  int64_t i = 0;
  for (int64_t h = h0; h < h1; ++h)
    for (int64_t w = w0; w < w1; ++w) grad_plane[h * g.width + w] += gv[i++ * gv_stride] + share;
}

// Full-DPP's guide share of window (oh, ow): ∂L/∂c̃ = centre_grad through F into the 3×3 stencil's
// pixels inside the image, and into ∂F (acc[2..10], with the stencil values v9) and ∂b (acc[11]).
template <typename T>
void add_guide_gradient(T* grad_plane, const Geometry& g, int64_t oh, int64_t ow, T centre_grad, const T* f9,
                        const T* v9, double* acc) {
  for (int t = 0; t < 9; ++t) {
    const int64_t h = oh * g.stride - 1 + t / 3, w = ow * g.stride - 1 + t % 3;
    if (h >= 0 && h < g.height && w >= 0 && w < g.width)
      grad_plane[h * g.width + w] = dpp_fma(centre_grad, f9[t], grad_plane[h * g.width + w]);
    acc[2 + t] += centre_grad * v9[t];
  }
  acc[11] += centre_grad;
}

// ---------------------------------------------------------------------------
// Generic path: one window at a time (any k, s, padding).
// ---------------------------------------------------------------------------

template <typename scalar_t, typename T>
T window_centre(const scalar_t* plane, const Geometry& g, int64_t oh, int64_t ow, const T* v, int n, const T* f9,
                T bias, T* v9) {
  if (!g.full) return lite_centre(v, n);
  gather_stencil(plane, g, oh, ow, v9);
  return full_centre(v9, f9, bias);
}

template <typename scalar_t, typename T>
T generic_forward(const scalar_t* plane, const Geometry& g, int64_t oh, int64_t ow, const Params<T>& p, const T* f9,
                  T bias, Scratch<T>& s) {
  const int n = gather_window(plane, g, oh, ow, s.v.data());
  T v9[9];
  const T centre = window_centre(plane, g, oh, ow, s.v.data(), n, f9, bias, v9);
  return window_forward(s.v.data(), n, centre, p, s.lc.data(), s.e.data()).out;
}

// Adds this window's input gradient into `grad_plane` and its parameter gradients into `acc`.
template <typename scalar_t, typename T>
void generic_backward(const scalar_t* plane, T* grad_plane, const Geometry& g, int64_t oh, int64_t ow, T gy,
                      const Params<T>& p, const T* f9, T bias, Scratch<T>& s, double* acc) {
  const int n = gather_window(plane, g, oh, ow, s.v.data());
  T v9[9];
  const T centre = window_centre(plane, g, oh, ow, s.v.data(), n, f9, bias, v9);
  const WindowStats<T> st = window_forward(s.v.data(), n, centre, p, s.lc.data(), s.e.data());
  const WindowGrads<T> gr = window_backward(gy, s.v.data(), n, centre, p, st, s.lc.data(), s.e.data(), s.gv.data());
  add_window_gradient(grad_plane, g, oh, ow, s.gv.data(), 1, gr.centre);
  acc[0] += gr.alpha;
  acc[1] += gr.lam;
  if (g.full) add_guide_gradient(grad_plane, g, oh, ow, gr.centre, f9, v9, acc);
}

// One call's planes and what each needs: pointers, the channel's parameters and guide.
template <typename scalar_t, typename T>
struct PlaneSet {
  const Geometry& g;
  const ChannelArgs<T>& args;
  int64_t channels;
  const scalar_t* x;
  const scalar_t* gy;  // backward only
  scalar_t* y;         // forward: the output; backward: ∂x

  int64_t in_size() const { return g.height * g.width; }
  int64_t out_size() const { return g.out_height * g.out_width; }
  const scalar_t* input(int64_t plane) const { return x + plane * in_size(); }
  Params<T> params(int64_t plane) const { return args.params(plane % channels); }
  void guide(int64_t plane, T* f9, T& bias) const { args.guide(plane % channels, f9, bias); }
};

// ---------------------------------------------------------------------------
// SIMD path: windows inside the image, K×K window, stride S.
//
// Rows of interior windows are packed tap-major (taps[t][j] for window j) into a block, one
// vectorised loop runs the window maths over the block with unit-stride loads, and the results
// are unpacked.  A block spans planes: small planes (a 14² plane has 49 windows) share one block,
// so the loop, the packing and the unpacking run over hundreds of windows whatever the plane size;
// each window carries its channel's α and λ (and Full-DPP's guide value c̃, computed per segment
// with the channel's filter while the stencil is in cache).  Border windows run in loops of their own.
// ---------------------------------------------------------------------------

// A block has room for kBlockWindows windows plus one segment (rows of one plane, about
// kSegmentWindows windows), so it runs once it holds ≥ kBlockWindows: several small planes
// or a few row bands of a large one.
// Segments depend on the geometry only, so the per-plane parameter-gradient sums (float32 per
// segment, then float64 in row order) are the same for any thread count.
constexpr int64_t kSegmentWindows = 256;

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

  // The interior windows of every plane: rows [row_lo, row_hi) × columns [lo, hi), cut into
  // segments of seg_rows rows.
  struct Interior {
    int64_t row_lo, row_hi, lo, hi, width, seg_rows;
    bool inner(int64_t oh, int64_t ow) const { return oh >= row_lo && oh < row_hi && ow >= lo && ow < hi; }
  };

  static Interior interior(const Geometry& g) {
    Interior in;
    interior_span(g.height, g.out_height, g.kernel_size, g.stride, g.padding, in.row_lo, in.row_hi);
    interior_span(g.width, g.out_width, g.kernel_size, g.stride, g.padding, in.lo, in.hi);
    in.width = in.hi - in.lo;
    if (in.width == 0) in.row_hi = in.row_lo;
    in.seg_rows = std::max<int64_t>(1, kSegmentWindows / std::max<int64_t>(in.width, 1));
    return in;
  }

  static int64_t block_capacity(const Interior& in) {
    return kBlockWindows + in.seg_rows * in.width;
  }

  // Calls fn(oh, ow) for every window of a plane that is not interior.
  template <typename Fn>
  static void for_each_border(const Geometry& g, const Interior& in, Fn&& fn) {
    for (int64_t oh = 0; oh < g.out_height; ++oh) {
      const bool inner_row = oh >= in.row_lo && oh < in.row_hi;
      for (int64_t ow = 0; ow < g.out_width; ++ow)
        if (!inner_row || ow < in.lo || ow >= in.hi) fn(oh, ow);
    }
  }

  // Border windows (padding): fewer valid taps (n < K², packed compactly row-major as gather_window
  // does), so the interior loop cannot take them, and one window at a time costs ~15× a SIMD window
  // (the ResNet stem's 111 border windows per plane, 3.5% of them, were a third of its time).  They
  // run vectorised too, grouped by n: with n a compile-time constant the tap loops fold to straight
  // code (a runtime n leaves branches GCC does not if-convert).  Each group's loop makes the generic
  // path's dpp_math.h calls, and the backward adds into ∂x and the parameter gradients in the generic
  // path's (row-major) order: the generic path's results, up to how vector and scalar code round a
  // multiply-add (a few ulp).

  // The border windows of a plane (the same for every plane), grouped by valid-tap count: s.border
  // holds them by group, s.border_order their slots in row-major order.
  template <typename T>
  static void collect_border(const Geometry& g, const Interior& in, Scratch<T>& s, bool backward) {
    std::vector<std::pair<int, int64_t>> windows;  // (n, oh·OW + ow), row-major
    for_each_border(g, in, [&](int64_t oh, int64_t ow) {
      int64_t h0, h1, w0, w1;
      window_span(oh, K, S, g.padding, g.height, h0, h1);
      window_span(ow, K, S, g.padding, g.width, w0, w1);
      windows.emplace_back(static_cast<int>((h1 - h0) * (w1 - w0)), oh * g.out_width + ow);
    });
    std::vector<int64_t> slot(windows.size());
    for (size_t i = 0; i < slot.size(); ++i) slot[i] = static_cast<int64_t>(i);
    std::stable_sort(slot.begin(), slot.end(),
                     [&](int64_t a, int64_t b) { return windows[a].first < windows[b].first; });
    s.border.resize(windows.size());
    s.border_order.resize(windows.size());
    s.border_groups.clear();
    for (size_t j = 0; j < slot.size(); ++j) {
      const int n = windows[slot[j]].first;
      s.border[j] = windows[slot[j]].second;
      s.border_order[slot[j]] = static_cast<int64_t>(j);
      if (s.border_groups.empty() || s.border_groups.back().count != n)
        s.border_groups.push_back({n, static_cast<int64_t>(j), static_cast<int64_t>(j)});
      s.border_groups.back().end = static_cast<int64_t>(j) + 1;
    }
    s.reserve_border(g, static_cast<int64_t>(windows.size()), backward);
  }

  // Pack a plane's border windows: valid taps (zeros past n) and (Full-DPP) the stencil and c̃.
  template <typename scalar_t, typename T>
  static void pack_border(const scalar_t* plane, const Geometry& g, const T* f9, T bias, Scratch<T>& s) {
    const int64_t cap = s.border_capacity;
    for (int64_t j = 0; j < cap; ++j) {
      const int64_t oh = s.border[j] / g.out_width, ow = s.border[j] % g.out_width;
      T v[kTaps] = {};
      gather_window<kTaps>(plane, g, oh, ow, v);
      for (int t = 0; t < kTaps; ++t) s.border_taps[t * cap + j] = v[t];
      if (FULL) {
        T v9[9];
        gather_stencil(plane, g, oh, ow, v9);
        for (int t = 0; t < 9; ++t) s.border_stencil[t * cap + j] = v9[t];
        s.border_centre[j] = full_centre(v9, f9, bias);
      }
    }
  }

  // Calls fn(std::integral_constant<int, n>{}) for a border group's valid-tap count n (rows × columns,
  // each 1..K), or fn(std::integral_constant<int, 0>{}) for any other n (never, for K ≤ 3).
  template <typename Fn>
  static void with_count(int n, Fn&& fn) {
    switch (n) {
      case 1: return fn(std::integral_constant<int, 1>{});
      case 2: return fn(std::integral_constant<int, 2>{});
      case 3: return fn(std::integral_constant<int, K >= 3 ? 3 : 0>{});
      case 4: return fn(std::integral_constant<int, 4>{});
      case 6: return fn(std::integral_constant<int, K >= 3 ? 6 : 0>{});
      default: return fn(std::integral_constant<int, 0>{});
    }
  }

  // Border window j: its taps into v; returns its centre c̃.  NC: its valid-tap count (0: read count).
  template <int NC, typename T>
  static DPP_HD T load_border(const Scratch<T>& s, int64_t j, int n, T* v) {
    DPP_UNROLL
    for (int t = 0; t < kTaps; ++t) v[t] = s.border_taps[t * s.border_capacity + j];
    return FULL ? s.border_centre[j] : lite_centre<kTaps>(v, NC > 0 ? NC : n);
  }

  template <int NC, typename T>
  static void border_forward_group(Scratch<T>& s, const BorderGroup& group, const Params<T>& p) {
    const Scratch<T>& in = s;
    T* out = s.border_out.data();
    const int n = NC > 0 ? NC : group.count;
    DPP_VECTORIZE
    for (int64_t j = group.begin; j < group.end; ++j) {
      T v[kTaps], lc[kTaps], e[kTaps];
      const T centre = load_border<NC>(in, j, n, v);
      out[j] = window_forward<kTaps>(v, NC > 0 ? NC : n, centre, p, lc, e).out;
    }
  }

  template <int NC, typename T>
  static void border_backward_group(Scratch<T>& s, const BorderGroup& group, const Params<T>& p) {
    const Scratch<T>& in = s;
    const T* gy = s.border_upstream.data();
    T* grads = s.border_grads.data();
    T* centre_grad = s.border_centre_grad.data();
    T* alpha_grad = s.border_alpha_grad.data();
    T* lam_grad = s.border_lam_grad.data();
    const int64_t cap = s.border_capacity;
    const int n = NC > 0 ? NC : group.count;
    DPP_VECTORIZE
    for (int64_t j = group.begin; j < group.end; ++j) {
      T v[kTaps], lc[kTaps], e[kTaps], gv[kTaps];
      const T centre = load_border<NC>(in, j, n, v);
      const WindowStats<T> st = window_forward<kTaps>(v, NC > 0 ? NC : n, centre, p, lc, e);
      const WindowGrads<T> gr = window_backward<kTaps>(gy[j], v, NC > 0 ? NC : n, centre, p, st, lc, e, gv);
      DPP_UNROLL
      for (int t = 0; t < kTaps; ++t)
        if (t < (NC > 0 ? NC : n)) grads[t * cap + j] = gv[t];
      centre_grad[j] = gr.centre;
      alpha_grad[j] = gr.alpha;
      lam_grad[j] = gr.lam;
    }
  }

  template <typename scalar_t, typename T>
  static void border_forward(const PlaneSet<scalar_t, T>& ps, int64_t plane, const Params<T>& p, const T* f9, T bias,
                             Scratch<T>& s) {
    if (s.border.empty()) return;
    pack_border(ps.input(plane), ps.g, f9, bias, s);
    for (const BorderGroup& group : s.border_groups)
      with_count(group.count, [&](auto nc) { border_forward_group<decltype(nc)::value>(s, group, p); });
    scalar_t* out_plane = ps.y + plane * ps.out_size();
    for (int64_t j = 0; j < s.border_capacity; ++j) out_plane[s.border[j]] = static_cast<scalar_t>(s.border_out[j]);
  }

  // The border windows' input gradients into grad_plane and parameter gradients into acc, window by
  // window in row-major order (the generic path's).
  template <typename scalar_t, typename T>
  static void border_backward(const PlaneSet<scalar_t, T>& ps, int64_t plane, const Params<T>& p, const T* f9,
                              T bias, T* grad_plane, Scratch<T>& s, double* acc) {
    if (s.border.empty()) return;
    const Geometry& g = ps.g;
    const scalar_t* gy_plane = ps.gy + plane * ps.out_size();
    const int64_t cap = s.border_capacity;
    pack_border(ps.input(plane), g, f9, bias, s);
    for (int64_t j = 0; j < cap; ++j) s.border_upstream[j] = static_cast<T>(gy_plane[s.border[j]]);
    for (const BorderGroup& group : s.border_groups)
      with_count(group.count, [&](auto nc) { border_backward_group<decltype(nc)::value>(s, group, p); });
    for (const int64_t j : s.border_order) {
      const int64_t oh = s.border[j] / g.out_width, ow = s.border[j] % g.out_width;
      const T gc = s.border_centre_grad[j];
      add_window_gradient(grad_plane, g, oh, ow, s.border_grads.data() + j, cap, gc);
      acc[0] += s.border_alpha_grad[j];
      acc[1] += s.border_lam_grad[j];
      if (FULL) {
        T v9[9];
        for (int t = 0; t < 9; ++t) v9[t] = s.border_stencil[t * cap + j];
        add_guide_gradient(grad_plane, g, oh, ow, gc, f9, v9, acc);
      }
    }
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

  // Pack the windows of rows [seg.oh0, seg.oh1) × [lo, hi); window j = offset + (oh − oh0)·width + (ow − lo).
  // One loop per output row writes all of a window's taps (the row is short on small planes, so
  // one pass instead of one per tap is what keeps the packing cheaper than the window maths).
  template <typename scalar_t, typename T>
  static void pack(const scalar_t* plane, const Geometry& g, const Interior& in, const Segment& seg, Scratch<T>& s) {
    if (flat_rows(g, in)) return pack_flat(plane, g, in, seg, s);
    const int64_t cap = s.capacity, W = g.width;
    for (int64_t oh = seg.oh0; oh < seg.oh1; ++oh) {
      T* dst = s.taps.data() + seg.offset + (oh - seg.oh0) * in.width - in.lo;
      const scalar_t* row[K];
      for (int i = 0; i < K; ++i) row[i] = plane + (oh * S - g.padding + i) * W - g.padding;
      DPP_VECTORIZE
      for (int64_t ow = in.lo; ow < in.hi; ++ow) {
        DPP_UNROLL
        for (int t = 0; t < kTaps; ++t) dst[t * cap + ow] = static_cast<T>(row[t / K][ow * S + t % K]);
      }
      if (FULL) pack_stencil(plane, g, in, oh, s.stencil.data() + (dst - s.taps.data()), cap);
    }
  }

  // Non-overlapping windows that tile whole input rows (K = S, no padding, W = S·OW): window m of
  // a segment reads row i of its window at S·m + j of the segment's rows i copied end to end, so
  // each tap is one long strided loop over the segment (vectorised) instead of one per output row
  // (7 windows at 14², too short for the vector path).
  static bool flat_rows(const Geometry& g, const Interior& in) {
    return K == S && g.padding == 0 && in.lo == 0 && in.hi == g.out_width && g.width == S * g.out_width;
  }

  template <typename scalar_t, typename T>
  static void pack_flat(const scalar_t* plane, const Geometry& g, const Interior& in, const Segment& seg,
                        Scratch<T>& s) {
    const int64_t cap = s.capacity, W = g.width, rows = seg.oh1 - seg.oh0, n = rows * in.width;
    T* taps = s.taps.data() + seg.offset;
    T* line = s.row_buffer.data();  // rows·W
    for (int i = 0; i < K; ++i) {
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* src = plane + ((seg.oh0 + r) * S + i) * W;
        T* dst = line + r * W;
        for (int64_t w = 0; w < W; ++w) dst[w] = static_cast<T>(src[w]);
      }
      for (int j = 0; j < K; ++j) {
        T* dst = taps + (i * K + j) * cap;
        DPP_VECTORIZE
        for (int64_t m = 0; m < n; ++m) dst[m] = line[m * S + j];
      }
    }
    if (!FULL) return;
    if (seg.oh0 != 0) {  // the stencil reaches the row above the segment: per-row packing
      for (int64_t oh = seg.oh0; oh < seg.oh1; ++oh) {
        const int64_t base = seg.offset + (oh - seg.oh0) * in.width;
        pack_stencil(plane, g, in, oh, s.stencil.data() + base, cap);
      }
      return;
    }
    // K = S = 2: stencil rows 2·oh − 1 + dy, columns 2·ow − 1 + dx.  The taps outside the window
    // (dy = 0 or dx = 0) are the window taps of the row above (m − OW) or the window on the left
    // (m − 1): shifted copies, zero in the first row (conv padding above) and first column.
    static_assert(!FULL || K == 2 || K != S, "Full-DPP's flat stencil is for 2x2/2 windows");
    const int64_t OW = in.width;
    T* sten = s.stencil.data() + seg.offset;
    auto shifted = [&](int t, int tap, int64_t shift) {
      T* dst = sten + t * cap;
      const T* src = taps + tap * cap - shift;
      for (int64_t m = 0; m < std::min(shift, n); ++m) dst[m] = T(0);
      DPP_VECTORIZE
      for (int64_t m = shift; m < n; ++m) dst[m] = src[m];
    };
    shifted(0, 3, OW + 1);  // (dy, dx) = (0, 0): tap (1, 1) of the window above-left
    shifted(1, 2, OW);      // (0, 1): tap (1, 0) of the window above
    shifted(2, 3, OW);      // (0, 2): tap (1, 1) of the window above
    shifted(3, 1, 1);       // (1, 0): tap (0, 1) of the window on the left
    shifted(6, 3, 1);       // (2, 0): tap (1, 1) of the window on the left
    for (int t : {0, 3, 6})
      for (int64_t r = 0; r < rows; ++r) sten[t * cap + r * OW] = T(0);  // first column: padding
  }

  // Full-DPP's stencil taps outside the window for output row oh (zeros where the stencil is conv
  // padding): one unchecked loop over the columns whose stencil lies inside the image, checked
  // windows at the edges, and rows outside the image zeroed afterwards.
  template <typename scalar_t, typename T>
  static void pack_stencil(const scalar_t* plane, const Geometry& g, const Interior& in, int64_t oh, T* dst,
                           int64_t cap) {
    int64_t a, b, a2, b2;
    stencil_columns(g, in.lo, in.hi, 0, a, b);
    stencil_columns(g, in.lo, in.hi, 2, a2, b2);
    a = std::max(a, a2);
    b = std::max(a, std::min(b, b2));
    const scalar_t* row[3];
    bool inside[3];
    for (int dy = 0; dy < 3; ++dy) {
      const int64_t h = oh * S - 1 + dy;
      inside[dy] = h >= 0 && h < g.height;
      row[dy] = plane + (inside[dy] ? h : 0) * g.width - 1;  // any valid row where it is padding
    }
    auto checked = [&](int64_t ow) {
      for (int t = 0; t < 9; ++t) {
        const int64_t w = ow * S - 1 + t % 3;
        if (window_tap(t) < 0)
          dst[t * cap + ow] = inside[t / 3] && w >= 0 && w < g.width ? static_cast<T>(row[t / 3][w + 1]) : T(0);
      }
    };
    for (int64_t ow = in.lo; ow < a; ++ow) checked(ow);
    DPP_VECTORIZE
    for (int64_t ow = a; ow < b; ++ow) {
      DPP_UNROLL
      for (int t = 0; t < 9; ++t)
        if (window_tap(t) < 0) dst[t * cap + ow] = static_cast<T>(row[t / 3][ow * S + t % 3]);
    }
    for (int64_t ow = b; ow < in.hi; ++ow) checked(ow);
    for (int t = 0; t < 9; ++t)
      if (window_tap(t) < 0 && !inside[t / 3]) std::fill(dst + t * cap + a, dst + t * cap + b, T(0));
  }

  // Queue rows [oh0, oh1) of a plane into the block: its taps, its channel's α and λ per window,
  // and (Full-DPP) each window's guide value c̃ = b + Σ F·x, summed in full_centre's order.
  template <typename scalar_t, typename T>
  static void enqueue(const PlaneSet<scalar_t, T>& ps, const Interior& in, int64_t plane, int64_t oh0, int64_t oh1,
                      Scratch<T>& s) {
    const Segment seg{plane, oh0, oh1, s.used};
    const int64_t n = (oh1 - oh0) * in.width;
    pack(ps.input(plane), ps.g, in, seg, s);
    const Params<T> p = ps.params(plane);
    std::fill_n(s.log2_alpha.data() + seg.offset, n, p.log2_alpha);
    std::fill_n(s.half_lam.data() + seg.offset, n, p.half_lam);
    std::fill_n(s.inv_alpha.data() + seg.offset, n, p.inv_alpha);
    if (FULL) {
      T f9[9], bias;
      ps.guide(plane, f9, bias);
      T* centre = s.centre.data() + seg.offset;
      std::fill_n(centre, n, bias);
      for (int t = 0; t < 9; ++t) {
        const T* src = stencil_source(s, t) + seg.offset;
        const T f = f9[t];
        DPP_VECTORIZE
        for (int64_t j = 0; j < n; ++j) centre[j] = dpp_fma(f, src[j], centre[j]);
      }
    }
    s.segments.push_back(seg);
    s.used += n;
  }

  // A block's packed inputs as plain pointers (a local copy the loops' stores cannot alias).
  template <typename T>
  struct Packed {
    const T *taps, *log2_alpha, *half_lam, *inv_alpha, *centre;
    int64_t cap;
    explicit Packed(const Scratch<T>& s)
        : taps(s.taps.data()), log2_alpha(s.log2_alpha.data()), half_lam(s.half_lam.data()),
          inv_alpha(s.inv_alpha.data()), centre(s.centre.data()), cap(s.capacity) {}

    // Window j: its K×K taps into v, its channel's α and λ into p; returns its centre c̃
    // (Full-DPP: computed by enqueue; Lite: the mean).  Inlined into the vectorised loops.
    DPP_HD T load(int64_t j, T* v, Params<T>& p) const {
      DPP_UNROLL
      for (int t = 0; t < kTaps; ++t) v[t] = taps[t * cap + j];
      p.log2_alpha = log2_alpha[j];
      p.half_lam = half_lam[j];
      p.inv_alpha = inv_alpha[j];
      return FULL ? centre[j] : lite_centre(v, kTaps);
    }
  };

  // Whether a plane's windows keep the promises of the common case (window_forward's kPromiseTame, and
  // no scale-invariant option): |x| ≤ 1e13 over the plane and (Full-DPP) |b| + Σ|F|·1e13 ≤ 4e14, so
  // every deviation |v − c̃| (and Asym's max(0, v − c̃)) is ≤ 1e15 with rounding to spare and d² + ε²
  // is a positive normal float.  Then the window loops leave out the rescaling of huge deviations,
  // log2's special cases and the scale-invariant terms, and for ρ_Sym (kPromiseSym) the Asym clamp
  // too (about a third of the work), and give the same values.
  // A property of the plane alone (one vectorised pass over its input; NaN and inf fail it), and a
  // block holds planes of one kind, so which loop a window takes, and its result, does not depend on
  // the other planes of its block or on the thread count.
  template <typename scalar_t, typename T>
  static bool plane_is_tame(const PlaneSet<scalar_t, T>& ps, int64_t plane, const Params<T>& base, const T* f9,
                            T bias) {
    const T limit = T(1e13);
    if (base.scale_invariant != T(0)) return false;
    if (!(base.eps2 >= std::numeric_limits<T>::min() && base.eps2 <= T(1e30))) return false;
    if (FULL) {
      T weight = 0;
      for (int t = 0; t < 9; ++t) weight += std::abs(f9[t]);
      if (!(std::abs(bias) + weight * limit <= T(4e14))) return false;
    }
    const scalar_t* x = ps.input(plane);
    const int64_t size = ps.in_size();
    int wild = 0;
    for (int64_t i = 0; i < size; ++i) wild |= !(std::abs(static_cast<T>(x[i])) <= limit);
    return wild == 0;
  }

  static constexpr int kTameSym = kPromiseSym | kPromiseTame;

  // base: the call's ε² and flags (any channel's Params; α and λ come per window; ρ is the call's).
  template <typename T>
  static void forward_block(Scratch<T>& s, const Params<T>& base) {
    if (s.block_tame && base.asym == T(0)) return forward_block_as<0, kTameSym>(s, base);
    if (s.block_tame) return forward_block_as<0, kPromiseTame>(s, base);
    forward_block_as<-1, 0>(s, base);
  }

  template <int SI, int PROMISE, typename T>
  DPP_NOINLINE static void forward_block_as(Scratch<T>& s, const Params<T>& base) {
    const Packed<T> in(s);
    T* out = s.out.data();
    const int64_t count = s.used;
    DPP_VECTORIZE
    for (int64_t j = 0; j < count; ++j) {
      T v[kTaps], lc[kTaps], e[kTaps];
      Params<T> p = base;
      const T centre = in.load(j, v, p);
      out[j] = window_forward<0, SI, PROMISE>(v, kTaps, centre, p, lc, e).out;
    }
  }

  template <typename T>
  static void backward_block(Scratch<T>& s, const Params<T>& base) {
    if (s.block_tame && base.asym == T(0)) return backward_block_as<0, kTameSym>(s, base);
    if (s.block_tame) return backward_block_as<0, kPromiseTame>(s, base);
    backward_block_as<-1, 0>(s, base);
  }

  template <int SI, int PROMISE, typename T>
  DPP_NOINLINE static void backward_block_as(Scratch<T>& s, const Params<T>& base) {
    const Packed<T> in(s);
    const T* gy = s.upstream.data();
    T* tap_grads = s.tap_grads.data();
    T* centre_grad = s.centre_grad.data();
    T* alpha_grad = s.alpha_grad.data();
    T* lam_grad = s.lam_grad.data();
    const int64_t count = s.used, cap = s.capacity;
    DPP_VECTORIZE
    for (int64_t j = 0; j < count; ++j) {
      T v[kTaps], lc[kTaps], e[kTaps], gv[kTaps];
      Params<T> p = base;
      const T centre = in.load(j, v, p);
      const WindowStats<T> st = window_forward<0, SI, PROMISE>(v, kTaps, centre, p, lc, e);
      const WindowGrads<T> gr = window_backward<0, SI, PROMISE>(gy[j], v, kTaps, centre, p, st, lc, e, gv);
      const T share = FULL ? T(0) : gr.centre * T(1.0 / kTaps);  // Lite: c̃ is the window mean
      DPP_UNROLL
      for (int t = 0; t < kTaps; ++t) tap_grads[t * cap + j] = gv[t] + share;
      centre_grad[j] = gr.centre;
      alpha_grad[j] = gr.alpha;
      lam_grad[j] = gr.lam;
    }
  }

  // One segment's per-channel parameter gradients, summed in a fixed order (vectorised within
  // the segment, then added in float64).
  template <typename T>
  static void segment_param_grads(const Scratch<T>& s, const Segment& seg, int64_t n, double* acc) {
    const T* alpha_grad = s.alpha_grad.data() + seg.offset;
    const T* lam_grad = s.lam_grad.data() + seg.offset;
    const T* centre_grad = s.centre_grad.data() + seg.offset;
    T g_alpha = 0, g_lam = 0;
#pragma omp simd reduction(+ : g_alpha, g_lam)
    for (int64_t j = 0; j < n; ++j) {
      g_alpha += alpha_grad[j];
      g_lam += lam_grad[j];
    }
    acc[0] += g_alpha;
    acc[1] += g_lam;
    if (FULL) {
      T g_bias = 0;
#pragma omp simd reduction(+ : g_bias)
      for (int64_t j = 0; j < n; ++j) g_bias += centre_grad[j];
      acc[11] += g_bias;
      for (int t = 0; t < 9; ++t) {
        const T* src = stencil_source(s, t) + seg.offset;
        T g_f = 0;
#pragma omp simd reduction(+ : g_f)
        for (int64_t j = 0; j < n; ++j) g_f += centre_grad[j] * src[j];
        acc[2 + t] += g_f;
      }
    }
  }

  // Add a segment's input gradients into grad_plane, one loop per output row over its windows
  // (all taps per iteration: short rows pay one loop, not one per tap).  Windows overlap when
  // K > S, so only K ≤ S lets the loop run vectorised; otherwise it runs in order.
  template <typename T>
  static void unpack_grads(const Scratch<T>& s, const Geometry& g, const Interior& in, const Segment& seg,
                           const T* f9, T* grad_plane) {
    const int64_t cap = s.capacity, W = g.width;
    for (int64_t oh = seg.oh0; oh < seg.oh1; ++oh) {
      const int64_t base = seg.offset + (oh - seg.oh0) * in.width - in.lo;
      T* row[K];
      for (int i = 0; i < K; ++i) row[i] = grad_plane + (oh * S - g.padding + i) * W - g.padding;
      const T* src = s.tap_grads.data() + base;
      if (K <= S) {
        DPP_VECTORIZE
        for (int64_t ow = in.lo; ow < in.hi; ++ow) {
          DPP_UNROLL
          for (int t = 0; t < kTaps; ++t) row[t / K][ow * S + t % K] += src[t * cap + ow];
        }
      } else {
        for (int64_t ow = in.lo; ow < in.hi; ++ow) {
          DPP_UNROLL
          for (int t = 0; t < kTaps; ++t) row[t / K][ow * S + t % K] += src[t * cap + ow];
        }
      }
      if (FULL) unpack_stencil_grads(s.centre_grad.data() + base, g, in, oh, f9, grad_plane);
    }
  }

  // Full-DPP: ∂c̃·F into the 3×3 stencil of each window of output row oh (stencil rows inside the
  // image only); unchecked where the whole stencil row lies inside, checked at the edges.
  template <typename T>
  static void unpack_stencil_grads(const T* centre_grad, const Geometry& g, const Interior& in, int64_t oh,
                                   const T* f9, T* grad_plane) {
    int64_t a, b, a2, b2;
    stencil_columns(g, in.lo, in.hi, 0, a, b);
    stencil_columns(g, in.lo, in.hi, 2, a2, b2);
    a = std::max(a, a2);
    b = std::max(a, std::min(b, b2));
    for (int dy = 0; dy < 3; ++dy) {
      const int64_t h = oh * S - 1 + dy;
      if (h < 0 || h >= g.height) continue;
      T* dst = grad_plane + h * g.width - 1;
      const T f0 = f9[dy * 3], f1 = f9[dy * 3 + 1], f2 = f9[dy * 3 + 2];
      auto checked = [&](int64_t ow) {
        for (int dx = 0; dx < 3; ++dx) {
          const int64_t w = ow * S - 1 + dx;
          if (w >= 0 && w < g.width) dst[w + 1] = dpp_fma(centre_grad[ow], f9[dy * 3 + dx], dst[w + 1]);
        }
      };
      for (int64_t ow = in.lo; ow < a; ++ow) checked(ow);
      for (int64_t ow = a; ow < b; ++ow) {
        const T c = centre_grad[ow];
        dst[ow * S] = dpp_fma(c, f0, dst[ow * S]);
        dst[ow * S + 1] = dpp_fma(c, f1, dst[ow * S + 1]);
        dst[ow * S + 2] = dpp_fma(c, f2, dst[ow * S + 2]);
      }
      for (int64_t ow = b; ow < in.hi; ++ow) checked(ow);
    }
  }

  // Run the queued block forward and write each segment's outputs.
  template <typename scalar_t, typename T>
  static void flush_forward(const PlaneSet<scalar_t, T>& ps, const Interior& in, const Params<T>& base,
                            Scratch<T>& s) {
    if (s.used == 0) return;
    forward_block(s, base);
    for (const Segment& seg : s.segments) {
      for (int64_t oh = seg.oh0; oh < seg.oh1; ++oh) {
        const T* src = s.out.data() + seg.offset + (oh - seg.oh0) * in.width - in.lo;
        scalar_t* dst = ps.y + seg.plane * ps.out_size() + oh * ps.g.out_width;
        for (int64_t ow = in.lo; ow < in.hi; ++ow) dst[ow] = static_cast<scalar_t>(src[ow]);
      }
    }
    s.segments.clear();
    s.used = 0;
  }

  template <typename scalar_t, typename T>
  static void forward_planes(const PlaneSet<scalar_t, T>& ps, int64_t begin, int64_t end, Scratch<T>& s) {
    const Geometry& g = ps.g;
    const Interior in = interior(g);
    s.reserve_simd(g, block_capacity(in), false);
    collect_border(g, in, s, false);
    const Params<T> base = ps.params(0);
    for (int64_t plane = begin; plane < end; ++plane) {
      const Params<T> p = ps.params(plane);
      T f9[9], bias;
      ps.guide(plane, f9, bias);
      border_forward(ps, plane, p, f9, bias, s);
      const bool tame = plane_is_tame(ps, plane, base, f9, bias);
      if (tame != s.block_tame) flush_forward(ps, in, base, s);
      s.block_tame = tame;
      for (int64_t oh0 = in.row_lo; oh0 < in.row_hi; oh0 += in.seg_rows) {
        const int64_t oh1 = std::min(oh0 + in.seg_rows, in.row_hi);
        if (s.used + (oh1 - oh0) * in.width > s.capacity) flush_forward(ps, in, base, s);
        enqueue(ps, in, plane, oh0, oh1, s);
      }
    }
    flush_forward(ps, in, base, s);
  }

  // Run the queued block backward: parameter gradients into each segment's plane slots of
  // `partial`, input gradients into grad_of(plane).
  template <typename scalar_t, typename T, typename GradOf>
  static void flush_backward(const PlaneSet<scalar_t, T>& ps, const Interior& in, const Params<T>& base,
                             Scratch<T>& s, double* partial, GradOf&& grad_of) {
    if (s.used == 0) return;
    backward_block(s, base);
    const int slots = channel_grad_slots(FULL);
    for (const Segment& seg : s.segments) {
      segment_param_grads(s, seg, (seg.oh1 - seg.oh0) * in.width, partial + seg.plane * slots);
      T f9[9], bias;
      ps.guide(seg.plane, f9, bias);
      unpack_grads(s, ps.g, in, seg, f9, grad_of(seg.plane));
    }
    s.segments.clear();
    s.used = 0;
  }

  // Backward over planes [begin, end).  float32 planes accumulate straight into ∂x and share
  // blocks; fp16/bf16 planes accumulate in one float32 plane, so their blocks end with the plane.
  template <typename scalar_t, typename T>
  static void backward_planes(const PlaneSet<scalar_t, T>& ps, int64_t begin, int64_t end, Scratch<T>& s,
                              double* partial) {
    constexpr bool same = std::is_same<scalar_t, T>::value;
    const Geometry& g = ps.g;
    const Interior in = interior(g);
    s.reserve_simd(g, block_capacity(in), true);
    collect_border(g, in, s, true);
    if (!same) s.plane_grad.resize(ps.in_size());
    const Params<T> base = ps.params(0);
    const int slots = channel_grad_slots(FULL);
    auto grad_of = [&](int64_t plane) {
      return same ? reinterpret_cast<T*>(ps.y + plane * ps.in_size()) : s.plane_grad.data();
    };
    for (int64_t plane = begin; plane < end; ++plane) {
      const Params<T> p = ps.params(plane);
      T f9[9], bias;
      ps.guide(plane, f9, bias);
      T* grad_plane = grad_of(plane);
      std::fill(grad_plane, grad_plane + ps.in_size(), T(0));
      const scalar_t* gy_plane = ps.gy + plane * ps.out_size();
      border_backward(ps, plane, p, f9, bias, grad_plane, s, partial + plane * slots);
      const bool tame = plane_is_tame(ps, plane, base, f9, bias);
      if (tame != s.block_tame) flush_backward(ps, in, base, s, partial, grad_of);
      s.block_tame = tame;
      for (int64_t oh0 = in.row_lo; oh0 < in.row_hi; oh0 += in.seg_rows) {
        const int64_t oh1 = std::min(oh0 + in.seg_rows, in.row_hi);
        if (s.used + (oh1 - oh0) * in.width > s.capacity) flush_backward(ps, in, base, s, partial, grad_of);
        T* dst = s.upstream.data() + s.used - in.lo;
        for (int64_t oh = oh0; oh < oh1; ++oh, dst += in.width)
          for (int64_t ow = in.lo; ow < in.hi; ++ow) dst[ow] = static_cast<T>(gy_plane[oh * g.out_width + ow]);
        enqueue(ps, in, plane, oh0, oh1, s);
      }
      if (!same) {
        flush_backward(ps, in, base, s, partial, grad_of);
        scalar_t* gx_plane = ps.y + plane * ps.in_size();
        for (int64_t i = 0; i < ps.in_size(); ++i) gx_plane[i] = static_cast<scalar_t>(grad_plane[i]);
      }
    }
    flush_backward(ps, in, base, s, partial, grad_of);
  }
};

struct Generic {
  template <typename scalar_t, typename T>
  static void forward_planes(const PlaneSet<scalar_t, T>& ps, int64_t begin, int64_t end, Scratch<T>& s) {
    const Geometry& g = ps.g;
    for (int64_t plane = begin; plane < end; ++plane) {
      const Params<T> p = ps.params(plane);
      T f9[9], bias;
      ps.guide(plane, f9, bias);
      scalar_t* out_plane = ps.y + plane * ps.out_size();
      for (int64_t oh = 0; oh < g.out_height; ++oh)
        for (int64_t ow = 0; ow < g.out_width; ++ow)
          out_plane[oh * g.out_width + ow] =
              static_cast<scalar_t>(generic_forward(ps.input(plane), g, oh, ow, p, f9, bias, s));
    }
  }

  template <typename scalar_t, typename T>
  static void backward_planes(const PlaneSet<scalar_t, T>& ps, int64_t begin, int64_t end, Scratch<T>& s,
                              double* partial) {
    constexpr bool same = std::is_same<scalar_t, T>::value;
    const Geometry& g = ps.g;
    const int slots = channel_grad_slots(g.full);
    if (!same) s.plane_grad.resize(ps.in_size());
    for (int64_t plane = begin; plane < end; ++plane) {
      const Params<T> p = ps.params(plane);
      T f9[9], bias;
      ps.guide(plane, f9, bias);
      scalar_t* gx_plane = ps.y + plane * ps.in_size();
      T* grad_plane = same ? reinterpret_cast<T*>(gx_plane) : s.plane_grad.data();
      std::fill(grad_plane, grad_plane + ps.in_size(), T(0));
      const scalar_t* gy_plane = ps.gy + plane * ps.out_size();
      for (int64_t oh = 0; oh < g.out_height; ++oh)
        for (int64_t ow = 0; ow < g.out_width; ++ow)
          generic_backward(ps.input(plane), grad_plane, g, oh, ow, static_cast<T>(gy_plane[oh * g.out_width + ow]),
                           p, f9, bias, s, partial + plane * slots);
      if (!same)
        for (int64_t i = 0; i < ps.in_size(); ++i) gx_plane[i] = static_cast<scalar_t>(grad_plane[i]);
    }
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
                           bool scale_invariant, bool log_params) {
  TORCH_CHECK(x_in.device().is_cpu(), "dpp_forward (CPU kernel): input must be on the CPU");
  if (nhwc_path_applies(x_in))  // channels-last in, channels-last out (dpp_kernel_nhwc.cpp)
    return dpp_forward_cpu_nhwc(x_in, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2,
                                scale_invariant, log_params);
  const at::Tensor x = x_in.contiguous();
  const Geometry g = make_geometry(x, kernel_size, stride, padding, weight.has_value());
  const ChannelParams cp = make_channel_params(x, alpha, lam, weight, bias, log_params);
  const int64_t batch = x.size(0), channels = x.size(1);
  at::Tensor y = at::empty({batch, channels, g.out_height, g.out_width}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dpp_forward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const ChannelArgs<T> args = channel_args<T>(cp, eps2, asym, scale_invariant);
    const PlaneSet<scalar_t, T> ps{g, args, channels, x.const_data_ptr<scalar_t>(), nullptr, y.data_ptr<scalar_t>()};
    dispatch_path<T>(g, [&](auto path) {
      using Path = decltype(path);
      at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
        const FlushSubnormals flush(std::is_same<T, float>::value);
        Scratch<T>& s = thread_scratch<T>(g);
        Path::forward_planes(ps, begin, end, s);
      });
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dpp_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& lam,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t kernel_size, int64_t stride,
    int64_t padding, bool asym, double eps2, bool scale_invariant, bool log_params) {
  TORCH_CHECK(x_in.device().is_cpu() && grad_in.device().is_cpu(), "dpp_backward (CPU kernel): tensors must be on the CPU");
  if (nhwc_path_applies(x_in))  // ∂x channels-last, as x (dpp_kernel_nhwc.cpp)
    return dpp_backward_cpu_nhwc(grad_in, x_in, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2,
                                 scale_invariant, log_params);
  const at::Tensor x = x_in.contiguous();
  const Geometry g = make_geometry(x, kernel_size, stride, padding, weight.has_value());
  const at::Tensor grad = upstream_grad(grad_in, x, g);
  const ChannelParams cp = make_channel_params(x, alpha, lam, weight, bias, log_params);
  const int64_t batch = x.size(0), channels = x.size(1);
  const int slots = channel_grad_slots(g.full);
  at::Tensor grad_x = at::empty_like(x);
  // Per-plane parameter gradients in float64, reduced over the batch in a fixed order below.
  std::vector<double> partial(static_cast<size_t>(batch * channels * slots), 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dpp_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const ChannelArgs<T> args = channel_args<T>(cp, eps2, asym, scale_invariant);
    const PlaneSet<scalar_t, T> ps{g, args, channels, x.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                                   grad_x.data_ptr<scalar_t>()};
    dispatch_path<T>(g, [&](auto path) {
      using Path = decltype(path);
      at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
        const FlushSubnormals flush(std::is_same<T, float>::value);
        Scratch<T>& s = thread_scratch<T>(g);
        Path::backward_planes(ps, begin, end, s, partial.data());
      });
    });
  });
  // Fixed-order reduction over the batch; λ's slot scaled to ∂L/∂θλ for log parameters.
  std::vector<double> table(static_cast<size_t>(channels * slots), 0.0);
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t c = 0; c < channels; ++c)
      for (int k = 0; k < slots; ++k) table[c * slots + k] += partial[(n * channels + c) * slots + k];
  if (log_params) {
    AT_DISPATCH_FLOATING_TYPES(cp.lam.scalar_type(), "dpp_lam_scale", [&] {
      const scalar_t* theta = cp.lam.const_data_ptr<scalar_t>();
      for (int64_t c = 0; c < channels; ++c) table[c * slots + 1] *= std::exp(static_cast<double>(theta[c]));
    });
  }
  ParamGrads r = empty_param_grads(alpha, lam, weight, bias);
  store_param_grads_host(table.data(), channels, g.full, r);
  return {grad_x, r.alpha, r.lam, r.weight, r.bias};
}

}  // namespace
}  // namespace poolbench_dpp

TORCH_LIBRARY_IMPL(poolbench_dpp, CPU, m) {
  m.impl("dpp_forward", &poolbench_dpp::dpp_forward_cpu);
  m.impl("dpp_backward", &poolbench_dpp::dpp_backward_cpu);
}
