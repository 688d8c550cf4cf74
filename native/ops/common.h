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
