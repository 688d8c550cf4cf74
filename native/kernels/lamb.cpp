// LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning") with
// Adam-style bias correction, on fp32 or split-bf16 parameters.
//
// Per tensor:  m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
//              r = (m / bc1) / (sqrt(v / bc2) + eps) + weight_decay * w
// (the divisions by bc1, bc2 run as multiplications by their reciprocals)
//              w -= lr * clip(||w|| / ||r||) * r
// The norms come from fixed 16-lane partial sums per chunk (fp32 over 16
// blocks, then fp64; the ops layer adds the chunks in order), so they do not
// depend on threads or ISA.
#include <cmath>

#include "kernels/optim_access.h"

namespace ipex_train {
namespace IPT_ISA_NS {

namespace {
constexpr int kLanes = 16;

// The LAMB direction r for one element, from updated moments and the weight.
// The loops below pass a local copy of the hyperparameters: read through the
// caller's reference, every store to the param or moments could alias them,
// so GCC reloaded them per element and left the loops scalar (LAMB ran ~3x
// slower than Adam on the same bytes).
template <bool kWd>
inline float lamb_r(const LambHyper& h, float m, float v, float w) {
  const float r = (m * h.inv_bias_corr1) / (std::sqrt(v * h.inv_bias_corr2) + h.eps);
  return kWd ? r + h.weight_decay * w : r;
}
}  // namespace

// One block of up to kLanes elements starting at i: updates the moments and
// adds w^2 and r^2 to the fp32 lane sums wa/ra (lanes past len untouched).
// kLen > 0 fixes the length at compile time, so full blocks compile to
// straight vector code (a run-time trip count made GCC emit scalar code).
template <int kLen, bool kWd, bool kMaximize, class P, class G>
inline void lamb_block(const LambHyper& h, P p, G g, float* m, float* v, int64_t i, int len,
                       float* wa, float* ra) {  // h: a local copy (see lamb_r)
  const float b2 = h.beta2, omb1 = h.one_minus_beta1, omb2 = h.one_minus_beta2;
  const int n = kLen > 0 ? kLen : len;
  for (int l = 0; l < n; ++l) {
    const int64_t k = i + l;
    const float gi = kMaximize ? -g.load(k) : g.load(k);
    const float w = p.load(k);
    const float mi = m[k] + omb1 * (gi - m[k]);
    const float vi = v[k] * b2 + omb2 * gi * gi;
    m[k] = mi;
    v[k] = vi;
    const float r = lamb_r<kWd>(h, mi, vi, w);
    wa[l] += w * w;  // lane l of the fp32 sums of squares
    ra[l] += r * r;
  }
}

// Moves the fp32 lane sums into the fp64 ones and clears them.
inline void flush_squares(double* wd, double* rd, float* wa, float* ra) {
  for (int l = 0; l < kLanes; ++l) {
    wd[l] += static_cast<double>(wa[l]);
    rd[l] += static_cast<double>(ra[l]);
    wa[l] = 0.0f;
    ra[l] = 0.0f;
  }
}

template <bool kWd, bool kMaximize, class P, class G>
static void lamb_moments_loop(const LambHyper& hyper, P p, G g, float* m, float* v, int64_t n,
                              double* w_sq, double* r_sq) {
  const LambHyper h = hyper;
  // Blocks of kLanes elements, each element's squares added to its lane (a
  // lane-wise loop: it vectorizes without reassociation). Each lane sums
  // kFlush blocks in fp32, then adds that into fp64: a fixed order
  // (deterministic), and fp32 sums of only kFlush terms stay accurate.
  constexpr int kFlush = 16;
  double wd[kLanes] = {0}, rd[kLanes] = {0};
  float wa[kLanes] = {0}, ra[kLanes] = {0};
  int64_t i = 0;
  int blocks = 0;
  for (; i + kLanes <= n; i += kLanes) {
    lamb_block<kLanes, kWd, kMaximize>(h, p, g, m, v, i, kLanes, wa, ra);
    if (++blocks == kFlush) {
      flush_squares(wd, rd, wa, ra);
      blocks = 0;
    }
  }
  if (i < n)  // the tail: lanes past its end get nothing
    lamb_block<0, kWd, kMaximize>(h, p, g, m, v, i, static_cast<int>(n - i), wa, ra);
  flush_squares(wd, rd, wa, ra);
  double ws = 0.0, rs = 0.0;
  for (int l = 0; l < kLanes; ++l) {
    ws += wd[l];
    rs += rd[l];
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
static void lamb_apply_loop(const LambHyper& hyper, P p, const float* m, const float* v,
                            float lr_ratio, int64_t n) {
  const LambHyper h = hyper;
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
