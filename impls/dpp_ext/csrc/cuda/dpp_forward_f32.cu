// The forward kernels for float and double inputs: one translation unit of the CUDA
// library (see dpp_cuda.cu), compiled in parallel with the others.
#include "dpp_kernel.cuh"

namespace poolbench_dpp {
template void forward_typed<float>(const ForwardCall&);
template void forward_typed<double>(const ForwardCall&);
}  // namespace poolbench_dpp
