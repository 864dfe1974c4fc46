// DPP forward/backward on CUDA: registers the CUDA dispatch key only.
//
// Forward: one thread per output window, fused (guide, log-domain weights,
// normalised weighted sum), reading each tap once from global memory.  Interior
// windows of 2×2 and 3×3 kernels run in their own kernel with compile-time tap
// offsets and no local memory; the few border windows (and other kernel sizes)
// run in a second kernel that gathers with bounds checks.
//
// Backward (the weights are recomputed, nothing but x is saved):
//  * window kernel — one thread per window of one channel (grid.y = channel):
//    per-channel α, λ (F, b) gradients, reduced per block in a fixed tree order
//    into a (C, blocks, slots) table that a second kernel reduces per channel in
//    parallel, again in a fixed order, so the result is bitwise reproducible (no atomics).  Where windows do not
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

// The static report's quick mode (`python -m impls.dpp_ext.static_report --float32-only`)
// compiles the float32 instantiations only: a quarter of the compile while tuning register use.
#ifdef POOLBENCH_DPP_FLOAT32_ONLY
#define DPP_DISPATCH_FLOATING_TYPES(type, name, ...) \
  AT_DISPATCH_SWITCH(type, name, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__))
#else
#define DPP_DISPATCH_FLOATING_TYPES(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, name, __VA_ARGS__)
#endif

#include "../dpp_args.h"

namespace poolbench_dpp {
namespace {

constexpr int kThreads = 256;
// Blocks per SM that __launch_bounds__ promises: 2 caps a thread at 128 registers, which every
// float32-computed kernel fits without spilling except the 3×3 backward (up to ~200 registers live
// for a window's taps, weights and gradients); those and float64 get 1 (255).  Without a minimum,
// ptxas spills a few bytes to reach the next occupancy step (64, 80, 128 registers) instead of
// using a few more registers.
template <int K, typename T>
constexpr int kMinBlocks = K == 3 || sizeof(T) > 4 ? 1 : 2;
constexpr int kMaxKernelSize = 8;           // generic windows live in local memory: ≤ 8×8 taps
constexpr int kGenericTaps = kMaxKernelSize * kMaxKernelSize;
constexpr int64_t kMaxReduceBlocks = 1024;  // per channel, in the window kernel

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
// with compile-time tap offsets; otherwise a gathered (clipped) window of up to N taps.  For
// K ∈ {2, 3} both stay in registers: every per-tap loop runs to the constant bound
// kTapBound = K·K (taps past n skipped), so no array is indexed at run time.  The generic
// kernels (K = 0, any size up to 8×8) keep their windows in local memory, and so do float64's
// clipped windows (gradcheck only): unrolled, they need more than 255 registers.
template <int K, bool FIXED, typename T>
constexpr int kTapBound = K > 0 && (FIXED || sizeof(T) <= 4) ? K * K : 0;

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
    w.n = gather_window<kTapBound<K, FIXED, T>>(plane, g, oh, ow, w.v);
  }
  if constexpr (FULL) {
    gather_stencil(plane, g, oh, ow, w.v9);
    w.centre = full_centre(w.v9, f9, bias);
  } else {
    w.centre = lite_centre<kTapBound<K, FIXED, T>>(w.v, w.n);
  }
}

template <int K, bool FIXED, bool FULL, int N, typename scalar_t, typename T>
__device__ __forceinline__ T forward_window(const scalar_t* __restrict__ plane, const Geometry& g, int64_t oh,
                                            int64_t ow, const Params<T>& p, const T* f9, T bias) {
  Window<N, T> w;
  load_window<K, FIXED, FULL>(plane, g, oh, ow, f9, bias, w);
  return window_forward<kTapBound<K, FIXED, T>>(w.v, w.n, w.centre, p, w.lc, w.e).out;
}

template <int K, bool FIXED, bool FULL, int N, typename scalar_t, typename T>
__device__ __forceinline__ WindowGrads<T> backward_window(const scalar_t* __restrict__ plane, const Geometry& g,
                                                          int64_t oh, int64_t ow, T gy, const Params<T>& p,
                                                          const T* f9, T bias, Window<N, T>& w) {
  constexpr int B = kTapBound<K, FIXED, T>;
  load_window<K, FIXED, FULL>(plane, g, oh, ow, f9, bias, w);
  w.stats = window_forward<B>(w.v, w.n, w.centre, p, w.lc, w.e);
  WindowGrads<T> gr = window_backward<B>(gy, w.v, w.n, w.centre, p, w.stats, w.lc, w.e, w.gv);
  if constexpr (!FULL) {  // Lite: c̃ is the window mean, so every tap gets ∂c̃/n
    const T share = gr.centre / static_cast<T>(w.n);
#pragma unroll
    for (int t = 0; t < tap_bound<B>(w.n); ++t)
      if (tap_valid<B>(t, w.n)) w.gv[t] += share;
  }
  return gr;
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

// Interior windows (K ∈ {2, 3}): compile-time tap offsets, no bounds checks, everything in
// registers (no local memory: `poolbench kernels` checks the stack frame is 0 bytes).
template <int K, bool FULL, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    dpp_forward_interior_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, Geometry g,
                                ChannelArgs<T> args, InteriorRegion r, int64_t channels, int64_t total, bool small) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t plane, c, ih, iw;
    split_index(idx, r.rows, r.cols, channels, small, plane, c, ih, iw);
    const int64_t oh = r.row0 + ih, ow = r.col0 + iw;
    T f9[9], bias;
    args.guide(c, f9, bias);
    const T out = forward_window<K, true, FULL, K * K>(x + plane * g.height * g.width, g, oh, ow, args.params(c), f9,
                                                       bias);
    y[(plane * g.out_height + oh) * g.out_width + ow] = static_cast<scalar_t>(out);
  }
}

// Index i of a plane's windows outside the interior region → (oh, ow): the rows above it, the
// columns left and right of it, then the rows below it.  I: uint32_t when every index fits (64-bit
// divisions are subroutine calls on GPUs), else int64_t.
template <typename I>
__device__ __forceinline__ void border_window(I i, const Geometry& g, const InteriorRegion& r, int64_t& oh,
                                              int64_t& ow) {
  const I width = static_cast<I>(g.out_width), row0 = static_cast<I>(r.row0), rows = static_cast<I>(r.rows),
          col0 = static_cast<I>(r.col0), cols = static_cast<I>(r.cols);
  const I top = row0 * width, side = width - cols, middle = rows * side;
  I row, col;
  if (i < top) {
    row = i / width;
    col = i - row * width;
  } else if (i - top < middle) {
    const I j = i - top, k = j - (j / side) * side;
    row = row0 + j / side;
    col = k < col0 ? k : k + cols;
  } else {
    const I j = i - top - middle;
    row = row0 + rows + j / width;
    col = j - (j / width) * width;
  }
  oh = static_cast<int64_t>(row);
  ow = static_cast<int64_t>(col);
}

// Every other window (border windows; every window for kernel sizes without a fast path):
// taps gathered with bounds checks (registers for K ∈ {2, 3}, a local array for the generic K = 0).
template <int K, bool FULL, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks<K, T>)
    dpp_forward_border_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, Geometry g,
                              ChannelArgs<T> args, InteriorRegion r, int64_t channels, int64_t per_plane,
                              int64_t total, bool small) {
  constexpr int kTaps = K > 0 ? K * K : kGenericTaps;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t plane, c, oh, ow;
    if (small) {  // 32-bit index arithmetic when the sizes fit
      const uint32_t i = static_cast<uint32_t>(idx), pp = static_cast<uint32_t>(per_plane), p = i / pp;
      plane = p;
      c = p % static_cast<uint32_t>(channels);
      border_window<uint32_t>(i - p * pp, g, r, oh, ow);
    } else {
      plane = idx / per_plane;
      c = plane % channels;
      border_window<int64_t>(idx - plane * per_plane, g, r, oh, ow);
    }
    T f9[9], bias;
    args.guide(c, f9, bias);
    const T out = forward_window<K, false, FULL, kTaps>(x + plane * g.height * g.width, g, oh, ow, args.params(c), f9,
                                                        bias);
    y[(plane * g.out_height + oh) * g.out_width + ow] = static_cast<scalar_t>(out);
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
__global__ void __launch_bounds__(kThreads, kMinBlocks<K, T>)
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

// (C, blocks, SLOTS) → (C, SLOTS) in float64, one CUDA block per channel: thread t sums the
// partials of blocks t, t + kThreads, … in order, then a fixed tree over the threads —
// parallel, and bitwise reproducible (no atomics).
template <int SLOTS, typename T>
__global__ void __launch_bounds__(kThreads)
    dpp_reduce_partials_kernel(const T* __restrict__ partial, double* __restrict__ out, int64_t blocks) {
  const int64_t c = blockIdx.x;
  double acc[SLOTS];
#pragma unroll
  for (int s = 0; s < SLOTS; ++s) acc[s] = 0.0;
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) {
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) acc[s] += static_cast<double>(partial[(c * blocks + b) * SLOTS + s]);
  }
  block_reduce_store<SLOTS>(acc, out + c * SLOTS);
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
  // Select with compile-time indices (a run-time index would put the arrays in local memory).
  T sum = 0;
  if (in_window) {
    int64_t h0, h1, w0, w1;
    window_span(oh, g.kernel_size, g.stride, g.padding, g.height, h0, h1);
    window_span(ow, g.kernel_size, g.stride, g.padding, g.width, w0, w1);
    const int tap = static_cast<int>((h - h0) * (w1 - w0) + (w - w0));
#pragma unroll
    for (int t = 0; t < N; ++t)
      if (t == tap) sum += win.gv[t];
  }
  if (FULL && in_stencil) {
    const int tap = static_cast<int>((h - oh * g.stride + 1) * 3 + (w - ow * g.stride + 1));
#pragma unroll
    for (int t = 0; t < 9; ++t)
      if (t == tap) sum += gr.centre * f9[t];
  }
  return sum;
}

template <int K, bool FULL, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks<K, T>)
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
  if (y.numel() == 0) return y;
  // Fast path only for K ∈ {2, 3}; other kernel sizes send every window down the border kernel.
  const InteriorRegion region = g.kernel_size == 2 || g.kernel_size == 3 ? interior_region(g) : InteriorRegion{0, 0, 0, 0};
  const int64_t planes = batch * channels, inner = planes * region.rows * region.cols;
  const int64_t per_plane_border = g.out_height * g.out_width - region.rows * region.cols;
  auto stream = DPP_STREAM();
  DPP_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpp_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const ChannelArgs<T> args = channel_args<T>(cp, eps2, asym, scale_invariant);
    dispatch_kernel_size(g.kernel_size, [&](auto k) {
      dispatch_full(g.full, [&](auto full) {
        constexpr int K = decltype(k)::value;
        constexpr bool FULL = decltype(full)::value;
        if constexpr (K > 0) {
          if (inner > 0) {
            auto kernel = dpp_forward_interior_kernel<K, FULL, scalar_t, T>;
            DPP_LAUNCH(kernel, blocks_for(inner), kThreads, stream)(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                                                    g, args, region, channels, inner,
                                                                    inner < std::numeric_limits<int32_t>::max());
            DPP_LAUNCH_CHECK();
          }
        }
        if (per_plane_border > 0) {
          auto kernel = dpp_forward_border_kernel<K, FULL, scalar_t, T>;
          DPP_LAUNCH(kernel, blocks_for(planes * per_plane_border), kThreads, stream)(
              x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), g, args, region, channels, per_plane_border,
              planes * per_plane_border, planes * per_plane_border < std::numeric_limits<int32_t>::max());
          DPP_LAUNCH_CHECK();
        }
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
  const at::Tensor grad = upstream_grad(grad_in, x, g);
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
  DPP_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpp_backward_cuda", [&] {
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
    dispatch_full(g.full, [&](auto full) {
      auto reduce_kernel = dpp_reduce_partials_kernel<decltype(full)::value ? 12 : 2, T>;
      DPP_LAUNCH(reduce_kernel, channels, kThreads, stream)(partial.const_data_ptr<T>(), table.data_ptr<double>(),
                                                            reduce_blocks);
      DPP_LAUNCH_CHECK();
    });
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
