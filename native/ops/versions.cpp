// Autograd version counters of the tensors the ops write: like torch's own
// in-place ops, every op here that writes a tensor (an `(a!)` argument in its
// schema) bumps that tensor's version once the op has run, so autograd
// refuses a backward through a saved value that an optimizer step changed.
// One boxed ADInplaceOrView kernel reads the written arguments from the schema.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

namespace {

void add_tensors(const c10::IValue& v, std::vector<at::Tensor>& out) {
  if (v.isTensor()) {
    out.push_back(v.toTensor());
  } else if (v.isList()) {
    for (const c10::IValue& e : v.toListRef())
      if (e.isTensor()) out.push_back(e.toTensor());
  }
}

void bump_written(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t base = stack->size() - args.size();
  std::vector<at::Tensor> written;
  for (size_t i = 0; i < args.size(); ++i)
    if (args[i].alias_info() && args[i].alias_info()->isWrite())
      add_tensors((*stack)[base + i], written);
  op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
  for (const at::Tensor& t : written)
    if (t.defined()) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

// Every op with a written argument (tests/optim/test_versions.py checks the list is complete).
TORCH_LIBRARY_IMPL(ipex_train, ADInplaceOrView, m) {
  for (const char* name : {"sgd_step_", "adam_step_", "adagrad_step_", "lamb_step_", "sparse_add_",
                           "sparse_row_update_", "embedding_bags_backward_update_",
                           "cross_forward_", "cross_backward_"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&bump_written>());
}
