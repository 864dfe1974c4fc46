// The CPU kernel's channels-last (NHWC) path: the entry points dpp_kernel.cpp hands a
// channels-last input to (see dpp_kernel_nhwc.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace poolbench_dpp {

// Whether the op runs the NHWC path for input x: x is 4-D and channels-last contiguous but not
// NCHW contiguous (so C > 1 and H·W > 1: otherwise the two layouts are the same and the NCHW
// path runs).  The output and ∂x are then channels-last too.  poolbench/dpp_custom_op.py's fake
// kernels state the same rule.
bool nhwc_path_applies(const at::Tensor& x);

at::Tensor dpp_forward_cpu_nhwc(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& lam,
                                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                int64_t kernel_size, int64_t stride, int64_t padding, bool asym, double eps2,
                                bool scale_invariant, bool log_params);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dpp_backward_cpu_nhwc(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& lam,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t kernel_size, int64_t stride,
    int64_t padding, bool asym, double eps2, bool scale_invariant, bool log_params);

}  // namespace poolbench_dpp
