// ATen wrappers of the dense optimizer kernels: validate every tensor of the
// group first, then run one multi-tensor parallel loop.
#include <torch/library.h>

#include "ops/common.h"

namespace ipex_train {
namespace ops {
namespace {

void sgd_step_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
               at::TensorList trails, double lr, double weight_decay, double momentum,
               double dampening, bool nesterov, bool maximize, bool first_step) {
  const char* op = "ipex_train.sgd_step_";
  ParamSet s = check_params(op, params, grads, trails);
  std::vector<float*> bufs;
  if (momentum != 0.0) bufs = check_state(op, "momentum_buffers", momentum_buffers, params);
  else TORCH_CHECK_VALUE(momentum_buffers.empty(), op, ": momentum_buffers given with momentum=0");
  const SgdHyper h{static_cast<float>(lr), static_cast<float>(weight_decay),
                   static_cast<float>(momentum), static_cast<float>(dampening), nesterov, maximize,
                   first_step};
  for_each_chunk(s.numel, [&](size_t t, int64_t b, int64_t n) {
    IPT_DISPATCH(sgd_chunk, h, offset(s.params[t], b), offset(s.grads[t], b),
                 bufs.empty() ? nullptr : bufs[t] + b, n);
  });
}

}  // namespace
}  // namespace ops
}  // namespace ipex_train

TORCH_LIBRARY_FRAGMENT(ipex_train, m) {
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "Tensor(c!)[] trails, float lr, float weight_decay, float momentum, float dampening, "
      "bool nesterov, bool maximize, bool first_step) -> ()");
}

TORCH_LIBRARY_IMPL(ipex_train, CPU, m) { m.impl("sgd_step_", &ipex_train::ops::sgd_step_); }
