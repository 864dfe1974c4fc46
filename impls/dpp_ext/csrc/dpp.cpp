// The op family's schema, declared once.  Kernels live in cpu/ and cuda/ and
// each registers only its own dispatch key; the autograd kernel is dpp_autograd.cpp;
// fake (meta) kernels and the differentiable backward are registered from Python
// (poolbench/dpp_custom_op.py).
#include <torch/library.h>

TORCH_LIBRARY(poolbench_dpp, m) {
  // y = DPP(x) for x (N, C, H, W); alpha, lam (C,); weight (C, 1, 3, 3) and bias (C,) for Full-DPP, None for Lite.
  // log_params: alpha and lam hold ln α and ln λ (as the module stores them), else α, λ ≥ 0.
  m.def(
      "dpp_forward(Tensor x, Tensor alpha, Tensor lam, Tensor? weight, Tensor? bias, int kernel_size, int stride, "
      "int padding, bool asym, float eps2, bool scale_invariant, bool log_params=False) -> Tensor");
  // Gradients of sum(grad * y) w.r.t. (x, alpha, lam, weight, bias) as passed (w.r.t. the logs for log_params);
  // weight/bias grads are empty (0,) for Lite.  Not differentiable: the fused kernels.
  m.def(
      "dpp_backward(Tensor grad, Tensor x, Tensor alpha, Tensor lam, Tensor? weight, Tensor? bias, int kernel_size, "
      "int stride, int padding, bool asym, float eps2, bool scale_invariant, bool log_params=False) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same gradients written in differentiable ops (double backward: gradient penalties, gradgradcheck);
  // CompositeImplicitAutograd, registered from Python.
  m.def(
      "dpp_backward_differentiable(Tensor grad, Tensor x, Tensor alpha, Tensor lam, Tensor? weight, Tensor? bias, "
      "int kernel_size, int stride, int padding, bool asym, float eps2, bool scale_invariant, "
      "bool log_params=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
