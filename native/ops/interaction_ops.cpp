// ATen wrappers of the DLRM interaction kernels (kernels/interaction.h):
//   interaction(dense [B, D], emb [B, F, D]) -> [B, D + F(F+1)/2]
//   interaction_backward(grad_out, dense, emb) -> (grad_dense, grad_emb)
// plus an AutocastCPU kernel that runs the op in the autocast dtype. Autograd
// is registered from Python (ipex_train/ops.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>

#include "kernels/interaction.h"
#include "runtime/dispatch.h"

namespace ipex_train {
namespace ops {
namespace {

// Samples per parallel work item: one sample is ~F^2 D / 2 multiply-adds.
constexpr int64_t kGrain = 8;

void check_input(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got device ",
                    t.device());
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, op, ": ", name, " must be a dense (strided) tensor");
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, op, ": ",
                   name, " must be float32 or bfloat16, got ", t.scalar_type());
}

// Validates dense/emb; returns them with a contiguous last dimension (a copy
// only when it is not) and fills the kernel's view of them.
std::tuple<at::Tensor, at::Tensor> prepare(const char* op, const at::Tensor& dense_in,
                                           const at::Tensor& emb_in, InteractionInputs* in) {
  check_input(op, "dense", dense_in, 2);
  check_input(op, "emb", emb_in, 3);
  TORCH_CHECK_TYPE(dense_in.scalar_type() == emb_in.scalar_type(), op,
                   ": dense and emb must have one dtype, got ", dense_in.scalar_type(), " and ",
                   emb_in.scalar_type(), " (under torch.autocast the op casts both)");
  TORCH_CHECK_VALUE(emb_in.size(0) == dense_in.size(0) && emb_in.size(2) == dense_in.size(1), op,
                    ": emb must have shape [B, F, D] for dense of shape [B, D] = ",
                    dense_in.sizes(), ", got ", emb_in.sizes());
  at::Tensor dense = dense_in.size(1) > 1 && dense_in.stride(1) != 1 ? dense_in.contiguous() : dense_in;
  at::Tensor emb = emb_in.size(2) > 1 && emb_in.stride(2) != 1 ? emb_in.contiguous() : emb_in;
  in->dense = dense.data_ptr();
  in->dense_stride = dense.stride(0);
  in->emb = emb.data_ptr();
  in->emb_stride_b = emb.stride(0);
  in->emb_stride_f = emb.stride(1);
  in->is_bf16 = dense.scalar_type() == at::kBFloat16;
  in->num_emb = emb.size(1);
  in->dim = dense.size(1);
  return {dense, emb};
}

at::Tensor interaction(const at::Tensor& dense_in, const at::Tensor& emb_in) {
  InteractionInputs in;
  auto [dense, emb] = prepare("ipex_train.interaction", dense_in, emb_in, &in);
  const int64_t n = in.num_emb + 1, batch = dense.size(0);
  at::Tensor out = at::empty({batch, in.dim + n * (n - 1) / 2}, dense.options());
  void* o = out.data_ptr();
  at::parallel_for(0, batch, kGrain, [&](int64_t b, int64_t e) {
    IPT_DISPATCH(interaction_forward_rows, in, o, b, e);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> interaction_backward(const at::Tensor& grad_in,
                                                        const at::Tensor& dense_in,
                                                        const at::Tensor& emb_in) {
  const char* op = "ipex_train.interaction_backward";
  InteractionInputs in;
  auto [dense, emb] = prepare(op, dense_in, emb_in, &in);
  check_input(op, "grad_out", grad_in, 2);
  const int64_t n = in.num_emb + 1, batch = dense.size(0);
  TORCH_CHECK_VALUE(grad_in.size(0) == batch && grad_in.size(1) == in.dim + n * (n - 1) / 2, op,
                    ": grad_out must have shape [", batch, ", ", in.dim + n * (n - 1) / 2,
                    "], got ", grad_in.sizes());
  const at::Tensor grad = grad_in.contiguous();
  at::Tensor grad_dense = at::empty({batch, in.dim}, dense.options());
  at::Tensor grad_emb = at::empty({batch, in.num_emb, in.dim}, dense.options());
  const void* g = grad.data_ptr();
  const bool g_bf16 = grad.scalar_type() == at::kBFloat16;
  void* gd = grad_dense.data_ptr();
  void* ge = grad_emb.data_ptr();
  at::parallel_for(0, batch, kGrain, [&](int64_t b, int64_t e) {
    IPT_DISPATCH(interaction_backward_rows, in, g, g_bf16, gd, ge, b, e);
  });
  return {grad_dense, grad_emb};
}

// Under torch.autocast("cpu"): both inputs in the autocast dtype (bf16; any
// other autocast dtype runs the op in fp32), like a matmul.
at::Tensor interaction_autocast(const at::Tensor& dense, const at::Tensor& emb) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const at::ScalarType want = at::autocast::get_autocast_dtype(at::kCPU) == at::kBFloat16
                                  ? at::kBFloat16 : at::kFloat;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ipex_train::interaction", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(at::autocast::cached_cast(want, dense, c10::DeviceType::CPU),
                 at::autocast::cached_cast(want, emb, c10::DeviceType::CPU));
}

}  // namespace
}  // namespace ops
}  // namespace ipex_train

TORCH_LIBRARY_FRAGMENT(ipex_train, m) {
  m.def("interaction(Tensor dense, Tensor emb) -> Tensor");
  m.def("interaction_backward(Tensor grad_out, Tensor dense, Tensor emb) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ipex_train, CPU, m) {
  m.impl("interaction", &ipex_train::ops::interaction);
  m.impl("interaction_backward", &ipex_train::ops::interaction_backward);
}

TORCH_LIBRARY_IMPL(ipex_train, AutocastCPU, m) {
  m.impl("interaction", &ipex_train::ops::interaction_autocast);
}
