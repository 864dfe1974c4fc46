// The backward kernels for float and double inputs: one translation unit of the CUDA
// library (see dpp_cuda.cu), compiled in parallel with the others.
#include "dpp_kernel.cuh"

namespace poolbench_dpp {
template void backward_typed<float>(const BackwardCall&);
template void backward_typed<double>(const BackwardCall&);
}  // namespace poolbench_dpp
