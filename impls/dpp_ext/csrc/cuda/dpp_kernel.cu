// DPP forward/backward on CUDA: registers the CUDA dispatch key only.
//
// Forward: one thread per output window, fused (guide, log-domain weights,
// normalised weighted sum), reading each tap once from global memory.
//
// Backward (the weights are recomputed, nothing but x is saved):
//  * window kernel — one thread per window of one channel (grid.y = channel):
//    per-channel α, λ (F, b) gradients, reduced per block in a fixed tree order
//    into a (C, blocks, slots) table that a second tiny kernel sums sequentially,
//    so the result is bitwise reproducible (no atomics).  Where windows do not
//    overlap (stride ≥ kernel_size) it also writes the window's input gradient
//    directly (each pixel belongs to at most one window).
//  * Full-DPP, non-overlapping: a stencil kernel adds the guide's share F·∂c̃
//    per input pixel (gathering from the ≤ 2×2 guides that touch it).
//  * overlapping windows (stride < kernel_size, e.g. 3×3/2 or S3DPP's stride 1):
//    a gather kernel computes each input pixel's gradient by recomputing the
//    few windows that touch it — deterministic, at the cost of recomputation.
//
// All per-window maths comes from dpp_math.h, shared with the CPU kernel.
//
// Launches, streams and device guards go through the DPP_* macros below so the
// test suite can compile this very file as C++ with an emulated grid
// (tests/dpp_ext_cuda_emulation.cpp defines POOLBENCH_DPP_EMULATE) and check the
// device code against the reference on machines without a GPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#ifndef POOLBENCH_DPP_EMULATE
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define DPP_DEVICE_GUARD(tensor) c10::cuda::CUDAGuard dpp_device_guard((tensor).device())
#define DPP_STREAM() c10::cuda::getCurrentCUDAStream()
#define DPP_LAUNCH(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#define DPP_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define DPP_IS_DEVICE_TENSOR(tensor) (tensor).is_cuda()
#endif

#include <limits>
#include <type_traits>

#include "../dpp_args.h"

namespace poolbench_dpp {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxKernelSize = 8;           // generic windows live in local memory: ≤ 8×8 taps
constexpr int kGenericTaps = kMaxKernelSize * kMaxKernelSize;
constexpr int64_t kMaxReduceBlocks = 1024;  // per channel, in the window kernel

template <typename T>
struct ChannelArgs {
  const T* alpha;
  const T* log2_alpha;
  const T* lam;
  const T* weight;  // (C, 9) or nullptr
  const T* bias;    // (C,) or nullptr
  T eps2;
  bool asym;
  bool scale_invariant;

  __device__ __forceinline__ Params<T> params(int64_t c) const {
    return make_params(alpha[c], log2_alpha[c], lam[c], eps2, asym, scale_invariant);
  }
  __device__ __forceinline__ void guide(int64_t c, T* f9, T& b) const {
    if (weight != nullptr) {
#pragma unroll
      for (int t = 0; t < 9; ++t) f9[t] = weight[c * 9 + t];
      b = bias[c];
    } else {
#pragma unroll
      for (int t = 0; t < 9; ++t) f9[t] = T(0);
      b = T(0);
    }
  }
};

template <typename T>
ChannelArgs<T> channel_args(const ChannelParams& cp, double eps2, bool asym, bool scale_invariant) {
  ChannelArgs<T> a;
  a.alpha = cp.alpha.data_ptr<T>();
  a.log2_alpha = cp.log2_alpha.data_ptr<T>();
  a.lam = cp.lam.data_ptr<T>();
  a.weight = cp.weight.defined() ? cp.weight.data_ptr<T>() : nullptr;
  a.bias = cp.bias.defined() ? cp.bias.data_ptr<T>() : nullptr;
  a.eps2 = static_cast<T>(eps2);
  a.asym = asym;
  a.scale_invariant = scale_invariant;
  return a;
}

// Split a flat index over planes of height × width into (plane, channel, row, col); 32-bit
// arithmetic when everything fits (64-bit division costs GPUs tens of instructions per thread).
// Used for output windows (out_height × out_width) and input pixels (height × width).
__device__ __forceinline__ void split_index(int64_t idx, int64_t height, int64_t width, int64_t channels, bool small,
                                            int64_t& plane, int64_t& c, int64_t& row, int64_t& col) {
  if (small) {
    const uint32_t i = static_cast<uint32_t>(idx), w = static_cast<uint32_t>(width),
                   h = static_cast<uint32_t>(height);
    const uint32_t q = i / w, p = q / h;
    col = i - q * w;
    row = q - p * h;
    plane = p;
    c = p % static_cast<uint32_t>(channels);
  } else {
    col = idx % width;
    const int64_t q = idx / width;
    row = q % height;
    plane = q / height;
    c = plane % channels;
  }
}

__device__ __forceinline__ bool interior_window(const Geometry& g, int64_t oh, int64_t ow) {
  const int64_t h = oh * g.stride - g.padding, w = ow * g.stride - g.padding;
  return h >= 0 && w >= 0 && h + g.kernel_size <= g.height && w + g.kernel_size <= g.width;
}

// One window, loaded and pushed through the shared maths.  FIXED: an interior K×K window
// with compile-time tap indices (registers); otherwise a gathered window of up to N taps.
template <int N, typename T>
struct Window {
  T v[N], lc[N], e[N], gv[N];
  T v9[9];
  int n;
  T centre;
  WindowStats<T> stats;
};

template <int K, bool FIXED, bool FULL, int N, typename scalar_t, typename T>
__device__ __forceinline__ void load_window(const scalar_t* __restrict__ plane, const Geometry& g, int64_t oh,
                                            int64_t ow, const T* f9, T bias, Window<N, T>& w) {
  if constexpr (FIXED) {
    const scalar_t* base = plane + (oh * g.stride - g.padding) * g.width + (ow * g.stride - g.padding);
#pragma unroll
    for (int i = 0; i < K; ++i)
#pragma unroll
      for (int j = 0; j < K; ++j) w.v[i * K + j] = static_cast<T>(base[i * g.width + j]);
    w.n = K * K;
  } else {
    w.n = gather_window(plane, g, oh, ow, w.v);
  }
  if constexpr (FULL) {
    gather_stencil(plane, g, oh, ow, w.v9);
    w.centre = full_centre(w.v9, f9, bias);
  } else {
    w.centre = lite_centre(w.v, FIXED ? K * K : w.n);
  }
}

template <int K, bool FIXED, bool FULL, int N, typename scalar_t, typename T>
__device__ __forceinline__ T forward_window(const scalar_t* __restrict__ plane, const Geometry& g, int64_t oh,
                                            int64_t ow, const Params<T>& p, const T* f9, T bias) {
  Window<N, T> w;
  load_window<K, FIXED, FULL>(plane, g, oh, ow, f9, bias, w);
  return window_forward(w.v, FIXED ? K * K : w.n, w.centre, p, w.lc, w.e).out;
}

template <int K, bool FIXED, bool FULL, int N, typename scalar_t, typename T>
__device__ __forceinline__ WindowGrads<T> backward_window(const scalar_t* __restrict__ plane, const Geometry& g,
                                                          int64_t oh, int64_t ow, T gy, const Params<T>& p,
                                                          const T* f9, T bias, Window<N, T>& w) {
  load_window<K, FIXED, FULL>(plane, g, oh, ow, f9, bias, w);
  const int n = FIXED ? K * K : w.n;
  w.stats = window_forward(w.v, n, w.centre, p, w.lc, w.e);
  WindowGrads<T> gr = window_backward(gy, w.v, n, w.centre, p, w.stats, w.lc, w.e, w.gv);
  if constexpr (!FULL) {  // Lite: c̃ is the window mean, so every tap gets ∂c̃/n
    const T share = gr.centre / static_cast<T>(n);
#pragma unroll
    for (int t = 0; t < (FIXED ? K * K : N); ++t)
      if (FIXED || t < n) w.gv[t] += share;
  }
  return gr;
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

template <int K, bool FULL, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    dpp_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, Geometry g, ChannelArgs<T> args,
                       int64_t channels, int64_t total, bool small) {
  constexpr int kFixedTaps = K > 0 ? K * K : 1;
  constexpr int kTaps = K > 0 ? kFixedTaps : kGenericTaps;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t plane, c, oh, ow;
    split_index(idx, g.out_height, g.out_width, channels, small, plane, c, oh, ow);
    const Params<T> p = args.params(c);
    T f9[9], bias;
    args.guide(c, f9, bias);
    const scalar_t* src = x + plane * g.height * g.width;
    T out;
    bool done = false;
    if constexpr (K > 0) {
      if (interior_window(g, oh, ow)) {
        out = forward_window<K, true, FULL, kFixedTaps>(src, g, oh, ow, p, f9, bias);
        done = true;
      }
    }
    if (!done) out = forward_window<K, false, FULL, kTaps>(src, g, oh, ow, p, f9, bias);
    y[idx] = static_cast<scalar_t>(out);
  }
}

// ---------------------------------------------------------------------------
// Backward: per-window kernel (parameter gradients; input gradient when windows are disjoint)
// ---------------------------------------------------------------------------

template <int SLOTS, typename T>
__device__ __forceinline__ void block_reduce_store(T (&acc)[SLOTS], T* __restrict__ out) {
  __shared__ T buf[SLOTS][kThreads];
#pragma unroll
  for (int s = 0; s < SLOTS; ++s) buf[s][threadIdx.x] = acc[s];
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
#pragma unroll
      for (int s = 0; s < SLOTS; ++s) buf[s][threadIdx.x] += buf[s][threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) out[s] = buf[s][0];
  }
}

template <int K, bool FULL, bool WRITE_TAPS, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    dpp_backward_window_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                               scalar_t* __restrict__ grad_x, T* __restrict__ centre_grad, T* __restrict__ partial,
                               Geometry g, ChannelArgs<T> args, int64_t channels, int64_t batch, bool small) {
  constexpr int SLOTS = FULL ? 12 : 2;
  constexpr int kFixedTaps = K > 0 ? K * K : 1;
  constexpr int kTaps = K > 0 ? kFixedTaps : kGenericTaps;
  const int64_t c = blockIdx.y;
  const Params<T> p = args.params(c);
  T f9[9], bias;
  args.guide(c, f9, bias);
  const int64_t per_plane = g.out_height * g.out_width;
  const int64_t total = batch * per_plane;
  T acc[SLOTS];
#pragma unroll
  for (int s = 0; s < SLOTS; ++s) acc[s] = T(0);

  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < total;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, i, oh, ow;
    if (small) {  // 32-bit index arithmetic when the sizes fit
      const uint32_t r32 = static_cast<uint32_t>(r), pp = static_cast<uint32_t>(per_plane),
                     w32 = static_cast<uint32_t>(g.out_width);
      const uint32_t n32 = r32 / pp, i32 = r32 - n32 * pp, oh32 = i32 / w32;
      n = n32, i = i32, oh = oh32, ow = i32 - oh32 * w32;
    } else {
      n = r / per_plane, i = r - n * per_plane;
      oh = i / g.out_width, ow = i - oh * g.out_width;
    }
    const int64_t plane = n * channels + c;
    const scalar_t* src = x + plane * g.height * g.width;
    const T gy = static_cast<T>(grad[plane * per_plane + i]);
    WindowGrads<T> gr{};
    T v9[9];
    auto finish = [&](auto& w, bool fixed) {
      if constexpr (FULL) {
#pragma unroll
        for (int t = 0; t < 9; ++t) v9[t] = w.v9[t];
      }
      if constexpr (WRITE_TAPS) {
        scalar_t* dst = grad_x + plane * g.height * g.width;
        int64_t h0, h1, w0, w1;
        window_span(oh, g.kernel_size, g.stride, g.padding, g.height, h0, h1);
        window_span(ow, g.kernel_size, g.stride, g.padding, g.width, w0, w1);
        const int64_t span = w1 - w0;
        const int count = fixed ? kFixedTaps : w.n;
#pragma unroll
        for (int t = 0; t < static_cast<int>(sizeof(w.v) / sizeof(T)); ++t) {
          if (t < count) {
            // interior windows: compile-time row/column of each tap; others: divide by the clipped width
            const int64_t row = fixed && K > 0 ? t / (K > 0 ? K : 1) : t / span;
            const int64_t col = fixed && K > 0 ? t % (K > 0 ? K : 1) : t % span;
            dst[(h0 + row) * g.width + w0 + col] = static_cast<scalar_t>(w.gv[t]);
          }
        }
        if constexpr (FULL) centre_grad[plane * per_plane + i] = gr.centre;
      }
    };
    bool done = false;
    if constexpr (K > 0) {
      if (interior_window(g, oh, ow)) {
        Window<kFixedTaps, T> w;
        gr = backward_window<K, true, FULL>(src, g, oh, ow, gy, p, f9, bias, w);
        finish(w, true);
        done = true;
      }
    }
    if (!done) {
      Window<kTaps, T> w;
      gr = backward_window<K, false, FULL>(src, g, oh, ow, gy, p, f9, bias, w);
      finish(w, false);
    }
    acc[0] += gr.alpha;
    acc[1] += gr.lam;
    if constexpr (FULL) {
#pragma unroll
      for (int t = 0; t < 9; ++t) acc[2 + t] += gr.centre * v9[t];
      acc[SLOTS - 1] += gr.centre;
    }
  }
  block_reduce_store<SLOTS>(acc, partial + (c * gridDim.x + blockIdx.x) * SLOTS);
}

// (C, blocks, slots) → (C, slots), summed in block order in float64.
template <typename T>
__global__ void dpp_reduce_partials_kernel(const T* __restrict__ partial, double* __restrict__ out, int64_t channels,
                                           int64_t blocks, int slots) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= channels * slots) return;
  const int64_t c = k / slots, s = k - c * slots;
  double sum = 0;
  for (int64_t b = 0; b < blocks; ++b) sum += static_cast<double>(partial[(c * blocks + b) * slots + s]);
  out[k] = sum;
}

// ---------------------------------------------------------------------------
// Backward: Full-DPP guide share for disjoint windows (grad_x += F · ∂c̃ over touching guides)
// ---------------------------------------------------------------------------

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    dpp_backward_stencil_kernel(const T* __restrict__ centre_grad, scalar_t* __restrict__ grad_x, Geometry g,
                                ChannelArgs<T> args, int64_t channels, int64_t total, bool small) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t plane, c, h, w;
    split_index(idx, g.height, g.width, channels, small, plane, c, h, w);
    const T* cg = centre_grad + plane * g.out_height * g.out_width;
    // guides centred at (o·s): |h − oh·s| ≤ 1
    const int64_t oh_lo = h - 1 <= 0 ? 0 : (h - 1 + g.stride - 1) / g.stride;
    const int64_t oh_hi = dpp_min<int64_t>((h + 1) / g.stride, g.out_height - 1);
    const int64_t ow_lo = w - 1 <= 0 ? 0 : (w - 1 + g.stride - 1) / g.stride;
    const int64_t ow_hi = dpp_min<int64_t>((w + 1) / g.stride, g.out_width - 1);
    T sum = 0;
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh)
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow)
        sum += cg[oh * g.out_width + ow] * args.weight[c * 9 + (h - oh * g.stride + 1) * 3 + (w - ow * g.stride + 1)];
    grad_x[idx] = static_cast<scalar_t>(static_cast<T>(grad_x[idx]) + sum);
  }
}

// ---------------------------------------------------------------------------
// Backward: overlapping windows — gather per input pixel, recomputing the windows that touch it
// ---------------------------------------------------------------------------

template <int K, bool FIXED, bool FULL, int N, typename scalar_t, typename T>
__device__ __forceinline__ T pixel_share(const scalar_t* __restrict__ src, const Geometry& g, int64_t oh, int64_t ow,
                                         int64_t h, int64_t w, bool in_window, bool in_stencil, T gy,
                                         const Params<T>& p, const T* f9, T bias) {
  Window<N, T> win;
  const WindowGrads<T> gr = backward_window<K, FIXED, FULL>(src, g, oh, ow, gy, p, f9, bias, win);
  T sum = 0;
  if (in_window) {
    int64_t h0, h1, w0, w1;
    window_span(oh, g.kernel_size, g.stride, g.padding, g.height, h0, h1);
    window_span(ow, g.kernel_size, g.stride, g.padding, g.width, w0, w1);
    const int tap = static_cast<int>((h - h0) * (w1 - w0) + (w - w0));
    // select with compile-time indices so a FIXED window stays in registers
#pragma unroll
    for (int t = 0; t < N; ++t)
      if (t == tap) sum += win.gv[t];
  }
  if (FULL && in_stencil) sum += gr.centre * f9[(h - oh * g.stride + 1) * 3 + (w - ow * g.stride + 1)];
  return sum;
}

template <int K, bool FULL, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    dpp_backward_gather_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                               scalar_t* __restrict__ grad_x, Geometry g, ChannelArgs<T> args, int64_t channels,
                               int64_t total, bool small) {
  constexpr int kFixedTaps = K > 0 ? K * K : 1;
  constexpr int kTaps = K > 0 ? kFixedTaps : kGenericTaps;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t plane, c, h, w;
    split_index(idx, g.height, g.width, channels, small, plane, c, h, w);
    const Params<T> p = args.params(c);
    T f9[9], bias;
    args.guide(c, f9, bias);
    const scalar_t* src = x + plane * g.height * g.width;
    const scalar_t* gy_plane = grad + plane * g.out_height * g.out_width;
    int64_t oh_lo, oh_hi, ow_lo, ow_hi;
    touching_outputs(h, g.kernel_size, g.stride, g.padding, FULL, g.out_height, oh_lo, oh_hi);
    touching_outputs(w, g.kernel_size, g.stride, g.padding, FULL, g.out_width, ow_lo, ow_hi);
    T sum = 0;
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
        const int64_t hs = oh * g.stride - g.padding, ws = ow * g.stride - g.padding;
        const bool in_window = h >= hs && h < hs + g.kernel_size && w >= ws && w < ws + g.kernel_size;
        const bool in_stencil = FULL && h >= oh * g.stride - 1 && h <= oh * g.stride + 1 && w >= ow * g.stride - 1 &&
                                w <= ow * g.stride + 1;
        if (!in_window && !in_stencil) continue;
        const T gy = static_cast<T>(gy_plane[oh * g.out_width + ow]);
        bool done = false;
        if constexpr (K > 0) {
          if (interior_window(g, oh, ow)) {
            sum += pixel_share<K, true, FULL, kFixedTaps>(src, g, oh, ow, h, w, in_window, in_stencil, gy, p, f9, bias);
            done = true;
          }
        }
        if (!done)
          sum += pixel_share<K, false, FULL, kTaps>(src, g, oh, ow, h, w, in_window, in_stencil, gy, p, f9, bias);
      }
    }
    grad_x[idx] = static_cast<scalar_t>(sum);
  }
}

// ---------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------

int64_t blocks_for(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t(1) << 30));
}

// Calls fn(std::integral_constant<int, K>) with K = 2, 3 (compile-time fast paths) or 0 (generic).
template <typename Fn>
void dispatch_kernel_size(int kernel_size, Fn&& fn) {
  if (kernel_size == 2) return fn(std::integral_constant<int, 2>{});
  if (kernel_size == 3) return fn(std::integral_constant<int, 3>{});
  fn(std::integral_constant<int, 0>{});
}

template <typename Fn>
void dispatch_full(bool full, Fn&& fn) {
  if (full) return fn(std::true_type{});
  fn(std::false_type{});
}

void check_kernel_size(const Geometry& g) {
  TORCH_CHECK(g.kernel_size <= kMaxKernelSize, "dpp (CUDA kernel): kernel_size must be <= ", kMaxKernelSize, ", got ",
              g.kernel_size);
}

at::Tensor dpp_forward_cuda(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& lam,
                            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                            int64_t kernel_size, int64_t stride, int64_t padding, bool asym, double eps2,
                            bool scale_invariant) {
  TORCH_CHECK(DPP_IS_DEVICE_TENSOR(x_in), "dpp_forward (CUDA kernel): input must be a CUDA tensor");
  DPP_DEVICE_GUARD(x_in);
  const at::Tensor x = x_in.contiguous();
  const Geometry g = make_geometry(x, kernel_size, stride, padding, weight.has_value());
  check_kernel_size(g);
  const ChannelParams cp = make_channel_params(x, alpha, lam, weight, bias);
  const int64_t batch = x.size(0), channels = x.size(1);
  at::Tensor y = at::empty({batch, channels, g.out_height, g.out_width}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  const bool small = total < std::numeric_limits<int32_t>::max();
  auto stream = DPP_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dpp_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const ChannelArgs<T> args = channel_args<T>(cp, eps2, asym, scale_invariant);
    dispatch_kernel_size(g.kernel_size, [&](auto k) {
      dispatch_full(g.full, [&](auto full) {
        auto kernel = dpp_forward_kernel<decltype(k)::value, decltype(full)::value, scalar_t, T>;
        DPP_LAUNCH(kernel, blocks_for(total), kThreads, stream)(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), g,
                                                                args, channels, total, small);
        DPP_LAUNCH_CHECK();
      });
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dpp_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& lam,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t kernel_size, int64_t stride,
    int64_t padding, bool asym, double eps2, bool scale_invariant) {
  TORCH_CHECK(DPP_IS_DEVICE_TENSOR(x_in) && DPP_IS_DEVICE_TENSOR(grad_in),
              "dpp_backward (CUDA kernel): tensors must be CUDA tensors");
  DPP_DEVICE_GUARD(x_in);
  const at::Tensor x = x_in.contiguous();
  const Geometry g = make_geometry(x, kernel_size, stride, padding, weight.has_value());
  check_kernel_size(g);
  const at::Tensor grad = grad_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(grad.size(0) == x.size(0) && grad.size(1) == x.size(1) && grad.size(2) == g.out_height &&
                  grad.size(3) == g.out_width,
              "dpp_backward: grad has shape ", grad.sizes(), ", expected the output shape");
  const ChannelParams cp = make_channel_params(x, alpha, lam, weight, bias);
  const int64_t batch = x.size(0), channels = x.size(1);
  const int slots = channel_grad_slots(g.full);
  const bool disjoint = g.stride >= g.kernel_size;
  // Disjoint windows write their taps; pixels in no window (gaps, cut-off rows) stay zero.
  const bool covered = g.stride == g.kernel_size &&
                       (g.out_height - 1) * g.stride - g.padding + g.kernel_size >= g.height &&
                       (g.out_width - 1) * g.stride - g.padding + g.kernel_size >= g.width;
  at::Tensor grad_x = (disjoint && covered) ? at::empty_like(x) : at::zeros_like(x);
  at::Tensor table = at::zeros({channels, slots}, x.options().dtype(at::kDouble));
  const int64_t per_channel = batch * g.out_height * g.out_width;
  if (per_channel == 0 || x.numel() == 0) {
    auto [ga, gl, gw, gb] = split_channel_grads(table, alpha, lam, weight, bias);
    return {grad_x, ga, gl, gw, gb};
  }
  TORCH_CHECK(channels <= 65535, "dpp_backward (CUDA kernel): at most 65535 channels, got ", channels);
  const bool small = x.numel() < std::numeric_limits<int32_t>::max();  // 32-bit index arithmetic suffices
  const int64_t reduce_blocks = std::min<int64_t>(blocks_for(per_channel), kMaxReduceBlocks);
  auto stream = DPP_STREAM();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dpp_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const ChannelArgs<T> args = channel_args<T>(cp, eps2, asym, scale_invariant);
    at::Tensor partial = at::empty({channels, reduce_blocks, slots}, x.options().dtype(c10::CppTypeToScalarType<T>::value));
    at::Tensor centre_grad;
    if (g.full && disjoint)
      centre_grad = at::empty({batch, channels, g.out_height, g.out_width}, partial.options());
    dispatch_kernel_size(g.kernel_size, [&](auto k) {
      dispatch_full(g.full, [&](auto full) {
        constexpr int K = decltype(k)::value;
        constexpr bool FULL = decltype(full)::value;
        const dim3 grid(static_cast<unsigned>(reduce_blocks), static_cast<unsigned>(channels));
        T* cg = centre_grad.defined() ? centre_grad.data_ptr<T>() : nullptr;
        if (disjoint) {
          auto window_kernel = dpp_backward_window_kernel<K, FULL, true, scalar_t, T>;
          DPP_LAUNCH(window_kernel, grid, kThreads, stream)(grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                                            grad_x.data_ptr<scalar_t>(), cg, partial.data_ptr<T>(), g,
                                                            args, channels, batch, small);
          DPP_LAUNCH_CHECK();
          if (FULL) {
            auto stencil_kernel = dpp_backward_stencil_kernel<scalar_t, T>;
            DPP_LAUNCH(stencil_kernel, blocks_for(x.numel()), kThreads, stream)(cg, grad_x.data_ptr<scalar_t>(), g,
                                                                                args, channels, x.numel(), small);
            DPP_LAUNCH_CHECK();
          }
        } else {
          auto window_kernel = dpp_backward_window_kernel<K, FULL, false, scalar_t, T>;
          DPP_LAUNCH(window_kernel, grid, kThreads, stream)(grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                                            nullptr, nullptr, partial.data_ptr<T>(), g, args, channels,
                                                            batch, small);
          DPP_LAUNCH_CHECK();
          auto gather_kernel = dpp_backward_gather_kernel<K, FULL, scalar_t, T>;
          DPP_LAUNCH(gather_kernel, blocks_for(x.numel()), kThreads, stream)(grad.const_data_ptr<scalar_t>(),
                                                                             x.const_data_ptr<scalar_t>(),
                                                                             grad_x.data_ptr<scalar_t>(), g, args,
                                                                             channels, x.numel(), small);
          DPP_LAUNCH_CHECK();
        }
      });
    });
    auto reduce_kernel = dpp_reduce_partials_kernel<T>;
    DPP_LAUNCH(reduce_kernel, blocks_for(channels * slots), kThreads, stream)(
        partial.const_data_ptr<T>(), table.data_ptr<double>(), channels, reduce_blocks, slots);
    DPP_LAUNCH_CHECK();
  });
  auto [g_alpha, g_lam, g_weight, g_bias] = split_channel_grads(table, alpha, lam, weight, bias);
  return {grad_x, g_alpha, g_lam, g_weight, g_bias};
}

}  // namespace
}  // namespace poolbench_dpp

#ifndef POOLBENCH_DPP_EMULATE
TORCH_LIBRARY_IMPL(poolbench_dpp, CUDA, m) {
  m.impl("dpp_forward", &poolbench_dpp::dpp_forward_cuda);
  m.impl("dpp_backward", &poolbench_dpp::dpp_backward_cuda);
}
#endif
