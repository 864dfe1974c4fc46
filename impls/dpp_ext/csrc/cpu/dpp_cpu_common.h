// What the CPU kernels (NCHW: dpp_kernel.cpp, channels-last: dpp_kernel_nhwc.cpp) share besides
// the window maths of dpp_math.h: the vectorisation hint for their per-window loops and the
// subnormal flush they run float32 work under.
#pragma once

#if defined(__SSE2__) || defined(_M_X64)
#include <xmmintrin.h>
#define DPP_HAS_MXCSR 1
#endif

// The loops over windows (or channels) carry per-window arrays (v, lc, e, gv) through inlined
// dpp_math.h calls.  `omp simd` would turn those into per-lane "simd arrays" read by gathers;
// plain auto-vectorisation after full unrolling keeps them in registers.  ivdep only drops the
// run-time aliasing checks (inputs are read-only, every window or channel writes its own slots).
#if defined(__clang__)
#define DPP_VECTORIZE _Pragma("clang loop vectorize(enable) interleave(enable)")
#elif defined(__GNUC__)
#define DPP_VECTORIZE _Pragma("GCC ivdep")
#else
#define DPP_VECTORIZE
#endif

namespace poolbench_dpp {

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

}  // namespace poolbench_dpp
