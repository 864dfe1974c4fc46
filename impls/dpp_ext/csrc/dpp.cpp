// The op family's schema, declared once.  Kernels live in cpu/ and cuda/ and
// each registers only its own dispatch key; fake (meta) kernels and the
// autograd formula are registered from Python (impls/dpp_ext/ops.py).
#include <torch/library.h>

TORCH_LIBRARY(poolbench_dpp, m) {
  // y = DPP(x) for x (N, C, H, W); alpha, lam (C,); weight (C, 1, 3, 3) and bias (C,) for Full-DPP, None for Lite.
  m.def(
      "dpp_forward(Tensor x, Tensor alpha, Tensor lam, Tensor? weight, Tensor? bias, int kernel_size, int stride, "
      "int padding, bool asym, float eps2, bool scale_invariant) -> Tensor");
  // Gradients of sum(grad * y) w.r.t. (x, alpha, lam, weight, bias); weight/bias grads are empty (0,) for Lite.
  m.def(
      "dpp_backward(Tensor grad, Tensor x, Tensor alpha, Tensor lam, Tensor? weight, Tensor? bias, int kernel_size, "
      "int stride, int padding, bool asym, float eps2, bool scale_invariant) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
