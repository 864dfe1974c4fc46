// The backward kernels for at::Half and at::BFloat16 inputs: one translation unit of the CUDA
// library (see dpp_cuda.cu), compiled in parallel with the others.
#include "dpp_kernel.cuh"

namespace poolbench_dpp {
template void backward_typed<at::Half>(const BackwardCall&);
template void backward_typed<at::BFloat16>(const BackwardCall&);
}  // namespace poolbench_dpp
