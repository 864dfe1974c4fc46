// The CUDA op entry points (checks, allocation, dtype dispatch) and their dispatch-key
// registration.  The typed launchers are instantiated in dpp_{forward,backward}_{f32,f16}.cu
// (declared extern here), except when one translation unit builds everything: the CPU
// emulation of the tests (POOLBENCH_DPP_EMULATE) and the static report (POOLBENCH_DPP_ALL_IN_ONE).
#include "dpp_kernel.cuh"

namespace poolbench_dpp {

#if !defined(POOLBENCH_DPP_EMULATE) && !defined(POOLBENCH_DPP_ALL_IN_ONE)
extern template void forward_typed<float>(const ForwardCall&);
extern template void forward_typed<double>(const ForwardCall&);
extern template void forward_typed<at::Half>(const ForwardCall&);
extern template void forward_typed<at::BFloat16>(const ForwardCall&);
extern template void backward_typed<float>(const BackwardCall&);
extern template void backward_typed<double>(const BackwardCall&);
extern template void backward_typed<at::Half>(const BackwardCall&);
extern template void backward_typed<at::BFloat16>(const BackwardCall&);
#endif

namespace {

at::Tensor dpp_forward_cuda(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& lam,
                            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                            int64_t kernel_size, int64_t stride, int64_t padding, bool asym, double eps2,
                            bool scale_invariant, bool log_params) {
  TORCH_CHECK(DPP_IS_DEVICE_TENSOR(x_in), "dpp_forward (CUDA kernel): input must be a CUDA tensor");
  DPP_DEVICE_GUARD(x_in);
  const at::Tensor x = x_in.contiguous();
  const Geometry g = make_geometry(x, kernel_size, stride, padding, weight.has_value());
  check_kernel_size(g);
  const ChannelParams cp = make_channel_params(x, alpha, lam, weight, bias, log_params);
  const int64_t batch = x.size(0), channels = x.size(1);
  at::Tensor y = at::empty({batch, channels, g.out_height, g.out_width}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  // One launch: every window (interior and border) of every plane, one thread each.
  const bool small = total < std::numeric_limits<int32_t>::max() && x.numel() < std::numeric_limits<int32_t>::max();
  OutputIndex ix;
  ix.width = FastDivmod(static_cast<uint32_t>(small ? g.out_width : 1));
  ix.height = FastDivmod(static_cast<uint32_t>(small ? g.out_height : 1));
  ix.channels = FastDivmod(static_cast<uint32_t>(channels));
  DPP_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpp_forward_cuda", [&] {
    forward_typed<scalar_t>(ForwardCall{x, y, g, cp, eps2, asym, scale_invariant, ix, small, total});
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dpp_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& lam,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, int64_t kernel_size, int64_t stride,
    int64_t padding, bool asym, double eps2, bool scale_invariant, bool log_params) {
  TORCH_CHECK(DPP_IS_DEVICE_TENSOR(x_in) && DPP_IS_DEVICE_TENSOR(grad_in),
              "dpp_backward (CUDA kernel): tensors must be CUDA tensors");
  DPP_DEVICE_GUARD(x_in);
  const at::Tensor x = x_in.contiguous();
  const Geometry g = make_geometry(x, kernel_size, stride, padding, weight.has_value());
  check_kernel_size(g);
  const at::Tensor grad = upstream_grad(grad_in, x, g);
  const ChannelParams cp = make_channel_params(x, alpha, lam, weight, bias, log_params);
  const int64_t batch = x.size(0), channels = x.size(1);
  const int slots = channel_grad_slots(g.full);
  const bool disjoint = g.stride >= g.kernel_size;
  // Disjoint windows write their taps; pixels in no window (gaps, cut-off rows) stay zero.
  const bool covered = g.stride == g.kernel_size &&
                       (g.out_height - 1) * g.stride - g.padding + g.kernel_size >= g.height &&
                       (g.out_width - 1) * g.stride - g.padding + g.kernel_size >= g.width;
  at::Tensor grad_x = (disjoint && covered) ? at::empty_like(x) : at::zeros_like(x);
  ParamGrads result = empty_param_grads(alpha, lam, weight, bias);
  const int64_t per_channel = batch * g.out_height * g.out_width;
  if (per_channel == 0 || x.numel() == 0) {
    for (at::Tensor* t : {&result.alpha, &result.lam, &result.weight, &result.bias}) t->zero_();
    return {grad_x, result.alpha, result.lam, result.weight, result.bias};
  }
  // The reduction writes the outputs' dtype directly; mixed parameter dtypes go through float64 copies.
  const bool mixed = common_param_dtype(result, g.full) == at::ScalarType::Undefined;
  ParamGrads reduced = result;
  if (mixed) {
    const auto f64 = [](const at::Tensor& t) { return at::empty(t.sizes(), t.options().dtype(at::kDouble)); };
    reduced = {f64(result.alpha), f64(result.lam), f64(result.weight), f64(result.bias)};
  }
  TORCH_CHECK(channels <= 65535, "dpp_backward (CUDA kernel): at most 65535 channels, got ", channels);
  const bool small = x.numel() < std::numeric_limits<int32_t>::max();  // 32-bit index arithmetic suffices
  const int64_t reduce_blocks = std::min<int64_t>(blocks_for(per_channel), kMaxReduceBlocks);
  DPP_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpp_backward_cuda", [&] {
    backward_typed<scalar_t>(BackwardCall{grad, x, grad_x, reduced, g, cp, eps2, asym, scale_invariant, disjoint, small,
                                          reduce_blocks});
  });
  if (mixed) {
    result.alpha.copy_(reduced.alpha);
    result.lam.copy_(reduced.lam);
    if (g.full) {
      result.weight.copy_(reduced.weight);
      result.bias.copy_(reduced.bias);
    }
  }
  return {grad_x, result.alpha, result.lam, result.weight, result.bias};
}

}  // namespace
}  // namespace poolbench_dpp

#ifndef POOLBENCH_DPP_EMULATE
TORCH_LIBRARY_IMPL(poolbench_dpp, CUDA, m) {
  m.impl("dpp_forward", &poolbench_dpp::dpp_forward_cuda);
  m.impl("dpp_backward", &poolbench_dpp::dpp_backward_cuda);
}
#endif
