// Host-side argument handling shared by the CPU and CUDA kernels (ATen, not device code).
//
// The Python front end validated the input already (poolbench.validation); these
// checks only guard the C++ op against direct misuse through torch.ops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
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
// Already so in every call from autograd: then no op is dispatched.
inline at::Tensor upstream_grad(const at::Tensor& grad_in, const at::Tensor& x, const Geometry& g) {
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == x.size(0) && grad_in.size(1) == x.size(1) &&
                  grad_in.size(2) == g.out_height && grad_in.size(3) == g.out_width,
              "dpp_backward: grad has shape ", grad_in.sizes(), ", expected the output shape (", x.size(0), ", ",
              x.size(1), ", ", g.out_height, ", ", g.out_width, ")");
  if (grad_in.scalar_type() == x.scalar_type() && grad_in.is_contiguous()) return grad_in;
  return grad_in.to(x.scalar_type()).contiguous();
}

// A per-channel parameter in the accumulation dtype, contiguous, as the kernels read it: the
// tensor itself in the usual case (no op, no copy), a converted copy otherwise.
inline at::Tensor kernel_param(const at::Tensor& t, const at::TensorOptions& opts) {
  if (t.scalar_type() == opts.dtype().toScalarType() && t.is_contiguous() && t.device() == opts.device()) return t;
  return t.detach().to(opts).contiguous();
}

// Per-channel parameters as the kernels read them: alpha, lam (α, λ or their logs), F (C, 9), b (C).
struct ChannelParams {
  at::Tensor alpha, lam, weight, bias;
  bool log_params = false;
};

inline ChannelParams make_channel_params(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& lam,
                                         const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& bias, bool log_params) {
  const int64_t channels = x.size(1);
  const auto acc = at::toOpMathType(x.scalar_type());
  TORCH_CHECK(alpha.numel() == channels && lam.numel() == channels, "dpp: alpha and lam must have shape (C,) = (",
              channels, ",), got ", alpha.sizes(), " and ", lam.sizes());
  TORCH_CHECK(weight.has_value() == bias.has_value(), "dpp: pass both weight and bias (Full-DPP) or neither (Lite-DPP)");
  ChannelParams p;
  const auto opts = x.options().dtype(acc);
  p.alpha = kernel_param(alpha, opts);
  p.lam = kernel_param(lam, opts);
  p.log_params = log_params;
  if (weight.has_value()) {
    TORCH_CHECK(weight->numel() == channels * 9 && bias->numel() == channels, "dpp: guide weight must be (C, 1, 3, 3) and bias (C,)");
    p.weight = kernel_param(*weight, opts);  // (C, 1, 3, 3) contiguous is (C, 9) row-major
    p.bias = kernel_param(*bias, opts);
  }
  return p;
}

// Kernel-side view of the channel parameters (pointers valid while `cp` lives).
template <typename T>
ChannelArgs<T> channel_args(const ChannelParams& cp, double eps2, bool asym, bool scale_invariant) {
  ChannelArgs<T> a;
  a.alpha = cp.alpha.const_data_ptr<T>();
  a.lam = cp.lam.const_data_ptr<T>();
  a.weight = cp.weight.defined() ? cp.weight.const_data_ptr<T>() : nullptr;
  a.bias = cp.bias.defined() ? cp.bias.const_data_ptr<T>() : nullptr;
  a.eps2 = static_cast<T>(eps2);
  a.asym = asym;
  a.scale_invariant = scale_invariant;
  a.log_params = cp.log_params;
  return a;
}

// Number of per-channel gradient slots: alpha, lam, then F (9) and b for Full-DPP.
inline int channel_grad_slots(bool full) { return full ? 12 : 2; }

// The op's parameter-gradient outputs, allocated in the parameters' own dtypes and shapes
// (empty (0,) placeholders in alpha's dtype for Lite-DPP's weight and bias).
struct ParamGrads {
  at::Tensor alpha, lam, weight, bias;
};

inline ParamGrads empty_param_grads(const at::Tensor& alpha, const at::Tensor& lam,
                                    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias) {
  ParamGrads r;
  r.alpha = at::empty(alpha.sizes(), alpha.options());
  r.lam = at::empty(lam.sizes(), lam.options());
  r.weight = weight.has_value() ? at::empty(weight->sizes(), weight->options()) : at::empty({0}, alpha.options());
  r.bias = bias.has_value() ? at::empty(bias->sizes(), bias->options()) : at::empty({0}, alpha.options());
  return r;
}

// Typed pointers to ParamGrads' storage: where a kernel writes slot s (α, λ, F0..F8, b) of channel c.
template <typename P>
struct ParamGradPtrs {
  P *alpha, *lam, *weight, *bias;

  DPP_HD void store(int64_t c, int slot, double value) const {
    if (slot == 0) alpha[c] = static_cast<P>(value);
    else if (slot == 1) lam[c] = static_cast<P>(value);
    else if (slot < 11) weight[c * 9 + slot - 2] = static_cast<P>(value);
    else bias[c] = static_cast<P>(value);
  }
};

// The parameter gradients' common dtype, or Undefined when they differ (then callers convert).
inline at::ScalarType common_param_dtype(const ParamGrads& r, bool full) {
  const auto t = r.alpha.scalar_type();
  const bool same = r.lam.scalar_type() == t && (!full || (r.weight.scalar_type() == t && r.bias.scalar_type() == t));
  return same ? t : at::ScalarType::Undefined;
}

template <typename P>
ParamGradPtrs<P> param_grad_ptrs(const ParamGrads& r, bool full) {
  return {r.alpha.data_ptr<P>(), r.lam.data_ptr<P>(), full ? r.weight.data_ptr<P>() : nullptr,
          full ? r.bias.data_ptr<P>() : nullptr};
}

// Host table (C, slots) of float64 sums → the outputs, each in its own dtype (CPU kernel).
inline void store_param_grads_host(const double* table, int64_t channels, bool full, ParamGrads& r) {
  const int slots = channel_grad_slots(full);
  at::Tensor* outs[4] = {&r.alpha, &r.lam, &r.weight, &r.bias};
  for (int o = 0; o < (full ? 4 : 2); ++o) {
    at::Tensor& out = *outs[o];
    const int first = o == 0 ? 0 : o == 1 ? 1 : o == 2 ? 2 : 11, width = o == 2 ? 9 : 1;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "dpp_param_grads", [&] {
      scalar_t* dst = out.data_ptr<scalar_t>();
      for (int64_t c = 0; c < channels; ++c)
        for (int k = 0; k < width; ++k) dst[c * width + k] = static_cast<scalar_t>(table[c * slots + first + k]);
    });
  }
}

}  // namespace poolbench_dpp
