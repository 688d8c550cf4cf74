// Dense optimizer kernels: one call updates n contiguous elements of one
// parameter (the ops layer splits a group of tensors into chunks and runs the
// chunks in parallel). Elementwise, so results do not depend on chunking or on
// the thread count.
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace ipex_train {

// A parameter chunk in one of two storages:
//   fp32  : fp32 != nullptr
//   split : top (bf16 bits) and trail (low 16 bits) != nullptr; the fp32 master
//           value is join(top, trail) - see kernels/bf16.h.
struct ParamChunk {
  float* fp32;
  uint16_t* top;
  uint16_t* trail;
};

// A gradient chunk: fp32 or bf16 (bits), read only.
struct GradChunk {
  const void* data;
  bool is_bf16;
};

struct SgdHyper {
  float lr, weight_decay, momentum, dampening;
  bool nesterov, maximize;
  bool first_step;  // momentum buffer is initialised to the gradient
};

}  // namespace ipex_train

#define IPT_OPTIM_KERNEL_DECLS                                                    \
  void sgd_chunk(const SgdHyper& h, ParamChunk p, GradChunk g, float* momentum_buf, \
                 int64_t n);

IPT_DECLARE_FOR_ALL_ISAS(IPT_OPTIM_KERNEL_DECLS)
