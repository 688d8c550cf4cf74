// Adagrad with torch.optim.Adagrad's single-tensor arithmetic (dense grads),
// on fp32 or split-bf16 parameters.
#include <cmath>

#include "kernels/optim_access.h"

namespace ipex_train {
namespace IPT_ISA_NS {

template <bool kWd, bool kMaximize, class P, class G>
static void adagrad_loop(const AdagradHyper& h, P p, G g, float* sum, int64_t n) {
  const float wd = h.weight_decay, eps = h.eps, neg_clr = -h.clr;
  for (int64_t i = 0; i < n; ++i) {
    float gi = kMaximize ? -g.load(i) : g.load(i);
    const float w = p.load(i);
    if constexpr (kWd) gi = gi + wd * w;
    const float s = sum[i] + gi * gi;
    sum[i] = s;
    const float std_ = std::sqrt(s) + eps;
    p.store(i, w + neg_clr * gi / std_);  // addcdiv: value * t1 / t2
  }
}

void adagrad_chunk(const AdagradHyper& h, ParamChunk p, GradChunk g, float* sum, int64_t n) {
  with_param_grad(p, g, [&](auto pio, auto gio) {
    with_flags([&](auto wd, auto mx) { adagrad_loop<wd.value, mx.value>(h, pio, gio, sum, n); },
               h.weight_decay != 0.0f, h.maximize);
  });
}

}  // namespace IPT_ISA_NS
}  // namespace ipex_train
