// LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning") with
// Adam-style bias correction, on fp32 or split-bf16 parameters.
//
// Per tensor:  m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
//              r = (m / bc1) / (sqrt(v / bc2) + eps) + weight_decay * w
// (the divisions by bc1, bc2 run as multiplications by their reciprocals)
//              w -= lr * clip(||w|| / ||r||) * r
// The norms come from fixed 16-lane fp64 partial sums per chunk (the ops layer
// adds the chunks in order), so they do not depend on threads or ISA.
#include <cmath>

#include "kernels/optim_access.h"

namespace ipex_train {
namespace IPT_ISA_NS {

namespace {
constexpr int kLanes = 16;

// The LAMB direction r for one element, from updated moments and the weight.
template <bool kWd>
inline float lamb_r(const LambHyper& h, float m, float v, float w) {
  const float r = (m * h.inv_bias_corr1) / (std::sqrt(v * h.inv_bias_corr2) + h.eps);
  return kWd ? r + h.weight_decay * w : r;
}
}  // namespace

template <bool kWd, bool kMaximize, class P, class G>
static void lamb_moments_loop(const LambHyper& h, P p, G g, float* m, float* v, int64_t n,
                              double* w_sq, double* r_sq) {
  const float b2 = h.beta2, omb1 = h.one_minus_beta1, omb2 = h.one_minus_beta2;
  double wa[kLanes] = {0}, ra[kLanes] = {0};
  // Blocks of kLanes elements: an elementwise update into small buffers, then
  // lane-wise fp64 accumulation (both loops vectorize without reassociation).
  for (int64_t i = 0; i < n; i += kLanes) {
    const int len = static_cast<int>(n - i < kLanes ? n - i : kLanes);
    float wv[kLanes] = {0}, rv[kLanes] = {0};
    for (int l = 0; l < len; ++l) {
      const int64_t k = i + l;
      const float gi = kMaximize ? -g.load(k) : g.load(k);
      const float w = p.load(k);
      const float mi = m[k] + omb1 * (gi - m[k]);
      const float vi = v[k] * b2 + omb2 * gi * gi;
      m[k] = mi;
      v[k] = vi;
      wv[l] = w;
      rv[l] = lamb_r<kWd>(h, mi, vi, w);
    }
    for (int l = 0; l < kLanes; ++l) {
      wa[l] += static_cast<double>(wv[l]) * static_cast<double>(wv[l]);
      ra[l] += static_cast<double>(rv[l]) * static_cast<double>(rv[l]);
    }
  }
  double ws = 0.0, rs = 0.0;
  for (int l = 0; l < kLanes; ++l) {
    ws += wa[l];
    rs += ra[l];
  }
  *w_sq = ws;
  *r_sq = rs;
}

void lamb_moments_chunk(const LambHyper& h, ParamChunk p, GradChunk g, float* exp_avg,
                        float* exp_avg_sq, int64_t n, double* w_sq, double* r_sq) {
  with_param_grad(p, g, [&](auto pio, auto gio) {
    with_flags(
        [&](auto wd, auto mx) {
          lamb_moments_loop<wd.value, mx.value>(h, pio, gio, exp_avg, exp_avg_sq, n, w_sq, r_sq);
        },
        h.weight_decay != 0.0f, h.maximize);
  });
}

template <bool kWd, class P>
static void lamb_apply_loop(const LambHyper& h, P p, const float* m, const float* v,
                            float lr_ratio, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float w = p.load(i);
    p.store(i, w - lr_ratio * lamb_r<kWd>(h, m[i], v[i], w));
  }
}

void lamb_apply_chunk(const LambHyper& h, ParamChunk p, const float* exp_avg,
                      const float* exp_avg_sq, float lr_ratio, int64_t n) {
  with_param(p, [&](auto pio) {
    with_flags([&](auto wd) { lamb_apply_loop<wd.value>(h, pio, exp_avg, exp_avg_sq, lr_ratio, n); },
               h.weight_decay != 0.0f);
  });
}

}  // namespace IPT_ISA_NS
}  // namespace ipex_train
