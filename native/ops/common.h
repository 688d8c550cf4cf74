// Shared helpers of the ATen wrappers: argument checks that run before any
// memory is touched; the parallel loops are in ops/parallel.h.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/optim.h"
#include "ops/parallel.h"
#include "runtime/dispatch.h"

namespace ipex_train {
namespace ops {

inline std::string arg(const char* name, size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

inline void check_dense_cpu(const at::Tensor& t, const std::string& what, const char* op) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", what, " is undefined");
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", what, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, op, ": ", what, " must be a dense (strided) tensor");
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", what,
                    " must be contiguous (a non-contiguous tensor would be updated through a copy)");
}

// Checks one parameter with its gradient and optional trail; fills the chunk
// descriptors' base pointers. `trails` empty means fp32 parameters.
struct ParamSet {
  std::vector<ParamChunk> params;
  std::vector<GradChunk> grads;
  std::vector<int64_t> numel;
};

inline ParamSet check_params(const char* op, at::TensorList params, at::TensorList grads,
                             at::TensorList trails) {
  TORCH_CHECK_VALUE(grads.size() == params.size(), op, ": got ", params.size(), " params but ",
                    grads.size(), " grads");
  const bool split = !trails.empty();
  TORCH_CHECK_VALUE(!split || trails.size() == params.size(), op, ": got ", params.size(),
                    " params but ", trails.size(), " trails");
  ParamSet s;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    check_dense_cpu(p, arg("params", i), op);
    check_dense_cpu(g, arg("grads", i), op);
    TORCH_CHECK_VALUE(g.sizes() == p.sizes(), op, ": grads[", i, "] has shape ", g.sizes(),
                      " but params[", i, "] has shape ", p.sizes());
    TORCH_CHECK_TYPE(g.scalar_type() == at::kFloat || g.scalar_type() == at::kBFloat16, op,
                     ": grads[", i, "] must be float32 or bfloat16, got ", g.scalar_type());
    ParamChunk pc{nullptr, nullptr, nullptr};
    if (split) {
      const at::Tensor& t = trails[i];
      check_dense_cpu(t, arg("trails", i), op);
      TORCH_CHECK_TYPE(p.scalar_type() == at::kBFloat16, op, ": params[", i,
                       "] must be bfloat16 when a trail is given, got ", p.scalar_type());
      TORCH_CHECK_TYPE(t.scalar_type() == at::kShort, op, ": trails[", i, "] must be int16, got ",
                       t.scalar_type());
      TORCH_CHECK_VALUE(t.sizes() == p.sizes(), op, ": trails[", i, "] has shape ", t.sizes(),
                        " but params[", i, "] has shape ", p.sizes());
      pc.top = reinterpret_cast<uint16_t*>(p.data_ptr<at::BFloat16>());
      pc.trail = reinterpret_cast<uint16_t*>(t.data_ptr<int16_t>());
    } else {
      TORCH_CHECK_TYPE(p.scalar_type() == at::kFloat, op, ": params[", i,
                       "] must be float32 (bfloat16 parameters need their int16 trail: use "
                       "ipex_train.optimize(..., dtype=torch.bfloat16)), got ", p.scalar_type());
      pc.fp32 = p.data_ptr<float>();
    }
    s.params.push_back(pc);
    s.grads.push_back(GradChunk{g.data_ptr(), g.scalar_type() == at::kBFloat16});
    s.numel.push_back(p.numel());
  }
  return s;
}

// Optimizer state tensors (fp32, same shape as the params), e.g. momentum.
inline std::vector<float*> check_state(const char* op, const char* name, at::TensorList state,
                                       at::TensorList params) {
  TORCH_CHECK_VALUE(state.size() == params.size(), op, ": got ", params.size(), " params but ",
                    state.size(), " ", name);
  std::vector<float*> out;
  for (size_t i = 0; i < state.size(); ++i) {
    check_dense_cpu(state[i], arg(name, i), op);
    TORCH_CHECK_TYPE(state[i].scalar_type() == at::kFloat, op, ": ", name, "[", i,
                     "] must be float32, got ", state[i].scalar_type());
    TORCH_CHECK_VALUE(state[i].sizes() == params[i].sizes(), op, ": ", name, "[", i,
                      "] has shape ", state[i].sizes(), " but params[", i, "] has shape ",
                      params[i].sizes());
    out.push_back(state[i].data_ptr<float>());
  }
  return out;
}

inline ParamChunk offset(ParamChunk p, int64_t off) {
  if (p.fp32) return ParamChunk{p.fp32 + off, nullptr, nullptr};
  return ParamChunk{nullptr, p.top + off, p.trail + off};
}

inline GradChunk offset(GradChunk g, int64_t off) {
  const size_t elt = g.is_bf16 ? 2 : 4;
  return GradChunk{static_cast<const char*>(g.data) + off * elt, g.is_bf16};
}

}  // namespace ops
}  // namespace ipex_train
