// SGD with torch.optim.SGD's semantics (momentum, dampening, nesterov,
// weight decay, maximize), on fp32 or split-bf16 parameters.
#include "kernels/optim_access.h"

namespace ipex_train {
namespace IPT_ISA_NS {

template <class P, class G>
static void sgd_loop(const SgdHyper& h, P p, G g, float* buf, int64_t n) {
  const float lr = h.lr, wd = h.weight_decay, mom = h.momentum, damp = 1.0f - h.dampening;
  if (mom == 0.0f) {
    for (int64_t i = 0; i < n; ++i) {
      float gi = h.maximize ? -g.load(i) : g.load(i);
      float w = p.load(i);
      if (wd != 0.0f) gi = gi + wd * w;
      p.store(i, w - lr * gi);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    float gi = h.maximize ? -g.load(i) : g.load(i);
    float w = p.load(i);
    if (wd != 0.0f) gi = gi + wd * w;
    const float b = h.first_step ? gi : mom * buf[i] + damp * gi;
    buf[i] = b;
    gi = h.nesterov ? gi + mom * b : b;
    p.store(i, w - lr * gi);
  }
}

void sgd_chunk(const SgdHyper& h, ParamChunk p, GradChunk g, float* momentum_buf, int64_t n) {
  with_param_grad(p, g, [&](auto pio, auto gio) { sgd_loop(h, pio, gio, momentum_buf, n); });
}

}  // namespace IPT_ISA_NS
}  // namespace ipex_train
