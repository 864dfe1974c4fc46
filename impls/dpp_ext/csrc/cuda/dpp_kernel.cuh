// DPP forward/backward on CUDA: the kernels and their typed launchers (forward_typed,
// backward_typed).  dpp_cuda.cu holds the op entry points and registers the CUDA dispatch key;
// dpp_{forward,backward}_{f32,f16}.cu instantiate the launchers, one translation unit per
// direction and dtype group, so ninja compiles them in parallel.
//
// Forward: one launch, one thread per output window, fused (guide, log-domain weights,
// normalised weighted sum), reading each tap once from global memory.  Interior
// windows of 2×2 and 3×3 kernels take compile-time tap offsets and no local memory;
// border windows (and other kernel sizes) gather with bounds checks in the same grid.
// The per-channel α, λ (or their logs) are read and exponentiated in the kernel.
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

}  // namespace

// n / d and n % d for a divisor fixed per launch, by a multiply-high and a shift (Granlund &
// Montgomery; CUTLASS's FastDivmod): valid for n < 2^31.  A runtime 32-bit division is ~20
// instructions per window on GPUs; this is 3.
struct FastDivmod {
  uint32_t divisor = 1, multiplier = 0, shift = 0;

  FastDivmod() = default;
  explicit FastDivmod(uint32_t d) : divisor(d) {
    while ((uint64_t(1) << shift) < d) ++shift;  // shift = ceil(log2 d)
    multiplier = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  DPP_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(n, multiplier);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(n) * multiplier) >> 32);
#endif
    return (hi + n) >> shift;
  }
};

// How a flat output index splits into (plane, channel, row, column): divisors fixed per launch.
struct OutputIndex {
  FastDivmod width, height, channels;
};

namespace {

// One output window of the forward: interior windows (K ∈ {2, 3}) take compile-time tap
// offsets with no bounds checks and everything in registers (no local memory: `poolbench
// kernels` checks the stack frame is 0 bytes); border windows (and every window of other
// kernel sizes) gather with bounds checks in the same thread.  INTERIOR_ONLY is the static
// report's probe: the border path replaced by a trap, so its SASS is what an interior window runs.
template <int K, bool FULL, int SI, bool INTERIOR_ONLY, typename scalar_t, typename T>
__device__ __forceinline__ T forward_one(const scalar_t* __restrict__ plane, const Geometry& g, int64_t oh, int64_t ow,
                                         const ChannelArgs<T>& args, int64_t c) {
  constexpr int kTaps = K > 0 ? K * K : kGenericTaps;
  T f9[9], bias = T(0);
  if constexpr (FULL) args.guide(c, f9, bias);
  const Params<T> p = args.params(c);
  if constexpr (K > 0) {
    if (interior_window(g, oh, ow)) {
      Window<K * K, T> w;
      load_window<K, true, FULL>(plane, g, oh, ow, f9, bias, w);
      return window_forward<K * K, SI>(w.v, w.n, w.centre, p, w.lc, w.e).out;
    }
  }
  if constexpr (INTERIOR_ONLY) {
#if defined(__CUDA_ARCH__)
    __trap();
#endif
    return T(0);
  } else {
    Window<kTaps, T> w;
    load_window<K, false, FULL>(plane, g, oh, ow, f9, bias, w);
    return window_forward<kTapBound<K, false, T>, SI>(w.v, w.n, w.centre, p, w.lc, w.e).out;
  }
}

// The whole forward in one launch: one thread per output window, interior and border windows
// in the same grid.  SMALL (fewer than 2^31 windows and input elements): one window per thread,
// 32-bit indices split by FastDivmod; otherwise a grid-stride loop with 64-bit indices.
template <int K, bool FULL, int SI, bool SMALL, bool INTERIOR_ONLY, typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks<K, T>)
    dpp_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, Geometry g, ChannelArgs<T> args,
                       OutputIndex ix, int64_t total) {
  if constexpr (SMALL) {
    const uint32_t idx = blockIdx.x * kThreads + threadIdx.x;
    if (idx >= static_cast<uint32_t>(total)) return;
    const uint32_t q = ix.width.div(idx), plane = ix.height.div(q);
    const uint32_t ow = idx - q * ix.width.divisor, oh = q - plane * ix.height.divisor;
    const uint32_t c = plane - ix.channels.div(plane) * ix.channels.divisor;
    const uint32_t plane_size = static_cast<uint32_t>(g.height * g.width);
    y[idx] = static_cast<scalar_t>(
        forward_one<K, FULL, SI, INTERIOR_ONLY>(x + plane * plane_size, g, oh, ow, args, c));
  } else {
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * kThreads) {
      const int64_t q = idx / g.out_width, plane = q / g.out_height;
      const int64_t ow = idx - q * g.out_width, oh = q - plane * g.out_height;
      const int64_t c = plane % static_cast<int64_t>(ix.channels.divisor);
      y[idx] = static_cast<scalar_t>(
          forward_one<K, FULL, SI, INTERIOR_ONLY>(x + plane * g.height * g.width, g, oh, ow, args, c));
    }
  }
}

#ifdef POOLBENCH_DPP_STATIC_PROBES
// Interior-path probes for the static report (never launched): Lite/Full × 2×2/3×3 × the
// float32-computed dtypes, scale-invariant option off, 32-bit indices.
#define DPP_PROBE(K, FULL, scalar_t) \
  template __global__ void dpp_forward_kernel<K, FULL, 0, true, true, scalar_t, float>( \
      const scalar_t* __restrict__, scalar_t* __restrict__, Geometry, ChannelArgs<float>, OutputIndex, int64_t);
#define DPP_PROBES(scalar_t) \
  DPP_PROBE(2, false, scalar_t) DPP_PROBE(2, true, scalar_t) DPP_PROBE(3, false, scalar_t) DPP_PROBE(3, true, scalar_t)
DPP_PROBES(float)
DPP_PROBES(at::Half)
DPP_PROBES(at::BFloat16)
#undef DPP_PROBES
#undef DPP_PROBE
#endif

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

// INTERIOR_ONLY: the static report's probe (border windows replaced by a trap; never launched).
template <int K, bool FULL, bool WRITE_TAPS, typename scalar_t, typename T, bool INTERIOR_ONLY = false>
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
      if constexpr (INTERIOR_ONLY) {
#if defined(__CUDA_ARCH__)
        __trap();
#endif
      } else {
        Window<kTaps, T> w;
        gr = backward_window<K, false, FULL>(src, g, oh, ow, gy, p, f9, bias, w);
        finish(w, false);
      }
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

#ifdef POOLBENCH_DPP_STATIC_PROBES
// Interior-path probes of the backward window kernel for the static report (never launched):
// 2×2 writes its taps (disjoint windows), 3×3 gives parameter gradients only (overlapping).
#define DPP_BWD_PROBE(K, FULL, TAPS, scalar_t) \
  template __global__ void dpp_backward_window_kernel<K, FULL, TAPS, scalar_t, float, true>( \
      const scalar_t* __restrict__, const scalar_t* __restrict__, scalar_t* __restrict__, float* __restrict__, \
      float* __restrict__, Geometry, ChannelArgs<float>, int64_t, int64_t, bool);
#define DPP_BWD_PROBES(scalar_t) \
  DPP_BWD_PROBE(2, false, true, scalar_t) DPP_BWD_PROBE(2, true, true, scalar_t) \
  DPP_BWD_PROBE(3, false, false, scalar_t) DPP_BWD_PROBE(3, true, false, scalar_t)
DPP_BWD_PROBES(float)
DPP_BWD_PROBES(at::Half)
DPP_BWD_PROBES(at::BFloat16)
#undef DPP_BWD_PROBES
#undef DPP_BWD_PROBE
#endif

// (C, blocks, SLOTS) → the parameter gradients, summed in float64, one CUDA block per channel:
// thread t sums the partials of blocks t, t + kThreads, … in order, then a fixed tree over the
// threads — parallel, and bitwise reproducible (no atomics).  Thread 0 writes each slot in the
// outputs' dtype P, λ's scaled to ∂L/∂θλ for log parameters: no conversion op after the kernel.
template <int SLOTS, typename T, typename P>
__global__ void __launch_bounds__(kThreads)
    dpp_reduce_partials_kernel(const T* __restrict__ partial, ParamGradPtrs<P> out, ChannelArgs<T> args,
                               int64_t blocks) {
  const int64_t c = blockIdx.x;
  __shared__ double sums[SLOTS];
  double acc[SLOTS];
#pragma unroll
  for (int s = 0; s < SLOTS; ++s) acc[s] = 0.0;
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) {
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) acc[s] += static_cast<double>(partial[(c * blocks + b) * SLOTS + s]);
  }
  block_reduce_store<SLOTS>(acc, sums);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < SLOTS; ++s)
      out.store(c, s, s == 1 ? sums[s] * static_cast<double>(args.lam_grad_scale(c)) : sums[s]);
  }
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

template <typename Fn>
void dispatch_bool(bool value, Fn&& fn) {
  if (value) return fn(std::true_type{});
  fn(std::false_type{});
}

}  // namespace

// One forward/backward call as the typed launchers take it (the entry points in dpp_cuda.cu
// check, allocate and dispatch on the dtype; each dtype's kernels live in their own
// translation unit, dpp_{forward,backward}_{f32,f16}.cu, compiled in parallel).
struct ForwardCall {
  const at::Tensor& x;
  at::Tensor& y;
  const Geometry& g;
  const ChannelParams& cp;
  double eps2;
  bool asym, scale_invariant;
  OutputIndex ix;
  bool small;
  int64_t total;
};

struct BackwardCall {
  const at::Tensor& grad;
  const at::Tensor& x;
  at::Tensor& grad_x;
  const ParamGrads& reduced;
  const Geometry& g;
  const ChannelParams& cp;
  double eps2;
  bool asym, scale_invariant, disjoint, small;
  int64_t reduce_blocks;
};

template <typename scalar_t>
void forward_typed(const ForwardCall& call) {
  const at::Tensor& x = call.x;
  const Geometry& g = call.g;
  const OutputIndex& ix = call.ix;
  const int64_t total = call.total;
  const bool small = call.small, scale_invariant = call.scale_invariant;
  auto stream = DPP_STREAM();
  using T = at::opmath_type<scalar_t>;
  const ChannelArgs<T> args = channel_args<T>(call.cp, call.eps2, call.asym, scale_invariant);
  // The scale-invariant option is a compile-time choice on the common path (2×2/3×3, 32-bit
  // indices: its work is skipped, not multiplied by 0) and read at run time elsewhere.
  auto launch = [&](auto kernel) {
    DPP_LAUNCH(kernel, blocks_for(total), kThreads, stream)(x.const_data_ptr<scalar_t>(), call.y.data_ptr<scalar_t>(),
                                                            g, args, ix, total);
    DPP_LAUNCH_CHECK();
  };
  dispatch_kernel_size(g.kernel_size, [&](auto k) {
    dispatch_full(g.full, [&](auto full) {
      constexpr int K = decltype(k)::value;
      constexpr bool FULL = decltype(full)::value;
      if (!small) return launch(dpp_forward_kernel<K, FULL, -1, false, false, scalar_t, T>);
      if constexpr (K > 0) {
        dispatch_bool(scale_invariant, [&](auto si) {
          launch(dpp_forward_kernel<K, FULL, decltype(si)::value ? 1 : 0, true, false, scalar_t, T>);
        });
      } else {
        launch(dpp_forward_kernel<K, FULL, -1, true, false, scalar_t, T>);
      }
    });
  });
}

template <typename scalar_t>
void backward_typed(const BackwardCall& call) {
  const at::Tensor &grad = call.grad, &x = call.x;
  at::Tensor grad_x = call.grad_x;
  const ParamGrads& reduced = call.reduced;
  const Geometry& g = call.g;
  const bool disjoint = call.disjoint, small = call.small;
  const int64_t reduce_blocks = call.reduce_blocks, batch = x.size(0), channels = x.size(1);
  const int slots = channel_grad_slots(g.full);
  const double eps2 = call.eps2;
  const bool asym = call.asym, scale_invariant = call.scale_invariant;
  const ChannelParams& cp = call.cp;
  auto stream = DPP_STREAM();
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
  // The reduction writes the gradients in the parameters' dtype P (a switch, not AT_DISPATCH:
  // its `using scalar_t` would shadow this template's parameter).
  auto reduce_with = [&](auto* tag) {
    using P = std::remove_pointer_t<decltype(tag)>;
    const ParamGradPtrs<P> out = param_grad_ptrs<P>(reduced, g.full);
    dispatch_full(g.full, [&](auto full) {
      auto reduce_kernel = dpp_reduce_partials_kernel<decltype(full)::value ? 12 : 2, T, P>;
      DPP_LAUNCH(reduce_kernel, channels, kThreads, stream)(partial.const_data_ptr<T>(), out, args, reduce_blocks);
      DPP_LAUNCH_CHECK();
    });
  };
  switch (reduced.alpha.scalar_type()) {
    case at::kFloat: reduce_with(static_cast<float*>(nullptr)); break;
    case at::kDouble: reduce_with(static_cast<double*>(nullptr)); break;
    case at::kHalf: reduce_with(static_cast<at::Half*>(nullptr)); break;
    case at::kBFloat16: reduce_with(static_cast<at::BFloat16*>(nullptr)); break;
    default: TORCH_CHECK(false, "dpp_backward (CUDA kernel): unsupported parameter dtype ", reduced.alpha.scalar_type());
  }
}

}  // namespace poolbench_dpp
