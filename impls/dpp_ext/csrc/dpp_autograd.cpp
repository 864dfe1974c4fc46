// Autograd of poolbench_dpp::dpp_forward, in C++ (as torchvision's ops): an inference call
// or a train step's forward never enters Python below the module.
//
// Only the inputs are saved (backward recomputes the weights).  Backward runs the fused
// dpp_backward op; when it runs with grad mode on (create_graph=True: gradient penalties,
// gradgradcheck) and something it reads requires grad, it runs dpp_backward_differentiable
// instead, the same gradients in differentiable ops, so second derivatives are exact.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace poolbench_dpp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                              const std::optional<at::Tensor>&, int64_t, int64_t, int64_t, bool, double, bool, bool);
using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, int64_t, int64_t, int64_t, bool, double, bool, bool);

const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("poolbench_dpp::dpp_forward", "").typed<ForwardSig>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSig>& backward_op(bool differentiable) {
  static const auto fused =
      c10::Dispatcher::singleton().findSchemaOrThrow("poolbench_dpp::dpp_backward", "").typed<BackwardSig>();
  static const auto formula = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("poolbench_dpp::dpp_backward_differentiable", "")
                                  .typed<BackwardSig>();
  return differentiable ? formula : fused;
}

std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class DppFunction : public torch::autograd::Function<DppFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& lam,
                            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                            int64_t kernel_size, int64_t stride, int64_t padding, bool asym, double eps2,
                            bool scale_invariant, bool log_params) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = forward_op().call(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2,
                                     scale_invariant, log_params);
    ctx->save_for_backward({x, alpha, lam, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    // The settings in two entries (each saved_data entry is a hash-map insertion per call).
    ctx->saved_data["window"] = c10::List<int64_t>({kernel_size, stride, padding, int64_t(asym),
                                                    int64_t(scale_invariant), int64_t(log_params)});
    ctx->saved_data["eps2"] = eps2;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad = grads[0];
    variable_list out(12);
    if (!grad.defined()) return out;
    bool differentiable = false;
    if (at::GradMode::is_enabled()) {
      differentiable = grad.requires_grad();
      for (const at::Tensor& t : saved) differentiable = differentiable || (t.defined() && t.requires_grad());
    }
    const bool full = saved[3].defined();
    const c10::List<int64_t> w = ctx->saved_data["window"].toIntList();
    auto [gx, ga, gl, gw, gb] = backward_op(differentiable)
                                    .call(grad, saved[0], saved[1], saved[2], optional_of(saved[3]),
                                          optional_of(saved[4]), w.get(0), w.get(1), w.get(2), w.get(3) != 0,
                                          ctx->saved_data["eps2"].toDouble(), w.get(4) != 0, w.get(5) != 0);
    out[0] = gx;
    out[1] = ga;
    out[2] = gl;
    if (full) {
      out[3] = gw;
      out[4] = gb;
    }
    return out;
  }
};

at::Tensor dpp_forward_autograd(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& lam,
                                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                int64_t kernel_size, int64_t stride, int64_t padding, bool asym, double eps2,
                                bool scale_invariant, bool log_params) {
  // Nothing to record (inference, or no input requires grad): straight to the kernel, no graph node.
  const bool record = at::GradMode::is_enabled() &&
                      (x.requires_grad() || alpha.requires_grad() || lam.requires_grad() ||
                       (weight.has_value() && weight->requires_grad()) || (bias.has_value() && bias->requires_grad()));
  if (!record) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_op().call(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant,
                             log_params);
  }
  return DppFunction::apply(x, alpha, lam, weight, bias, kernel_size, stride, padding, asym, eps2, scale_invariant,
                            log_params);
}

}  // namespace
}  // namespace poolbench_dpp

TORCH_LIBRARY_IMPL(poolbench_dpp, Autograd, m) {
  m.impl("dpp_forward", &poolbench_dpp::dpp_forward_autograd);
}
