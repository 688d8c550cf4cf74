// DCNv2 cross-layer epilogues, x_{l+1} = x0 * (y + c) + x_l with y = U (V x_l)
// from the GEMMs; every tensor [rows, n] contiguous (c: [n]), all fp32 or all
// bf16 (bits), math in fp32, rounded to the dtype where plain PyTorch rounds:
//   forward:  z = y + c (written over y), out = x_l + x0 * z   (as torch.addcmul:
//             one rounding of the fp32 x_l + (x0 * z))
//   backward: gz = g * x0; partial[j] = sum of gz over the rows (fp32, row by
//             row: blocks of kCrossRowBlock rows, block partials summed in order
//             by the caller, so the bias grad is thread-count independent);
//             t = g * z; acc = (accumulate ? acc + t : t) (+ g if add_g),
//             each product and sum rounded to the dtype, as separate torch ops do.
// Built with -ffp-contract=off: no fma, the same bits on every ISA level.
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace ipex_train {
constexpr int64_t kCrossRowBlock = 64;
}  // namespace ipex_train

#define IPT_CROSS_KERNEL_DECLS                                                                  \
  /* rows [r0, r1): y (in place -> z), c, x0, xl -> out */                                      \
  void cross_forward_rows(void* y, const void* c, const void* x0, const void* xl, void* out,    \
                          bool is_bf16, int64_t r0, int64_t r1, int64_t n);                     \
  /* rows [r0, r1) (one block): gz, acc, partial[0..n) */                                       \
  void cross_backward_rows(const void* g, const void* x0, const void* z, void* acc, void* gz,   \
                           bool is_bf16, bool accumulate, bool add_g, int64_t r0, int64_t r1,   \
                           int64_t n, float* partial);

IPT_DECLARE_FOR_ALL_ISAS(IPT_CROSS_KERNEL_DECLS)
