// MLP layer epilogues. relu_bias_grad: the backward of y = relu(x W^T + b)
// up to the GEMMs, in one pass over the gradient:
//     gm = (y <= 0) ? 0 : g         (the ReLU mask, as threshold_backward)
//     db = sum over rows of gm      (fp32, fixed order: blocks of kMlpRowBlock
//                                    rows summed row by row into per-block
//                                    partials, the partials summed in order)
// so db does not depend on the thread count or the ISA level.
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace ipex_train {
constexpr int64_t kMlpRowBlock = 64;
}  // namespace ipex_train

#define IPT_MLP_KERNEL_DECLS                                                                   \
  /* rows [r0, r0 + rows) of g, y (row length n, contiguous, bf16 bits when is_bf16, else    \
     fp32): writes gm's rows and partial[0..n) = their column sums. */                         \
  void relu_mask_colsum(const void* g, const void* y, void* gm, bool is_bf16, int64_t r0,      \
                        int64_t rows, int64_t n, float* partial);

IPT_DECLARE_FOR_ALL_ISAS(IPT_MLP_KERNEL_DECLS)
