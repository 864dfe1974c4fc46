// DPP forward/backward on the CPU for channels-last (NHWC) input, vectorised over channels.
//
// Why a second CPU path: networks trained in channels-last hand the op NHWC tensors, and
// copying them to NCHW and back cost more than the pooling (avg_pool2d itself runs its
// channels-last kernel across channels).  In NHWC, tap t of a window at channel c is
// x[((n·H + h)·W + w)·C + c]: the C values of one tap are consecutive, and every channel
// carries its own α, λ (and Full-DPP guide), so the per-window maths of dpp_math.h runs
// across a vector of channels with unit-stride loads and no packing.  One output position
// (n, oh, ow) is one loop over channels; border windows are the same loop with fewer taps
// (the window count is a template argument for the counts a k ≤ 3 window can have; other
// counts and float64 take a plain per-channel loop through the same dpp_math.h functions).
//
// Determinism, as the NCHW kernel: results do not depend on the thread count.
//  * forward: every output is computed by one thread from its window alone;
//  * backward: output rows are cut into bands of a fixed number of rows (fixed by the
//    geometry, see band_rows).  A band's windows add into ∂x in scan order, and its
//    per-channel parameter gradients are summed in scan order into the band's own slots;
//    bands b and b + 2 never touch the same input row, so all even bands run in parallel,
//    then all odd ones (each input element gets its contributions in one fixed order), and
//    the band sums are reduced over (image, band) in order, in float64, at the end.
//
// fp16/bf16 are converted to float32 once (channels-last kept), computed in float32 and
// converted back, as the NCHW path computes them in float32.  float32 runs with FTZ/DAZ,
// as the NCHW kernel does (see FlushSubnormals).
#include "dpp_kernel_nhwc.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../dpp_args.h"
#include "dpp_cpu_common.h"

namespace poolbench_dpp {
namespace {

// ---------------------------------------------------------------------------
// Per-channel parameters, laid out like the data: one entry per channel, unit stride.
// ---------------------------------------------------------------------------

template <typename T>
struct ChannelTable {
  Params<T> base;  // ε² and the flags (α and λ are per channel)
  std::vector<T> log2_alpha, half_lam, inv_alpha;
  std::vector<T> filter;  // Full-DPP: 9 × C, tap-major (filter[t·C + c] = F_c[t])
  std::vector<T> bias;    // Full-DPP: C

  ChannelTable(const ChannelArgs<T>& args, int64_t channels, bool full)
      : log2_alpha(channels), half_lam(channels), inv_alpha(channels) {
    base = args.params(0);
    for (int64_t c = 0; c < channels; ++c) {
      const Params<T> p = args.params(c);  // the NCHW kernel's values, bit for bit
      log2_alpha[c] = p.log2_alpha;
      half_lam[c] = p.half_lam;
      inv_alpha[c] = p.inv_alpha;
    }
    if (!full) return;
    filter.resize(9 * channels);
    bias.resize(channels);
    for (int64_t c = 0; c < channels; ++c) {
      T f9[9];
      args.guide(c, f9, bias[c]);
      for (int t = 0; t < 9; ++t) filter[t * channels + c] = f9[t];
    }
  }
};

// The table as plain pointers and scalars: what the vectorised loops read, each from a local copy
// (no store can alias it; a Params copied whole out of memory stopped GCC vectorising).
template <typename T>
struct Channels {
  const T *log2_alpha, *half_lam, *inv_alpha, *filter, *bias;
  T eps2, asym, scale_invariant;
  int64_t count;

  Channels(const ChannelTable<T>& table, int64_t channels)
      : log2_alpha(table.log2_alpha.data()), half_lam(table.half_lam.data()), inv_alpha(table.inv_alpha.data()),
        filter(table.filter.data()), bias(table.bias.data()), eps2(table.base.eps2), asym(table.base.asym),
        scale_invariant(table.base.scale_invariant), count(channels) {}

  DPP_HD Params<T> params(int64_t c) const {
    Params<T> p;
    p.inv_alpha = inv_alpha[c];
    p.log2_alpha = log2_alpha[c];
    p.half_lam = half_lam[c];
    p.eps2 = eps2;
    p.asym = asym;
    p.scale_invariant = scale_invariant;
    return p;
  }

  // Full-DPP's c̃ = b + Σ F·x (full_centre's order) from the 9 stencil rows at channel c; v9 gets the inputs.
  DPP_HD T full_centre_at(const T* const* stencil, int64_t c, T* v9) const {
    T f9[9];
    DPP_UNROLL
    for (int t = 0; t < 9; ++t) {
      f9[t] = filter[t * count + c];
      v9[t] = stencil[t][c];
    }
    return full_centre(v9, f9, bias[c]);
  }
};

// ---------------------------------------------------------------------------
// One output position: its window and Full-DPP stencil as element offsets into an (H, W, C) image.
// ---------------------------------------------------------------------------

struct Window {
  std::vector<int64_t> tap;  // valid taps, row-major (gather_window's order); k² capacity
  int n = 0;
  int64_t stencil[9];        // 3×3 guide stencil around (oh·s, ow·s); −1 outside the image (conv padding)

  explicit Window(const Geometry& g) : tap(static_cast<size_t>(g.kernel_size) * g.kernel_size) {}

  void locate(const Geometry& g, int64_t channels, int64_t oh, int64_t ow) {
    int64_t h0, h1, w0, w1;
    window_span(oh, g.kernel_size, g.stride, g.padding, g.height, h0, h1);
    window_span(ow, g.kernel_size, g.stride, g.padding, g.width, w0, w1);
    n = 0;
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t w = w0; w < w1; ++w) tap[n++] = (h * g.width + w) * channels;
    if (!g.full) return;
    for (int dy = 0; dy < 3; ++dy) {
      for (int dx = 0; dx < 3; ++dx) {
        const int64_t h = oh * g.stride - 1 + dy, w = ow * g.stride - 1 + dx;
        const bool inside = h >= 0 && h < g.height && w >= 0 && w < g.width;
        stencil[dy * 3 + dx] = inside ? (h * g.width + w) * channels : -1;
      }
    }
  }
};

// Per-task scratch: the window, the generic path's per-tap arrays, and Full-DPP's ∂c̃ per channel.
template <typename T>
struct Scratch {
  Window window;
  std::vector<T> v, lc, e, gv;  // k² each (generic path)
  std::vector<T> centre_grad;   // C (backward, Full-DPP)

  Scratch(const Geometry& g, int64_t channels)
      : window(g), v(window.tap.size()), lc(window.tap.size()), e(window.tap.size()), gv(window.tap.size()),
        centre_grad(g.full ? channels : 0) {}
};

// The 9 stencil rows of a window (a row of zeros where the stencil is conv padding).
template <typename T>
void stencil_rows(const T* image, const Window& win, const T* zeros, const T** rows) {
  for (int t = 0; t < 9; ++t) rows[t] = win.stencil[t] >= 0 ? image + win.stencil[t] : zeros;
}

// ---------------------------------------------------------------------------
// Forward of one position across all channels.
// ---------------------------------------------------------------------------

// NT taps, known at compile time: the per-tap loops unroll and the channel loop vectorises.
// SI: the scale-invariant option (0 off, 1 on) fixed at compile time, so the default pays
// nothing for it (window_forward's branch-free form computes a log2 of the mean otherwise).
template <int NT, bool FULL, int SI, typename T>
void forward_taps(const T* image, const Window& win, const T* zeros, const Channels<T>& channel_params, T* out) {
  const Channels<T> ch = channel_params;
  const T* src[NT];
  for (int t = 0; t < NT; ++t) src[t] = image + win.tap[t];
  const T* stencil[9];
  if (FULL) stencil_rows(image, win, zeros, stencil);
  const int64_t channels = ch.count;
  DPP_VECTORIZE
  for (int64_t c = 0; c < channels; ++c) {
    T v[NT], lc[NT], e[NT], v9[9];
    DPP_UNROLL
    for (int t = 0; t < NT; ++t) v[t] = src[t][c];
    const Params<T> p = ch.params(c);
    const T centre = FULL ? ch.full_centre_at(stencil, c, v9) : lite_centre(v, NT);
    out[c] = window_forward<0, SI>(v, NT, centre, p, lc, e).out;
  }
}

// Any tap count (and float64): one channel at a time.
template <bool FULL, typename T>
void forward_taps_generic(const T* image, const Window& win, const T* zeros, const Channels<T>& ch, T* out,
                          Scratch<T>& s) {
  const T* stencil[9];
  if (FULL) stencil_rows(image, win, zeros, stencil);
  const int n = win.n;
  for (int64_t c = 0; c < ch.count; ++c) {
    for (int t = 0; t < n; ++t) s.v[t] = image[win.tap[t] + c];
    T v9[9];
    const T centre = FULL ? ch.full_centre_at(stencil, c, v9) : lite_centre(s.v.data(), n);
    out[c] = window_forward(s.v.data(), n, centre, ch.params(c), s.lc.data(), s.e.data()).out;
  }
}

// Calls fn(std::integral_constant<int, NT>) for the tap counts a window of k ≤ 3 can have
// (rows × columns of 1..3 each) in float32, or fn(std::integral_constant<int, 0>) (generic).
template <typename T, typename Fn>
void dispatch_taps(int n, Fn&& fn) {
  if (std::is_same<T, float>::value) {
    switch (n) {
      case 1: return fn(std::integral_constant<int, 1>{});
      case 2: return fn(std::integral_constant<int, 2>{});
      case 3: return fn(std::integral_constant<int, 3>{});
      case 4: return fn(std::integral_constant<int, 4>{});
      case 6: return fn(std::integral_constant<int, 6>{});
      case 9: return fn(std::integral_constant<int, 9>{});
      default: break;
    }
  }
  fn(std::integral_constant<int, 0>{});
}

// ---------------------------------------------------------------------------
// Backward of one position across all channels.  acc: the band's parameter-gradient sums,
// slot-major (acc[k·C + c] for slot k: α, λ, then F0..F8, b).
// ---------------------------------------------------------------------------

// Full-DPP: ∂c̃·F into the stencil's inputs and ∂c̃·x into ∂F (stencil taps inside the image;
// padding contributes 0).  After the window's own taps, as the NCHW kernel's generic path.
template <typename T>
void stencil_grads(const T* image, T* grad_image, const Window& win, const Channels<T>& ch, const T* centre_grad,
                   T* acc) {
  const int64_t channels = ch.count;
  for (int t = 0; t < 9; ++t) {
    if (win.stencil[t] < 0) continue;
    const T* x = image + win.stencil[t];
    T* gx = grad_image + win.stencil[t];
    const T* f = ch.filter + t * channels;
    T* g_f = acc + (2 + t) * channels;
    DPP_VECTORIZE
    for (int64_t c = 0; c < channels; ++c) {
      gx[c] += centre_grad[c] * f[c];
      g_f[c] += centre_grad[c] * x[c];
    }
  }
}

template <int NT, bool FULL, int SI, typename T>
void backward_taps(const T* image, T* grad_image, const Window& win, const T* zeros, const T* gy,
                   const Channels<T>& channel_params, T* acc, T* centre_grad) {
  const Channels<T> ch = channel_params;
  const T* src[NT];
  T* dst[NT];
  for (int t = 0; t < NT; ++t) {
    src[t] = image + win.tap[t];
    dst[t] = grad_image + win.tap[t];
  }
  const T* stencil[9];
  if (FULL) stencil_rows(image, win, zeros, stencil);
  const int64_t channels = ch.count;
  T* g_alpha = acc;
  T* g_lam = acc + channels;
  T* g_bias = acc + 11 * channels;  // Full-DPP only
  DPP_VECTORIZE
  for (int64_t c = 0; c < channels; ++c) {
    T v[NT], lc[NT], e[NT], gv[NT], v9[9];
    DPP_UNROLL
    for (int t = 0; t < NT; ++t) v[t] = src[t][c];
    Params<T> p = ch.params(c);
    p.scale_invariant = T(SI);  // the same value, now a constant of the loop
    const T centre = FULL ? ch.full_centre_at(stencil, c, v9) : lite_centre(v, NT);
    const WindowStats<T> st = window_forward<0, SI>(v, NT, centre, p, lc, e);
    const WindowGrads<T> gr = window_backward(gy[c], v, NT, centre, p, st, lc, e, gv);
    const T share = FULL ? T(0) : gr.centre * (T(1) / T(NT));  // Lite: c̃ is the window mean
    DPP_UNROLL
    for (int t = 0; t < NT; ++t) dst[t][c] += gv[t] + share;
    g_alpha[c] += gr.alpha;
    g_lam[c] += gr.lam;
    if (FULL) {
      centre_grad[c] = gr.centre;
      g_bias[c] += gr.centre;
    }
  }
  if (FULL) stencil_grads(image, grad_image, win, ch, centre_grad, acc);
}

template <bool FULL, typename T>
void backward_taps_generic(const T* image, T* grad_image, const Window& win, const T* zeros, const T* gy,
                           const Channels<T>& ch, T* acc, Scratch<T>& s) {
  const T* stencil[9];
  if (FULL) stencil_rows(image, win, zeros, stencil);
  const int n = win.n;
  const int64_t channels = ch.count;
  for (int64_t c = 0; c < channels; ++c) {
    for (int t = 0; t < n; ++t) s.v[t] = image[win.tap[t] + c];
    const Params<T> p = ch.params(c);
    T v9[9];
    const T centre = FULL ? ch.full_centre_at(stencil, c, v9) : lite_centre(s.v.data(), n);
    const WindowStats<T> st = window_forward(s.v.data(), n, centre, p, s.lc.data(), s.e.data());
    const WindowGrads<T> gr =
        window_backward(gy[c], s.v.data(), n, centre, p, st, s.lc.data(), s.e.data(), s.gv.data());
    const T share = FULL ? T(0) : gr.centre / static_cast<T>(n);
    for (int t = 0; t < n; ++t) grad_image[win.tap[t] + c] += s.gv[t] + share;
    acc[c] += gr.alpha;
    acc[channels + c] += gr.lam;
    if (FULL) {
      s.centre_grad[c] = gr.centre;
      acc[11 * channels + c] += gr.centre;
    }
  }
  if (FULL) stencil_grads(image, grad_image, win, ch, s.centre_grad.data(), acc);
}

// ---------------------------------------------------------------------------
// The call: tensors as raw pointers, and the loops over positions.
// ---------------------------------------------------------------------------

template <typename T>
struct Problem {
  const Geometry& g;
  Channels<T> ch;
  int64_t batch;
  const T* x;
  const T* zeros;  // C zeros: the stencil's conv padding
  const T* gy;     // backward: ∂L/∂y (N, Ho, Wo, C)
  T* out;          // forward: y (N, Ho, Wo, C); backward: ∂x (N, H, W, C)

  int64_t image_size() const { return g.height * g.width * ch.count; }
  int64_t out_offset(int64_t n, int64_t oh, int64_t ow) const {
    return ((n * g.out_height + oh) * g.out_width + ow) * ch.count;
  }
};

template <bool FULL, typename T>
void forward_rows(const Problem<T>& pr, int64_t begin, int64_t end) {
  const Geometry& g = pr.g;
  Scratch<T> s(g, pr.ch.count);
  const bool scale_invariant = pr.ch.scale_invariant != T(0);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / g.out_height, oh = row % g.out_height;
    const T* image = pr.x + n * pr.image_size();
    for (int64_t ow = 0; ow < g.out_width; ++ow) {
      s.window.locate(g, pr.ch.count, oh, ow);
      T* out = pr.out + pr.out_offset(n, oh, ow);
      dispatch_taps<T>(s.window.n, [&](auto taps) {
        constexpr int NT = decltype(taps)::value;
        if constexpr (NT == 0) forward_taps_generic<FULL>(image, s.window, pr.zeros, pr.ch, out, s);
        else if (scale_invariant) forward_taps<NT, FULL, 1>(image, s.window, pr.zeros, pr.ch, out);
        else forward_taps<NT, FULL, 0>(image, s.window, pr.zeros, pr.ch, out);
      });
    }
  }
}

// Output rows per backward band: the fewest for which bands b and b + 2 never touch the same
// input row.  Output row o reads input rows [o·s − above, o·s + below): its window, and for
// Full-DPP the guide stencil [o·s − 1, o·s + 2).  Depends on the geometry only, never on the
// thread count, so the summation order is fixed.
int64_t band_rows(const Geometry& g) {
  const int64_t above = g.full ? std::max(g.padding, 1) : g.padding;
  const int64_t below = g.full ? std::max(g.kernel_size - g.padding, 2) : g.kernel_size - g.padding;
  const int64_t overlap = above + below - g.stride;  // band b's last input row − band b + 2's first, + 1
  return std::max<int64_t>(1, (overlap + g.stride - 1) / g.stride);
}

// Band `band` of image n: its windows' input gradients into ∂x, its parameter gradients into acc.
template <bool FULL, typename T>
void backward_band(const Problem<T>& pr, int64_t n, int64_t band, int64_t rows, T* acc, Scratch<T>& s) {
  const Geometry& g = pr.g;
  const T* image = pr.x + n * pr.image_size();
  T* grad_image = pr.out + n * pr.image_size();
  const bool scale_invariant = pr.ch.scale_invariant != T(0);
  const int64_t oh_end = std::min((band + 1) * rows, g.out_height);
  for (int64_t oh = band * rows; oh < oh_end; ++oh) {
    for (int64_t ow = 0; ow < g.out_width; ++ow) {
      s.window.locate(g, pr.ch.count, oh, ow);
      const T* gy = pr.gy + pr.out_offset(n, oh, ow);
      dispatch_taps<T>(s.window.n, [&](auto taps) {
        constexpr int NT = decltype(taps)::value;
        if constexpr (NT == 0)
          backward_taps_generic<FULL>(image, grad_image, s.window, pr.zeros, gy, pr.ch, acc, s);
        else if (scale_invariant)
          backward_taps<NT, FULL, 1>(image, grad_image, s.window, pr.zeros, gy, pr.ch, acc, s.centre_grad.data());
        else
          backward_taps<NT, FULL, 0>(image, grad_image, s.window, pr.zeros, gy, pr.ch, acc, s.centre_grad.data());
      });
    }
  }
}

// Backward over all images; band_sums gets each (image, band)'s parameter-gradient sums,
// slots × C each, in (image, band) order.
template <bool FULL, typename T>
void backward_all(const Problem<T>& pr, std::vector<T>& band_sums) {
  const Geometry& g = pr.g;
  const int64_t channels = pr.ch.count, rows = band_rows(g);
  const int64_t bands = (g.out_height + rows - 1) / rows;
  const int64_t sums_size = channel_grad_slots(FULL) * channels;
  band_sums.assign(static_cast<size_t>(pr.batch * bands * sums_size), T(0));
  for (int64_t phase = 0; phase < 2; ++phase) {  // even bands, then odd bands
    const int64_t per_image = (bands - phase + 1) / 2;
    at::parallel_for(0, pr.batch * per_image, 1, [&](int64_t begin, int64_t end) {
      const FlushSubnormals flush(std::is_same<T, float>::value);
      Scratch<T> s(g, channels);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / per_image, band = phase + 2 * (i % per_image);
        T* acc = band_sums.data() + (n * bands + band) * sums_size;
        backward_band<FULL>(pr, n, band, rows, acc, s);
      }
    });
  }
}

// x in the dtype the kernel computes in (float32 for fp16/bf16), channels-last.
at::Tensor compute_input(const at::Tensor& x) {
  return x.to(at::toOpMathType(x.scalar_type())).contiguous(at::MemoryFormat::ChannelsLast);
}

// ∂L/∂y in the compute dtype, channels-last, checked against the output shape.
at::Tensor channels_last_upstream(const at::Tensor& grad, const at::Tensor& x, const Geometry& g) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == x.size(0) && grad.size(1) == x.size(1) &&
                  grad.size(2) == g.out_height && grad.size(3) == g.out_width,
              "dpp_backward: grad has shape ", grad.sizes(), ", expected the output shape (", x.size(0), ", ",
              x.size(1), ", ", g.out_height, ", ", g.out_width, ")");
  return grad.to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace

bool nhwc_path_applies(const at::Tensor& x) {
  return x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

at::Tensor dpp_forward_cpu_nhwc(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& lam,
                                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                int64_t kernel_size, int64_t stride, int64_t padding, bool asym, double eps2,
                                bool scale_invariant, bool log_params) {
  const at::Tensor x = compute_input(x_in);
  const Geometry g = make_geometry(x, kernel_size, stride, padding, weight.has_value());
  const ChannelParams cp = make_channel_params(x, alpha, lam, weight, bias, log_params);
  const int64_t batch = x.size(0), channels = x.size(1);
  at::Tensor y = at::empty({batch, channels, g.out_height, g.out_width},
                           x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpp_forward_cpu_nhwc", [&] {
      using T = scalar_t;
      const ChannelArgs<T> args = channel_args<T>(cp, eps2, asym, scale_invariant);
      const ChannelTable<T> table(args, channels, g.full);
      const std::vector<T> zeros(channels, T(0));
      const Problem<T> pr{g, Channels<T>(table, channels), batch, x.const_data_ptr<T>(), zeros.data(), nullptr,
                          y.data_ptr<T>()};
      at::parallel_for(0, batch * g.out_height, 1, [&](int64_t begin, int64_t end) {
        const FlushSubnormals flush(std::is_same<T, float>::value);
        if (g.full) forward_rows<true>(pr, begin, end);
        else forward_rows<false>(pr, begin, end);
      });
    });
  }
  return y.scalar_type() == x_in.scalar_type() ? y : y.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dpp_backward_cpu_nhwc(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& lam,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t kernel_size, int64_t stride,
    int64_t padding, bool asym, double eps2, bool scale_invariant, bool log_params) {
  const at::Tensor x = compute_input(x_in);
  const Geometry g = make_geometry(x, kernel_size, stride, padding, weight.has_value());
  const at::Tensor grad = channels_last_upstream(grad_in, x, g);
  const ChannelParams cp = make_channel_params(x, alpha, lam, weight, bias, log_params);
  const int64_t batch = x.size(0), channels = x.size(1);
  const int slots = channel_grad_slots(g.full);
  at::Tensor grad_x = at::zeros_like(x);  // channels-last, as x
  std::vector<double> table(static_cast<size_t>(channels * slots), 0.0);  // (C, slots)
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpp_backward_cpu_nhwc", [&] {
    using T = scalar_t;
    const ChannelArgs<T> args = channel_args<T>(cp, eps2, asym, scale_invariant);
    const ChannelTable<T> param_table(args, channels, g.full);
    const std::vector<T> zeros(channels, T(0));
    const Problem<T> pr{g, Channels<T>(param_table, channels), batch, x.const_data_ptr<T>(), zeros.data(),
                        grad.const_data_ptr<T>(), grad_x.data_ptr<T>()};
    std::vector<T> band_sums;
    if (g.full) backward_all<true>(pr, band_sums);
    else backward_all<false>(pr, band_sums);
    // Fixed-order reduction over (image, band), in float64.
    const int64_t blocks = static_cast<int64_t>(band_sums.size()) / (slots * channels);
    for (int64_t b = 0; b < blocks; ++b)
      for (int k = 0; k < slots; ++k)
        for (int64_t c = 0; c < channels; ++c)
          table[c * slots + k] += static_cast<double>(band_sums[(b * slots + k) * channels + c]);
  });
  if (log_params) {  // λ's slot to ∂L/∂θλ, as the NCHW path
    AT_DISPATCH_FLOATING_TYPES(cp.lam.scalar_type(), "dpp_lam_scale_nhwc", [&] {
      const scalar_t* theta = cp.lam.const_data_ptr<scalar_t>();
      for (int64_t c = 0; c < channels; ++c) table[c * slots + 1] *= std::exp(static_cast<double>(theta[c]));
    });
  }
  ParamGrads r = empty_param_grads(alpha, lam, weight, bias);
  store_param_grads_host(table.data(), channels, g.full, r);
  at::Tensor gx = grad_x.scalar_type() == x_in.scalar_type() ? grad_x : grad_x.to(x_in.scalar_type());
  return {gx, r.alpha, r.lam, r.weight, r.bias};
}

}  // namespace poolbench_dpp
