// ATen wrappers of the DCNv2 cross-layer epilogue kernels (kernels/cross.h):
//   cross_forward_(y!, c, x0, xl) -> out        (y becomes z = y + c)
//   cross_backward_(g, x0, z, acc!, accumulate, add_g) -> (gz, gc)
// Autograd is the cross network's own Function (ipex_train/nn/functional.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "kernels/cross.h"
#include "runtime/dispatch.h"

namespace ipex_train {
namespace ops {
namespace {

// Rows per forward work item (a row is n elements of 3 reads and 2 writes).
constexpr int64_t kForwardGrain = 16;

void check(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK_VALUE(t.defined() && t.device().is_cpu() && t.layout() == at::kStrided, op, ": ",
                    name, " must be a dense CPU tensor");
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must have ", dim, " dimension(s), got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, op, ": ",
                   name, " must be float32 or bfloat16, got ", t.scalar_type());
}

// Checks the [rows, n] operands (and c [n] when given): one dtype, one shape;
// `written` ones must be contiguous (they are updated in place).
using Named = std::pair<const at::Tensor*, const char*>;

void check_all(const char* op, std::initializer_list<Named> mats,
               std::initializer_list<const at::Tensor*> written, const at::Tensor* c) {
  const at::Tensor& first = *mats.begin()->first;
  for (auto [t, name] : mats) {
    check(op, name, *t, 2);
    TORCH_CHECK_TYPE(t->scalar_type() == first.scalar_type(), op, ": ", mats.begin()->second,
                     " and ", name, " must have one dtype, got ", first.scalar_type(), " and ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->sizes() == first.sizes(), op, ": ", name, " has shape ", t->sizes(),
                      " but ", mats.begin()->second, " has shape ", first.sizes());
  }
  for (const at::Tensor* t : written)
    TORCH_CHECK_VALUE(t->is_contiguous(), op, ": the tensors written in place must be contiguous");
  if (c) {
    check(op, "c", *c, 1);
    TORCH_CHECK_TYPE(c->scalar_type() == first.scalar_type(), op, ": c must have dtype ",
                     first.scalar_type(), ", got ", c->scalar_type());
    TORCH_CHECK_VALUE(c->size(0) == first.size(1), op, ": c must have shape [", first.size(1),
                      "], got ", c->sizes());
  }
}

at::Tensor cross_forward_(at::Tensor& y, const at::Tensor& c_in, const at::Tensor& x0_in,
                          const at::Tensor& xl_in) {
  check_all("ipex_train.cross_forward_", {{&y, "y"}, {&x0_in, "x0"}, {&xl_in, "xl"}}, {&y}, &c_in);
  const at::Tensor c = c_in.contiguous(), x0 = x0_in.contiguous(), xl = xl_in.contiguous();
  const int64_t rows = y.size(0), n = y.size(1);
  at::Tensor out = at::empty({rows, n}, y.options().memory_format(at::MemoryFormat::Contiguous));
  void* yp = y.data_ptr();
  const void* cp = c.data_ptr();
  const void* ap = x0.data_ptr();
  const void* xp = xl.data_ptr();
  void* op = out.data_ptr();
  const bool bf16 = y.scalar_type() == at::kBFloat16;
  at::parallel_for(0, rows, kForwardGrain, [&](int64_t b, int64_t e) {
    IPT_DISPATCH(cross_forward_rows, yp, cp, ap, xp, op, bf16, b, e, n);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> cross_backward_(const at::Tensor& g_in, const at::Tensor& x0_in,
                                                   const at::Tensor& z_in, at::Tensor& acc,
                                                   bool accumulate, bool add_g) {
  check_all("ipex_train.cross_backward_",
            {{&g_in, "g"}, {&x0_in, "x0"}, {&z_in, "z"}, {&acc, "acc"}}, {&acc}, nullptr);
  const at::Tensor g = g_in.contiguous(), x0 = x0_in.contiguous(), z = z_in.contiguous();
  const int64_t rows = g.size(0), n = g.size(1);
  const int64_t blocks = (rows + kCrossRowBlock - 1) / kCrossRowBlock;
  at::Tensor gz = at::empty({rows, n}, g.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor partial = at::empty({blocks, n}, g.options().dtype(at::kFloat));
  const void* gp = g.data_ptr();
  const void* ap = x0.data_ptr();
  const void* zp = z.data_ptr();
  void* cp = acc.data_ptr();
  void* qp = gz.data_ptr();
  float* pp = partial.data_ptr<float>();
  const bool bf16 = g.scalar_type() == at::kBFloat16;
  at::parallel_for(0, blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t r0 = k * kCrossRowBlock;
      IPT_DISPATCH(cross_backward_rows, gp, ap, zp, cp, qp, bf16, accumulate, add_g, r0,
                   std::min(r0 + kCrossRowBlock, rows), n, pp + k * n);
    }
  });
  at::Tensor gc = at::zeros({n}, g.options().dtype(at::kFloat));
  float* d = gc.data_ptr<float>();
  for (int64_t k = 0; k < blocks; ++k)  // partials in block order: thread-count independent
    for (int64_t j = 0; j < n; ++j) d[j] = d[j] + pp[k * n + j];
  return {gz, bf16 ? gc.to(at::kBFloat16) : gc};
}

}  // namespace
}  // namespace ops
}  // namespace ipex_train

TORCH_LIBRARY_FRAGMENT(ipex_train, m) {
  m.def("cross_forward_(Tensor(a!) y, Tensor c, Tensor x0, Tensor xl) -> Tensor");
  m.def("cross_backward_(Tensor g, Tensor x0, Tensor z, Tensor(a!) acc, bool accumulate, "
        "bool add_g) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ipex_train, CPU, m) {
  m.impl("cross_forward_", &ipex_train::ops::cross_forward_);
  m.impl("cross_backward_", &ipex_train::ops::cross_backward_);
}
