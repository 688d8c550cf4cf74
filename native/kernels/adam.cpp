// Adam and AdamW with torch.optim.Adam's single-tensor arithmetic (same
// operation order, fp32 throughout), on fp32 or split-bf16 parameters.
#include <cmath>

#include "kernels/optim_access.h"

namespace ipex_train {
namespace IPT_ISA_NS {

template <bool kWd, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kLerpLow, class P,
          class G>
static void adam_loop(const AdamHyper& h, P p, G g, float* m, float* v, float* vmax, int64_t n) {
  const float beta2 = h.beta2, one_minus_b1 = h.one_minus_beta1, one_minus_b2 = h.one_minus_beta2;
  const float wd = h.weight_decay, decay = h.decay_factor, eps = h.eps;
  const float bc2s = h.bias_corr2_sqrt, neg_step = -h.step_size;
  for (int64_t i = 0; i < n; ++i) {
    float gi = kMaximize ? -g.load(i) : g.load(i);
    float w = p.load(i);
    if constexpr (kWd && kDecoupled) w = w * decay;
    if constexpr (kWd && !kDecoupled) gi = gi + wd * w;
    // exp_avg.lerp_(grad, 1 - beta1): torch's lerp picks the form by weight.
    const float mi = kLerpLow ? m[i] + one_minus_b1 * (gi - m[i])
                              : gi - (gi - m[i]) * (1.0f - one_minus_b1);
    const float vi = v[i] * beta2 + one_minus_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float vs = vi;
    if constexpr (kAmsgrad) {
      const float old = vmax[i];  // torch.maximum: NaN if either is NaN
      vs = (old > vi || std::isnan(old)) ? old : vi;
      vmax[i] = vs;
    }
    const float denom = std::sqrt(vs) / bc2s + eps;
    p.store(i, w + neg_step * mi / denom);  // addcdiv: value * t1 / t2
  }
}

void adam_chunk(const AdamHyper& h, ParamChunk p, GradChunk g, float* exp_avg, float* exp_avg_sq,
                float* max_exp_avg_sq, int64_t n) {
  const bool lerp_low = h.one_minus_beta1 < 0.5f;
  with_param_grad(p, g, [&](auto pio, auto gio) {
    with_flags(
        [&](auto wd, auto dec, auto ams, auto mx, auto low) {
          adam_loop<wd.value, dec.value, ams.value, mx.value, low.value>(
              h, pio, gio, exp_avg, exp_avg_sq, max_exp_avg_sq, n);
        },
        h.weight_decay != 0.0f, h.decoupled, h.amsgrad, h.maximize, lerp_low);
  });
}

}  // namespace IPT_ISA_NS
}  // namespace ipex_train
