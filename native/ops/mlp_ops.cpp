// ATen wrapper of the MLP epilogue kernels (kernels/mlp.h):
//   relu_bias_grad(grad [B, N], out [B, N]) -> (grad masked by out > 0, bias grad [N])
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "kernels/mlp.h"
#include "runtime/dispatch.h"

namespace ipex_train {
namespace ops {
namespace {

std::tuple<at::Tensor, at::Tensor> relu_bias_grad(const at::Tensor& grad_in, const at::Tensor& out_in) {
  const char* op = "ipex_train.relu_bias_grad";
  for (auto [t, name] : {std::pair<const at::Tensor&, const char*>{grad_in, "grad"}, {out_in, "out"}}) {
    TORCH_CHECK_VALUE(t.defined() && t.device().is_cpu() && t.layout() == at::kStrided, op, ": ",
                      name, " must be a dense CPU tensor");
    TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must have 2 dimensions, got shape ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, op, ": ",
                     name, " must be float32 or bfloat16, got ", t.scalar_type());
  }
  TORCH_CHECK_TYPE(grad_in.scalar_type() == out_in.scalar_type(), op,
                   ": grad and out must have one dtype, got ", grad_in.scalar_type(), " and ",
                   out_in.scalar_type());
  TORCH_CHECK_VALUE(grad_in.sizes() == out_in.sizes(), op, ": grad has shape ", grad_in.sizes(),
                    " but out has shape ", out_in.sizes());
  const at::Tensor g = grad_in.contiguous(), y = out_in.contiguous();
  const int64_t rows = g.size(0), n = g.size(1);
  const int64_t blocks = (rows + kMlpRowBlock - 1) / kMlpRowBlock;
  at::Tensor gm = at::empty_like(g, at::MemoryFormat::Contiguous);
  at::Tensor partial = at::empty({blocks, n}, g.options().dtype(at::kFloat));
  const void* gp = g.data_ptr();
  const void* yp = y.data_ptr();
  void* mp = gm.data_ptr();
  float* pp = partial.data_ptr<float>();
  const bool bf16 = g.scalar_type() == at::kBFloat16;
  at::parallel_for(0, blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t r0 = k * kMlpRowBlock;
      IPT_DISPATCH(relu_mask_colsum, gp, yp, mp, bf16, r0, std::min(kMlpRowBlock, rows - r0), n,
                   pp + k * n);
    }
  });
  at::Tensor db = at::zeros({n}, g.options().dtype(at::kFloat));
  float* d = db.data_ptr<float>();
  for (int64_t k = 0; k < blocks; ++k)  // partials in block order: thread-count independent
    for (int64_t j = 0; j < n; ++j) d[j] = d[j] + pp[k * n + j];
  return {gm, bf16 ? db.to(at::kBFloat16) : db};
}

}  // namespace
}  // namespace ops
}  // namespace ipex_train

TORCH_LIBRARY_FRAGMENT(ipex_train, m) {
  m.def("relu_bias_grad(Tensor grad, Tensor out) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ipex_train, CPU, m) {
  m.impl("relu_bias_grad", &ipex_train::ops::relu_bias_grad);
}
