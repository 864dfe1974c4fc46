// Runs the CUDA kernels of impls/dpp_ext/csrc/cuda/ (dpp_cuda.cu and dpp_kernel.cuh) on the CPU.
//
// The .cu file is compiled as plain C++: CUDA qualifiers become nothing, each
// launch runs its grid block by block with one std::thread per CUDA thread
// (a barrier per block stands in for __syncthreads, `static` for
// __shared__), on CPU tensors.  The host code, the kernels and dpp_math.h are
// the real ones; only the device's exp2/log2 (CPU polynomials here) and the
// hardware differ.  tests/test_dpp_ext.py builds this with
// torch.utils.cpp_extension and compares it with the float64 reference, so the
// GPU code is checked on machines without a GPU.
#include <torch/extension.h>

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

namespace emu {
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

// A reusable barrier (C++17 on purpose: std::barrier is C++20, and older torch builds extensions as C++17).
class Barrier {
 public:
  explicit Barrier(std::size_t count) : count_(count) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const std::size_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation != generation_; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::size_t count_, arrived_ = 0, generation_ = 0;
};

inline Barrier* block_barrier = nullptr;
inline void syncthreads() { block_barrier->arrive_and_wait(); }

template <typename Kernel>
struct Launch {
  Kernel kernel;
  dim3 grid, block;
  template <typename... Args>
  void operator()(Args... args) const {
    gridDim = grid;
    blockDim = block;
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Barrier barrier(block.x);
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        threads.reserve(block.x);
        for (unsigned tx = 0; tx < block.x; ++tx) {
          threads.emplace_back([&, tx] {
            threadIdx = dim3(tx);
            blockIdx = dim3(bx, by);
            kernel(args...);
          });
        }
        for (auto& t : threads) t.join();
      }
    }
  }
};

template <typename Kernel>
Launch<Kernel> launcher(Kernel kernel, dim3 grid, dim3 block) {
  return {kernel, grid, block};
}
}  // namespace emu

using emu::blockDim;
using emu::blockIdx;
using emu::dim3;
using emu::gridDim;
using emu::threadIdx;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __syncthreads() ::emu::syncthreads()

#define POOLBENCH_DPP_EMULATE
#define DPP_DEVICE_GUARD(tensor) (void)0
#define DPP_STREAM() 0
#define DPP_LAUNCH(kernel, grid, block, stream) ::emu::launcher(kernel, ::emu::dim3(grid), ::emu::dim3(block))
#define DPP_LAUNCH_CHECK() (void)0
#define DPP_IS_DEVICE_TENSOR(tensor) (tensor).is_cpu()

#include "cuda/dpp_cuda.cu"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dpp_forward", &poolbench_dpp::dpp_forward_cuda, "CUDA forward kernel, emulated on the CPU");
  m.def("dpp_backward", &poolbench_dpp::dpp_backward_cuda, "CUDA backward kernels, emulated on the CPU");
}
