// Host-side argument handling shared by the CPU and CUDA kernels (ATen, not device code).
//
// The Python front end validated the input already (poolbench.validation); these
// checks only guard the C++ op against direct misuse through torch.ops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "dpp_math.h"

namespace poolbench_dpp {

inline Geometry make_geometry(const at::Tensor& x, int64_t kernel_size, int64_t stride, int64_t padding, bool full) {
  TORCH_CHECK(x.dim() == 4, "dpp: input must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(kernel_size >= 1 && stride >= 1 && padding >= 0 && padding <= kernel_size / 2,
              "dpp: invalid window kernel_size=", kernel_size, " stride=", stride, " padding=", padding);
  Geometry g;
  g.height = x.size(2);
  g.width = x.size(3);
  TORCH_CHECK(std::min(g.height, g.width) + 2 * padding >= kernel_size, "dpp: window larger than the padded input");
  g.out_height = (g.height + 2 * padding - kernel_size) / stride + 1;
  g.out_width = (g.width + 2 * padding - kernel_size) / stride + 1;
  g.kernel_size = static_cast<int>(kernel_size);
  g.stride = static_cast<int>(stride);
  g.padding = static_cast<int>(padding);
  g.full = full;
  if (full) {
    const int64_t gh = (g.height + 2 - 3) / stride + 1, gw = (g.width + 2 - 3) / stride + 1;
    TORCH_CHECK(gh == g.out_height && gw == g.out_width, "dpp: Full-DPP's 3x3 guide gives a ", gh, "x", gw,
                " map but pooling gives ", g.out_height, "x", g.out_width);
  }
  return g;
}

// The backward's upstream gradient in x's dtype, contiguous, checked against the output shape.
inline at::Tensor upstream_grad(const at::Tensor& grad_in, const at::Tensor& x, const Geometry& g) {
  const at::Tensor grad = grad_in.to(x.scalar_type()).contiguous();
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == x.size(0) && grad.size(1) == x.size(1) &&
                  grad.size(2) == g.out_height && grad.size(3) == g.out_width,
              "dpp_backward: grad has shape ", grad.sizes(), ", expected the output shape (", x.size(0), ", ",
              x.size(1), ", ", g.out_height, ", ", g.out_width, ")");
  return grad;
}

// Per-channel parameters in the accumulation dtype, contiguous, on x's device:
// alpha, log2(alpha), lam, F (C, 9), b (C).  Tiny tensors: converting them is free.
struct ChannelParams {
  at::Tensor alpha, log2_alpha, lam, weight, bias;
};

inline ChannelParams make_channel_params(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& lam,
                                         const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& bias) {
  const int64_t channels = x.size(1);
  const auto acc = at::toOpMathType(x.scalar_type());
  TORCH_CHECK(alpha.numel() == channels && lam.numel() == channels, "dpp: alpha and lam must have shape (C,) = (",
              channels, ",), got ", alpha.sizes(), " and ", lam.sizes());
  TORCH_CHECK(weight.has_value() == bias.has_value(), "dpp: pass both weight and bias (Full-DPP) or neither (Lite-DPP)");
  ChannelParams p;
  const auto opts = x.options().dtype(acc);
  p.alpha = alpha.detach().to(opts).contiguous();
  p.log2_alpha = at::log2(p.alpha);  // -inf where alpha == 0
  p.lam = lam.detach().to(opts).contiguous();
  if (weight.has_value()) {
    TORCH_CHECK(weight->numel() == channels * 9 && bias->numel() == channels, "dpp: guide weight must be (C, 1, 3, 3) and bias (C,)");
    p.weight = weight->detach().to(opts).reshape({channels, 9}).contiguous();
    p.bias = bias->detach().to(opts).contiguous();
  }
  return p;
}

// Kernel-side view of the channel parameters (pointers valid while `cp` lives).
template <typename T>
ChannelArgs<T> channel_args(const ChannelParams& cp, double eps2, bool asym, bool scale_invariant) {
  ChannelArgs<T> a;
  a.alpha = cp.alpha.data_ptr<T>();
  a.log2_alpha = cp.log2_alpha.data_ptr<T>();
  a.lam = cp.lam.data_ptr<T>();
  a.weight = cp.weight.defined() ? cp.weight.data_ptr<T>() : nullptr;
  a.bias = cp.bias.defined() ? cp.bias.data_ptr<T>() : nullptr;
  a.eps2 = static_cast<T>(eps2);
  a.asym = asym;
  a.scale_invariant = scale_invariant;
  return a;
}

// Number of per-channel gradient slots: alpha, lam, then F (9) and b for Full-DPP.
inline int channel_grad_slots(bool full) { return full ? 12 : 2; }

// Split the (C, slots) per-channel gradient table into the op's outputs.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> split_channel_grads(
    const at::Tensor& table, const at::Tensor& alpha, const at::Tensor& lam, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias) {
  at::Tensor g_alpha = table.select(1, 0).to(alpha.scalar_type()).reshape(alpha.sizes()).contiguous();
  at::Tensor g_lam = table.select(1, 1).to(lam.scalar_type()).reshape(lam.sizes()).contiguous();
  at::Tensor g_weight, g_bias;
  if (weight.has_value()) {
    g_weight = table.slice(1, 2, 11).to(weight->scalar_type()).reshape(weight->sizes()).contiguous();
    g_bias = table.select(1, 11).to(bias->scalar_type()).reshape(bias->sizes()).contiguous();
  } else {
    g_weight = at::empty({0}, alpha.options());
    g_bias = at::empty({0}, alpha.options());
  }
  return {g_alpha, g_lam, g_weight, g_bias};
}

}  // namespace poolbench_dpp
