// ATen wrappers of the dense optimizer kernels: validate every tensor of the
// group first, then run one multi-tensor parallel loop.
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "ops/common.h"

namespace ipex_train {
namespace ops {
namespace {

// Param, grad, trail and state tensors of one step: dense CPU tensors of one
// shape and one memory layout. The kernels run over each tensor's memory
// linearly, so any dense layout (contiguous, channels_last, transposed) works
// where all of them share the param's strides.
void check_layout(const at::Tensor& t, const std::string& what, const char* op,
                  const at::Tensor* like = nullptr, const std::string& like_name = "") {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", what, " is undefined");
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", what, " must be a CPU tensor, got device ",
                    t.device());
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, op, ": ", what, " must be a dense (strided) tensor");
  if (like == nullptr) {
    TORCH_CHECK_VALUE(t.is_non_overlapping_and_dense(), op, ": ", what,
                      " must be dense (no gaps or overlaps between its elements; any order "
                      "of dimensions), got strides ", t.strides(), " for shape ", t.sizes());
    return;
  }
  TORCH_CHECK_VALUE(t.sizes() == like->sizes(), op, ": ", what, " has shape ", t.sizes(), " but ",
                    like_name, " has shape ", like->sizes());
  TORCH_CHECK_VALUE(t.strides() == like->strides(), op, ": ", what, " has strides ", t.strides(),
                    " but ", like_name, " has strides ", like->strides(),
                    " (they must share one memory layout)");
}

// Checks each parameter with its gradient and optional trail; fills the chunk
// descriptors' base pointers. `trails` empty means fp32 parameters.
struct ParamSet {
  std::vector<ParamChunk> params;
  std::vector<GradChunk> grads;
  std::vector<int64_t> numel;
};

ParamSet check_params(const char* op, at::TensorList params, at::TensorList grads,
                      at::TensorList trails) {
  TORCH_CHECK_VALUE(grads.size() == params.size(), op, ": got ", params.size(), " params but ",
                    grads.size(), " grads");
  const bool split = !trails.empty();
  TORCH_CHECK_VALUE(!split || trails.size() == params.size(), op, ": got ", params.size(),
                    " params but ", trails.size(), " trails");
  ParamSet s;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    const std::string pname = arg("params", i);
    check_layout(p, pname, op);
    check_layout(g, arg("grads", i), op, &p, pname);
    TORCH_CHECK_TYPE(g.scalar_type() == at::kFloat || g.scalar_type() == at::kBFloat16, op,
                     ": grads[", i, "] must be float32 or bfloat16, got ", g.scalar_type());
    ParamChunk pc{nullptr, nullptr, nullptr};
    if (split) {
      const at::Tensor& t = trails[i];
      check_layout(t, arg("trails", i), op, &p, pname);
      TORCH_CHECK_TYPE(p.scalar_type() == at::kBFloat16, op, ": params[", i,
                       "] must be bfloat16 when a trail is given, got ", p.scalar_type());
      TORCH_CHECK_TYPE(t.scalar_type() == at::kShort, op, ": trails[", i, "] must be int16, got ",
                       t.scalar_type());
      pc.top = reinterpret_cast<uint16_t*>(p.data_ptr<at::BFloat16>());
      pc.trail = reinterpret_cast<uint16_t*>(t.data_ptr<int16_t>());
    } else {
      TORCH_CHECK_TYPE(p.scalar_type() == at::kFloat, op, ": params[", i,
                       "] must be float32 (bfloat16 parameters need their int16 trail: use "
                       "ipex_train.optimize(..., dtype=torch.bfloat16)), got ", p.scalar_type());
      pc.fp32 = p.data_ptr<float>();
    }
    s.params.push_back(pc);
    s.grads.push_back(GradChunk{g.data_ptr(), g.scalar_type() == at::kBFloat16});
    s.numel.push_back(p.numel());
  }
  return s;
}

// Optimizer state tensors (fp32, laid out as their params), e.g. momentum.
std::vector<float*> check_state(const char* op, const char* name, at::TensorList state,
                                at::TensorList params) {
  TORCH_CHECK_VALUE(state.size() == params.size(), op, ": got ", params.size(), " params but ",
                    state.size(), " ", name);
  std::vector<float*> out;
  for (size_t i = 0; i < state.size(); ++i) {
    check_layout(state[i], arg(name, i), op, &params[i], arg("params", i));
    TORCH_CHECK_TYPE(state[i].scalar_type() == at::kFloat, op, ": ", name, "[", i,
                     "] must be float32, got ", state[i].scalar_type());
    out.push_back(state[i].data_ptr<float>());
  }
  return out;
}

// torch.optim keeps each param's step count as a float32 scalar tensor. The
// ops read it, compute that tensor's bias corrections from step + 1, and
// write step + 1 back (after every check has passed).
struct Steps {
  std::vector<float*> ptr;
  std::vector<float> next;  // the step count this update runs at
  void commit() const {
    for (size_t i = 0; i < ptr.size(); ++i) *ptr[i] = next[i];
  }
};

Steps check_steps(const char* op, at::TensorList steps, at::TensorList params) {
  TORCH_CHECK_VALUE(steps.size() == params.size(), op, ": got ", params.size(), " params but ",
                    steps.size(), " state_steps");
  Steps s;
  for (size_t i = 0; i < steps.size(); ++i) {
    const at::Tensor& t = steps[i];
    TORCH_CHECK_VALUE(t.defined() && t.device().is_cpu() && t.layout() == at::kStrided, op,
                      ": state_steps[", i, "] must be a CPU tensor");
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, op, ": state_steps[", i,
                     "] must be float32, got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.numel() == 1, op, ": state_steps[", i, "] must hold one value, got ",
                      t.numel());
    s.ptr.push_back(t.data_ptr<float>());
    s.next.push_back(*s.ptr.back() + 1.0f);
  }
  return s;
}

void check_unit_interval(const char* op, const char* name, double v) {
  TORCH_CHECK_VALUE(v >= 0.0 && v < 1.0, op, ": ", name, " must be in [0, 1), got ", v);
}

void adam_step_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                at::TensorList state_steps, at::TensorList trails, double lr, double beta1,
                double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                bool decoupled_weight_decay) {
  const char* op = "ipex_train.adam_step_";
  check_unit_interval(op, "beta1", beta1);
  check_unit_interval(op, "beta2", beta2);
  ParamSet s = check_params(op, params, grads, trails);
  std::vector<float*> m = check_state(op, "exp_avgs", exp_avgs, params);
  std::vector<float*> v = check_state(op, "exp_avg_sqs", exp_avg_sqs, params);
  std::vector<float*> vmax;
  if (amsgrad) vmax = check_state(op, "max_exp_avg_sqs", max_exp_avg_sqs, params);
  else TORCH_CHECK_VALUE(max_exp_avg_sqs.empty(), op, ": max_exp_avg_sqs given with amsgrad=False");
  const Steps steps = check_steps(op, state_steps, params);
  std::vector<AdamHyper> h(params.size());
  for (size_t i = 0; i < h.size(); ++i) {
    const double step = steps.next[i];
    const double bc1 = 1.0 - std::pow(beta1, step), bc2 = 1.0 - std::pow(beta2, step);
    h[i].lr = static_cast<float>(lr);
    h[i].beta2 = static_cast<float>(beta2);
    h[i].eps = static_cast<float>(eps);
    h[i].weight_decay = static_cast<float>(weight_decay);
    h[i].one_minus_beta1 = static_cast<float>(1.0 - beta1);
    h[i].one_minus_beta2 = static_cast<float>(1.0 - beta2);
    h[i].step_size = static_cast<float>(lr / bc1);
    h[i].bias_corr2_sqrt = static_cast<float>(std::sqrt(bc2));
    h[i].decay_factor = static_cast<float>(1.0 - lr * weight_decay);
    h[i].decoupled = decoupled_weight_decay;
    h[i].amsgrad = amsgrad;
    h[i].maximize = maximize;
  }
  steps.commit();
  for_each_chunk(s.numel, [&](size_t t, int64_t b, int64_t n) {
    IPT_DISPATCH(adam_chunk, h[t], offset(s.params[t], b), offset(s.grads[t], b), m[t] + b,
                 v[t] + b, amsgrad ? vmax[t] + b : nullptr, n);
  });
}

void adagrad_step_(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                   at::TensorList state_steps, at::TensorList trails, double lr, double lr_decay,
                   double weight_decay, double eps, bool maximize) {
  const char* op = "ipex_train.adagrad_step_";
  ParamSet s = check_params(op, params, grads, trails);
  std::vector<float*> sums = check_state(op, "state_sums", state_sums, params);
  const Steps steps = check_steps(op, state_steps, params);
  std::vector<AdagradHyper> h(params.size());
  for (size_t i = 0; i < h.size(); ++i) {
    const double step = steps.next[i];
    h[i] = AdagradHyper{static_cast<float>(weight_decay), static_cast<float>(eps),
                        static_cast<float>(lr / (1.0 + (step - 1.0) * lr_decay)), maximize};
  }
  steps.commit();
  for_each_chunk(s.numel, [&](size_t t, int64_t b, int64_t n) {
    IPT_DISPATCH(adagrad_chunk, h[t], offset(s.params[t], b), offset(s.grads[t], b), sums[t] + b,
                 n);
  });
}

void lamb_step_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                at::TensorList exp_avg_sqs, at::TensorList state_steps, at::TensorList trails,
                double lr, double beta1, double beta2, double eps, double weight_decay,
                std::optional<double> max_trust_ratio, bool bias_correction, bool maximize) {
  const char* op = "ipex_train.lamb_step_";
  check_unit_interval(op, "beta1", beta1);
  check_unit_interval(op, "beta2", beta2);
  TORCH_CHECK_VALUE(!max_trust_ratio || *max_trust_ratio >= 0.0, op,
                    ": max_trust_ratio must be >= 0, got ", *max_trust_ratio);
  ParamSet s = check_params(op, params, grads, trails);
  std::vector<float*> m = check_state(op, "exp_avgs", exp_avgs, params);
  std::vector<float*> v = check_state(op, "exp_avg_sqs", exp_avg_sqs, params);
  const Steps steps = check_steps(op, state_steps, params);
  std::vector<LambHyper> h(params.size());
  for (size_t i = 0; i < h.size(); ++i) {
    const double step = steps.next[i];
    h[i].beta2 = static_cast<float>(beta2);
    h[i].eps = static_cast<float>(eps);
    h[i].weight_decay = static_cast<float>(weight_decay);
    h[i].one_minus_beta1 = static_cast<float>(1.0 - beta1);
    h[i].one_minus_beta2 = static_cast<float>(1.0 - beta2);
    const double bc1 = bias_correction ? 1.0 - std::pow(beta1, step) : 1.0;
    const double bc2 = bias_correction ? 1.0 - std::pow(beta2, step) : 1.0;
    h[i].inv_bias_corr1 = static_cast<float>(1.0 / bc1);
    h[i].inv_bias_corr2 = static_cast<float>(1.0 / bc2);
    h[i].maximize = maximize;
  }
  steps.commit();
  // Pass 1: moments, and per-chunk partial sums of w^2 and r^2.
  std::vector<int64_t> chunk_base(params.size() + 1, 0);
  for (size_t i = 0; i < params.size(); ++i)
    chunk_base[i + 1] = chunk_base[i] + (s.numel[i] + kChunk - 1) / kChunk;
  std::vector<double> w_sq(chunk_base.back()), r_sq(chunk_base.back());
  for_each_chunk(s.numel, [&](size_t t, int64_t b, int64_t n) {
    const int64_t c = chunk_base[t] + b / kChunk;
    IPT_DISPATCH(lamb_moments_chunk, h[t], offset(s.params[t], b), offset(s.grads[t], b),
                 m[t] + b, v[t] + b, n, &w_sq[c], &r_sq[c]);
  });
  // Per-tensor trust ratios, chunks summed in a fixed order.
  std::vector<float> lr_ratio(params.size());
  for (size_t t = 0; t < params.size(); ++t) {
    double ws = 0.0, rs = 0.0;
    for (int64_t c = chunk_base[t]; c < chunk_base[t + 1]; ++c) {
      ws += w_sq[c];
      rs += r_sq[c];
    }
    const double wn = std::sqrt(ws), rn = std::sqrt(rs);
    double ratio = (wn == 0.0 || rn == 0.0) ? 1.0 : wn / rn;
    if (max_trust_ratio && ratio > *max_trust_ratio) ratio = *max_trust_ratio;
    lr_ratio[t] = static_cast<float>(lr * ratio);
  }
  // Pass 2: w -= lr * ratio * r.
  for_each_chunk(s.numel, [&](size_t t, int64_t b, int64_t n) {
    IPT_DISPATCH(lamb_apply_chunk, h[t], offset(s.params[t], b), m[t] + b, v[t] + b, lr_ratio[t],
                 n);
  });
}

void sgd_step_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
               at::TensorList trails, double lr, double weight_decay, double momentum,
               double dampening, bool nesterov, bool maximize, bool first_step) {
  const char* op = "ipex_train.sgd_step_";
  ParamSet s = check_params(op, params, grads, trails);
  std::vector<float*> bufs;
  if (momentum != 0.0) bufs = check_state(op, "momentum_buffers", momentum_buffers, params);
  else TORCH_CHECK_VALUE(momentum_buffers.empty(), op, ": momentum_buffers given with momentum=0");
  const SgdHyper h{static_cast<float>(lr), static_cast<float>(weight_decay),
                   static_cast<float>(momentum), static_cast<float>(dampening), nesterov, maximize,
                   first_step};
  for_each_chunk(s.numel, [&](size_t t, int64_t b, int64_t n) {
    IPT_DISPATCH(sgd_chunk, h, offset(s.params[t], b), offset(s.grads[t], b),
                 bufs.empty() ? nullptr : bufs[t] + b, n);
  });
}

// The checks of a *_step_ op, and nothing else: an optimizer step that needs
// several native calls (several param groups, fp32 and split params in one
// group, row updates besides) runs this for each call first, so a bad tensor
// in a later call raises before an earlier call writes. `states` holds k
// state lists one after the other (k * params.size() tensors: fp32, each
// param's shape); `steps` is empty or one float32 scalar per param.
void check_dense_params(at::TensorList params, at::TensorList grads, at::TensorList trails,
                        at::TensorList states, at::TensorList steps) {
  const char* op = "ipex_train.check_dense_params";
  check_params(op, params, grads, trails);
  const size_t n = params.size();
  TORCH_CHECK_VALUE(n == 0 ? states.empty() : states.size() % n == 0, op, ": got ",
                    states.size(), " state tensors for ", n, " params");
  for (size_t k = 0; n && k < states.size() / n; ++k)
    check_state(op, "state", states.slice(k * n, n), params);
  if (!steps.empty()) check_steps(op, steps, params);
}

}  // namespace
}  // namespace ops
}  // namespace ipex_train

TORCH_LIBRARY_FRAGMENT(ipex_train, m) {
  m.def(
      "check_dense_params(Tensor[] params, Tensor[] grads, Tensor[] trails, Tensor[] states, "
      "Tensor[] steps) -> ()");
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "Tensor(c!)[] trails, float lr, float weight_decay, float momentum, float dampening, "
      "bool nesterov, bool maximize, bool first_step) -> ()");
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, "
      "Tensor(f!)[] trails, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool amsgrad, bool maximize, bool decoupled_weight_decay) -> ()");
  m.def(
      "adagrad_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state_sums, "
      "Tensor(c!)[] state_steps, Tensor(d!)[] trails, float lr, float lr_decay, "
      "float weight_decay, float eps, bool maximize) -> ()");
  m.def(
      "lamb_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] state_steps, Tensor(e!)[] trails, float lr, "
      "float beta1, float beta2, float eps, float weight_decay, float? max_trust_ratio, "
      "bool bias_correction, bool maximize) -> ()");
}

TORCH_LIBRARY_IMPL(ipex_train, CPU, m) {
  m.impl("check_dense_params", &ipex_train::ops::check_dense_params);
  m.impl("sgd_step_", &ipex_train::ops::sgd_step_);
  m.impl("adam_step_", &ipex_train::ops::adam_step_);
  m.impl("adagrad_step_", &ipex_train::ops::adagrad_step_);
  m.impl("lamb_step_", &ipex_train::ops::lamb_step_);
}
