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

// Adam / AdamW. Per-tensor scalars (bias corrections depend on the tensor's
// own step count) are computed by the ops layer in double, as torch does in
// Python, and rounded to float once.
struct AdamHyper {
  float lr, beta2, eps, weight_decay;
  float one_minus_beta1, one_minus_beta2;  // rounded from double, as torch's Python scalars
  float step_size;         // lr / (1 - beta1^step)
  float bias_corr2_sqrt;   // sqrt(1 - beta2^step)
  float decay_factor;      // 1 - lr * weight_decay (decoupled / AdamW only)
  bool decoupled, amsgrad, maximize;
};

struct AdagradHyper {
  float weight_decay, eps;
  float clr;  // lr / (1 + (step - 1) * lr_decay)
  bool maximize;
};

// LAMB (You et al. 2019) with Adam's bias correction:
//   r = m_hat / (sqrt(v_hat) + eps) + weight_decay * w
//   w -= lr * trust_ratio * r,   trust_ratio = ||w|| / ||r||
// Two passes per tensor: lamb_moments_chunk updates the moments and returns the
// chunk's partial sums of w^2 and r^2 (fp64, fixed lane order: deterministic);
// lamb_apply_chunk recomputes r identically and applies the scaled update.
struct LambHyper {
  float beta2, eps, weight_decay;
  float one_minus_beta1, one_minus_beta2;
  float inv_bias_corr1, inv_bias_corr2;  // 1 / (1 - beta^step) (1 without bias correction)
  bool maximize;
};

}  // namespace ipex_train

#define IPT_OPTIM_KERNEL_DECLS                                                          \
  void sgd_chunk(const SgdHyper& h, ParamChunk p, GradChunk g, float* momentum_buf,     \
                 int64_t n);                                                            \
  void adam_chunk(const AdamHyper& h, ParamChunk p, GradChunk g, float* exp_avg,        \
                  float* exp_avg_sq, float* max_exp_avg_sq, int64_t n);                 \
  void adagrad_chunk(const AdagradHyper& h, ParamChunk p, GradChunk g, float* sum,      \
                     int64_t n);                                                        \
  void lamb_moments_chunk(const LambHyper& h, ParamChunk p, GradChunk g, float* exp_avg, \
                          float* exp_avg_sq, int64_t n, double* w_sq, double* r_sq);    \
  void lamb_apply_chunk(const LambHyper& h, ParamChunk p, const float* exp_avg,         \
                        const float* exp_avg_sq, float lr_ratio, int64_t n);

IPT_DECLARE_FOR_ALL_ISAS(IPT_OPTIM_KERNEL_DECLS)
