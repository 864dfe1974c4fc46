// The forward kernels for at::Half and at::BFloat16 inputs: one translation unit of the CUDA
// library (see dpp_cuda.cu), compiled in parallel with the others.
#include "dpp_kernel.cuh"

namespace poolbench_dpp {
template void forward_typed<at::Half>(const ForwardCall&);
template void forward_typed<at::BFloat16>(const ForwardCall&);
}  // namespace poolbench_dpp
