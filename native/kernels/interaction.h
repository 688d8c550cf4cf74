// DLRM feature interaction: for each sample, the rows t_0 = dense and
// t_1..t_F = the pooled embeddings (all of width D) give
//
//     out = [ dense | z_10 z_20 z_21 z_30 z_31 z_32 ... z_{F,F-1} ]
//            D       F(F+1)/2 pair dots, strict lower triangle, row-major
//
// with z_ij = <t_i, t_j>, i > j. Arithmetic is fp32 (bf16 inputs are widened
// exactly); every reduction runs in a fixed order per sample, so results do
// not depend on the thread split or the ISA level:
//   dot <a, b> over D: 16 lane sums s_l = sum_c a[16c+l] * b[16c+l]
//       (c ascending, the tail read as zeros), then a halving tree
//       s_l += s_{l+8}, s_l += s_{l+4}, s_l += s_{l+2}, s_0 + s_1.
//   grad t_i = sum_{j != i, j ascending} g_ij * t_j (from 0: 0 + first term), then (i = 0 only)
//       + the gradient of the dense copy.
// Each product is rounded before its add (kernels build with
// -ffp-contract=off); tests/nn/test_interaction.py replays this order in
// plain PyTorch and compares bitwise.
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace ipex_train {

// Strides are in elements; the last dimension of every tensor is contiguous.
// `is_bf16` flags say whether a tensor holds bf16 bits (else fp32).
struct InteractionInputs {
  const void* dense;      // [B, D]
  int64_t dense_stride;   // between samples
  const void* emb;        // [B, F, D]
  int64_t emb_stride_b, emb_stride_f;
  bool is_bf16;           // dense and emb share one dtype
  int64_t num_emb, dim;   // F, D
};

}  // namespace ipex_train

#define IPT_INTERACTION_KERNEL_DECLS                                                          \
  /* out [B, D + F(F+1)/2] (contiguous, input dtype): samples [begin, end). */               \
  void interaction_forward_rows(const InteractionInputs& in, void* out, int64_t begin,        \
                                int64_t end);                                                 \
  /* grad_out [B, D + F(F+1)/2] contiguous (fp32 or bf16 per grad_is_bf16); grad_dense      \
     [B, D] and grad_emb [B, F, D] contiguous, in the inputs' dtype. */                       \
  void interaction_backward_rows(const InteractionInputs& in, const void* grad_out,           \
                                 bool grad_is_bf16, void* grad_dense, void* grad_emb,         \
                                 int64_t begin, int64_t end);

IPT_DECLARE_FOR_ALL_ISAS(IPT_INTERACTION_KERNEL_DECLS)
