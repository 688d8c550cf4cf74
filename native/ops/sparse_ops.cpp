// ATen wrappers of the sparse-row and embedding-bag kernels (kernels/embedding.h).
//
// Every op validates all of its tensors (dtype, shape, contiguity, index range,
// offsets) before it writes anything, then sorts the entries into buckets and
// runs the kernel on whole buckets in parallel (ops/bucket_sort.h).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <optional>
#include <string>

#include "kernels/embedding.h"
#include "ops/bucket_sort.h"
#include "ops/common.h"

namespace ipex_train {
namespace ops {
namespace {

// ---- argument checks ---------------------------------------------------------

int64_t row_width(const at::Tensor& w) {
  int64_t d = 1;
  for (int64_t i = 1; i < w.dim(); ++i) d *= w.size(i);
  return d;
}

// weight fp32, or bf16 with an int16 trail of the same shape.
// top_only: a bf16 weight may come without its trail (the forward reads the top half only).
EmbTable check_table(const char* op, const at::Tensor& w, const std::optional<at::Tensor>& trail,
                     const std::string& wname, const std::string& tname, bool top_only = false) {
  check_dense_cpu(w, wname, op);
  TORCH_CHECK_VALUE(w.dim() >= 1, op, ": ", wname, " must have at least one dimension (rows)");
  EmbTable t{nullptr, nullptr, nullptr, w.size(0), row_width(w), nullptr, nullptr};
  if (trail.has_value() && trail->defined()) {
    check_dense_cpu(*trail, tname, op);
    TORCH_CHECK_TYPE(w.scalar_type() == at::kBFloat16, op, ": ", wname,
                     " must be bfloat16 when a trail is given, got ", w.scalar_type());
    TORCH_CHECK_TYPE(trail->scalar_type() == at::kShort, op, ": ", tname, " must be int16, got ",
                     trail->scalar_type());
    TORCH_CHECK_VALUE(trail->sizes() == w.sizes(), op, ": ", tname, " has shape ", trail->sizes(),
                      " but ", wname, " has shape ", w.sizes());
    t.top = reinterpret_cast<uint16_t*>(w.data_ptr<at::BFloat16>());
    t.trail = reinterpret_cast<uint16_t*>(trail->data_ptr<int16_t>());
  } else if (top_only && w.scalar_type() == at::kBFloat16) {
    t.top = reinterpret_cast<uint16_t*>(w.data_ptr<at::BFloat16>());
  } else {
    TORCH_CHECK_TYPE(w.scalar_type() == at::kFloat, op, ": ", wname,
                     " must be float32, or bfloat16 with its int16 trail; got ", w.scalar_type());
    t.fp32 = w.data_ptr<float>();
  }
  return t;
}

// Optimizer state: fp32, contiguous, of the given shape.
float* check_state(const char* op, const std::optional<at::Tensor>& s, const std::string& name,
                   at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(s.has_value() && s->defined(), op, ": ", name, " is required by this update");
  check_dense_cpu(*s, name, op);
  TORCH_CHECK_TYPE(s->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                   s->scalar_type());
  TORCH_CHECK_VALUE(s->sizes() == shape, op, ": ", name, " has shape ", s->sizes(),
                    ", expected ", shape);
  return s->data_ptr<float>();
}

void attach_state(const char* op, EmbTable& t, int64_t kind, const at::Tensor& w,
                  const std::optional<at::Tensor>& s1, const std::optional<at::Tensor>& s2,
                  const std::string& n1, const std::string& n2) {
  if (kind == kEmbAdagrad || kind == kEmbAdam) t.state1 = check_state(op, s1, n1, w.sizes());
  if (kind == kEmbAdam) t.state2 = check_state(op, s2, n2, w.sizes());
  if (kind == kEmbRowWiseAdagrad) t.state1 = check_state(op, s1, n1, {w.size(0)});
}

// 1-D int32/int64 row ids. Returns the kernel's view. Their range is checked
// where they are read anyway before anything is written (split_entries, the
// forward kernel): a separate pass over cold indices cost 0.1-0.4 ms per call
// here.
EmbIndex check_index(const char* op, const at::Tensor& idx, const std::string& name,
                     int64_t padding_idx) {
  check_dense_cpu(idx, name, op);
  TORCH_CHECK_TYPE(idx.scalar_type() == at::kLong || idx.scalar_type() == at::kInt, op, ": ", name,
                   " must be int64 or int32, got ", idx.scalar_type());
  TORCH_CHECK_VALUE(idx.dim() == 1, op, ": ", name, " must be 1-D, got shape ", idx.sizes());
  TORCH_CHECK_VALUE(idx.numel() < std::numeric_limits<int32_t>::max(), op, ": ", name,
                    " has more than 2^31 - 1 entries");
  return EmbIndex{idx.data_ptr(), idx.scalar_type() == at::kLong, padding_idx};
}

// offsets -> bag starts [B + 1] (nn.EmbeddingBag's offsets / include_last_offset rules).
std::vector<int64_t> bag_starts(const char* op, const at::Tensor& off, const std::string& name,
                                int64_t nnz, bool include_last) {
  check_dense_cpu(off, name, op);
  TORCH_CHECK_TYPE(off.scalar_type() == at::kLong || off.scalar_type() == at::kInt, op, ": ", name,
                   " must be int64 or int32, got ", off.scalar_type());
  TORCH_CHECK_VALUE(off.dim() == 1, op, ": ", name, " must be 1-D, got shape ", off.sizes());
  const int64_t len = off.numel();
  TORCH_CHECK_VALUE(!include_last || len >= 1, op, ": ", name,
                    " must have at least one entry with include_last_offset=True");
  const int64_t B = include_last ? len - 1 : len;
  std::vector<int64_t> s(B + 1);
  if (off.scalar_type() == at::kLong) {
    const int64_t* p = off.data_ptr<int64_t>();
    std::copy(p, p + len, s.begin());
  } else {
    const int32_t* p = off.data_ptr<int32_t>();
    std::copy(p, p + len, s.begin());
  }
  if (!include_last) s[B] = nnz;
  TORCH_CHECK_VALUE(B == 0 || s[0] == 0, op, ": ", name, "[0] must be 0, got ", s[0]);
  TORCH_CHECK_VALUE(B > 0 || nnz == 0, op, ": ", name, " describes no bags but there are ", nnz,
                    " indices");
  for (int64_t i = 0; i < B; ++i)
    TORCH_CHECK_VALUE(s[i] <= s[i + 1], op, ": ", name, " must be non-decreasing and end at most at ",
                      "the number of indices (", nnz, "); got ", s[i], " then ",
                      (i + 1 < len ? "" : "(end) "), s[i + 1], " at position ", i + 1);
  TORCH_CHECK_VALUE(s[B] == nnz, op, ": ", name, " ends at ", s[B], " but there are ", nnz,
                    " indices");
  return s;
}

// The update rules by name (the schemas take the name: no number is mirrored in Python).
int rule_kind(const char* op, c10::string_view rule) {
  static constexpr std::pair<const char*, int> kRules[] = {
      {"sgd", kEmbSgd}, {"adagrad", kEmbAdagrad}, {"rowwise_adagrad", kEmbRowWiseAdagrad},
      {"adam", kEmbAdam}};
  for (const auto& r : kRules)
    if (rule == r.first) return r.second;
  TORCH_CHECK_VALUE(false, op, ": unknown update rule '", std::string(rule),
                    "' (sgd, adagrad, rowwise_adagrad, adam)");
  __builtin_unreachable();
}

EmbHyper make_hyper(int kind, double lr, double eps, double beta1, double beta2,
                    double step_size, bool maximize) {
  return EmbHyper{kind, static_cast<float>(lr), static_cast<float>(eps),
                  static_cast<float>(beta1), static_cast<float>(beta2),
                  static_cast<float>(step_size), maximize};
}

// Checks values [nnz, *weight.shape[1:]] (fp32 or bf16) for a sparse gradient.
EmbGrad check_values(const char* op, const at::Tensor& v, const at::Tensor& w, int64_t nnz,
                     const std::string& name = "values") {
  check_dense_cpu(v, name, op);
  TORCH_CHECK_TYPE(v.scalar_type() == at::kFloat || v.scalar_type() == at::kBFloat16, op,
                   ": ", name, " must be float32 or bfloat16, got ", v.scalar_type());
  std::vector<int64_t> want{nnz};
  for (int64_t i = 1; i < w.dim(); ++i) want.push_back(w.size(i));
  TORCH_CHECK_VALUE(v.sizes() == at::IntArrayRef(want), op, ": ", name, " has shape ", v.sizes(),
                    ", expected ", at::IntArrayRef(want), " (one row per index)");
  return EmbGrad{v.data_ptr(), v.scalar_type() == at::kBFloat16, row_width(w), nullptr, nullptr};
}

// The in-order kernel pass of split_entries: w += alpha * grad for the entries
// of rows not marked repeated.
OrderedFn add_in_order(float alpha) {
  return [alpha](const Work& w, int64_t b, int64_t e0, int64_t e1, EmbEntry* rest) {
    int64_t n = 0;
    IPT_DISPATCH(emb_ordered_apply, alpha, w.t, w.g, w.in, w.bag_start, b, e0, e1, w.repeated,
                 w.rep_shift, rest, &n);
    return n;
  };
}

// ---- ops ----------------------------------------------------------------------

void sparse_add_(at::Tensor& weight, const std::optional<at::Tensor>& trail,
                 const at::Tensor& indices, const at::Tensor& values, double alpha) {
  const char* op = "ipex_train.sparse_add_";
  std::vector<Work> works(1);
  Work& w = works[0];
  w.t = check_table(op, weight, trail, "weight", "trail");
  w.in = check_index(op, indices, "indices", -1);
  w.op = op;
  w.idx_name = "indices";
  w.nnz = indices.numel();
  w.g = check_values(op, values, weight, w.nnz);
  if (w.nnz == 0) return;
  EntryBuffer storage;
  const float a = static_cast<float>(alpha);
  split_entries(works, /*row_sums=*/false, storage, add_in_order(a));  // checks the row ids
  if (w.t.dim == 0) return;
  for_each_bucket(works, [&](Work& wk, const EmbEntry* ents, int64_t n) {
    IPT_DISPATCH(emb_bucket_add, wk.t, wk.g, a, ents, n);
  });
}

// One update rule over many parameters: per parameter i, params[i] (fp32, or
// bf16 with trails[i]: the first trails.size() params are the split ones),
// grads[i] (sparse COO with one sparse dimension, or dense: every row),
// state1[i] / state2[i] where the rule has them (empty lists where not) and
// its own hyperparameters. Every argument of every parameter, row ids
// included, is checked before the first write.
void sparse_row_update_(at::TensorList params, at::TensorList grads, at::TensorList trails,
                        at::TensorList state1, at::TensorList state2, c10::string_view rule,
                        at::ArrayRef<double> lr, at::ArrayRef<double> eps,
                        at::ArrayRef<double> beta1, at::ArrayRef<double> beta2,
                        at::ArrayRef<double> step_size, const c10::List<bool>& maximize) {
  const char* op = "ipex_train.sparse_row_update_";
  const int kind = rule_kind(op, rule);
  const size_t n = params.size();
  for (size_t len : {grads.size(), lr.size(), eps.size(), beta1.size(), beta2.size(),
                     step_size.size(), maximize.size()})
    TORCH_CHECK_VALUE(len == n, op, ": got ", n, " params but a list of ", len,
                      " (grads and every hyperparameter list need one entry per param)");
  TORCH_CHECK_VALUE(trails.size() <= n, op, ": got ", trails.size(), " trails for ", n, " params");
  const bool need1 = kind != kEmbSgd, need2 = kind == kEmbAdam;
  TORCH_CHECK_VALUE(state1.size() == (need1 ? n : 0), op, ": got ", state1.size(),
                    " state1 tensors, expected ", need1 ? n : 0);
  TORCH_CHECK_VALUE(state2.size() == (need2 ? n : 0), op, ": got ", state2.size(),
                    " state2 tensors, expected ", need2 ? n : 0);
  auto opt = [](at::TensorList l, size_t i) {
    return i < l.size() ? std::optional<at::Tensor>(l[i]) : std::nullopt;
  };
  std::vector<Work> works;          // sparse grads with entries
  std::vector<EmbHyper> work_hyper;  // per work item
  std::vector<at::Tensor> keep;      // contiguous indices / values the works point into
  std::vector<std::pair<EmbTable, EmbHyper>> dense;
  std::vector<const at::Tensor*> dense_grad;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& w = params[i];
    EmbTable t = check_table(op, w, opt(trails, i), arg("params", i), arg("trails", i));
    attach_state(op, t, kind, w, opt(state1, i), opt(state2, i), arg("state1", i),
                 arg("state2", i));
    const EmbHyper h =
        make_hyper(kind, lr[i], eps[i], beta1[i], beta2[i], step_size[i], maximize.get(i));
    const at::Tensor& g = grads[i];
    const std::string gname = arg("grads", i);
    TORCH_CHECK_VALUE(g.defined() && g.device().is_cpu(), op, ": ", gname, " must be a CPU tensor");
    TORCH_CHECK_VALUE(g.sizes() == w.sizes(), op, ": ", gname, " has shape ", g.sizes(), " but ",
                      arg("params", i), " has shape ", w.sizes());
    if (g.layout() == at::kStrided) {  // dense gradient, one row per table row
      check_dense_cpu(g, gname, op);
      TORCH_CHECK_TYPE(g.scalar_type() == at::kFloat || g.scalar_type() == at::kBFloat16, op, ": ",
                       gname, " must be float32 or bfloat16, got ", g.scalar_type());
      dense.emplace_back(t, h);
      dense_grad.push_back(&g);
      continue;
    }
    TORCH_CHECK_TYPE(g.layout() == at::kSparse, op, ": ", gname,
                     " must be dense or sparse COO, got layout ", g.layout());
    TORCH_CHECK_VALUE(g.sparse_dim() == 1, op, ": ", gname,
                      " needs exactly one sparse dimension (rows), got sparse_dim=",
                      g.sparse_dim(), "; use grad.to_sparse(1)");
    const at::Tensor idx = g._indices().select(0, 0).contiguous();
    const at::Tensor val = g._values().contiguous();
    Work wk;
    wk.op = op;
    wk.idx_name = gname + " row index";
    wk.t = t;
    wk.in = check_index(op, idx, gname + " row indices", -1);
    wk.nnz = idx.numel();
    wk.g = check_values(op, val, w, wk.nnz, gname + " values");
    if (wk.nnz == 0) continue;
    keep.push_back(idx);
    keep.push_back(val);
    works.push_back(std::move(wk));
    work_hyper.push_back(h);
  }
  EntryBuffer storage;
  // SGD applies entry by entry (no per-row sums). split_entries checks every
  // row id before its in-order pass writes.
  const OrderedFn ordered = [&](const Work& wk, int64_t b, int64_t e0, int64_t e1, EmbEntry* rest) {
    const EmbHyper& h = work_hyper[&wk - works.data()];
    return add_in_order(h.maximize ? h.lr : -h.lr)(wk, b, e0, e1, rest);
  };
  split_entries(works, /*row_sums=*/kind != kEmbSgd, storage, ordered);
  for_each_bucket(works, [&](Work& wk, const EmbEntry* ents, int64_t m) {
    const EmbHyper& h = work_hyper[&wk - works.data()];
    if (kind == kEmbSgd) {
      if (wk.t.dim) IPT_DISPATCH(emb_bucket_add, wk.t, wk.g, h.maximize ? h.lr : -h.lr, ents, m);
    } else {
      IPT_DISPATCH(emb_bucket_update, h, wk.t, wk.g, ents, m);
    }
  });
  for (size_t j = 0; j < dense.size(); ++j) {
    const EmbTable t = dense[j].first;
    const EmbHyper h = dense[j].second;
    const void* g = dense_grad[j]->data_ptr();
    const bool bf16 = dense_grad[j]->scalar_type() == at::kBFloat16;
    at::parallel_for(0, t.rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, t.dim)),
                     [&](int64_t b, int64_t e) { IPT_DISPATCH(emb_dense_update, h, t, g, bf16, b, e); });
  }
}

// Shared checks of the embedding-bag ops over T tables.
struct BagSet {
  std::vector<EmbTable> tables;
  std::vector<EmbIndex> index;
  std::vector<std::vector<int64_t>> starts;
  std::vector<const float*> psw;
  std::vector<int64_t> col;  // output column of each table; col.back() = total width
  int64_t batch = 0;
};

BagSet check_bags(const char* op, at::TensorList weights, at::TensorList trails,
                  at::TensorList indices, at::TensorList offsets, at::TensorList psw,
                  at::IntArrayRef padding_idx, bool include_last, bool mean,
                  bool top_only = false) {
  const size_t T = weights.size();
  TORCH_CHECK_VALUE(T > 0, op, ": needs at least one table");
  TORCH_CHECK_VALUE(indices.size() == T && offsets.size() == T, op, ": got ", T, " tables, ",
                    indices.size(), " index tensors and ", offsets.size(), " offset tensors");
  TORCH_CHECK_VALUE(trails.empty() || trails.size() == T, op, ": got ", T, " tables but ",
                    trails.size(), " trails");
  TORCH_CHECK_VALUE(psw.empty() || psw.size() == T, op, ": got ", T, " tables but ", psw.size(),
                    " per_sample_weights");
  TORCH_CHECK_VALUE(padding_idx.size() == T, op, ": got ", T, " tables but ", padding_idx.size(),
                    " padding_idx values");
  TORCH_CHECK_VALUE(psw.empty() || !mean, op, ": per_sample_weights are only supported with mode='sum'");
  BagSet s;
  s.col.push_back(0);
  for (size_t i = 0; i < T; ++i) {
    TORCH_CHECK_VALUE(weights[i].dim() == 2, op, ": ", arg("weights", i), " must be 2-D, got shape ",
                      weights[i].sizes());
    std::optional<at::Tensor> tr;
    if (!trails.empty()) tr = trails[i];
    EmbTable t = check_table(op, weights[i], tr, arg("weights", i), arg("trails", i), top_only);
    TORCH_CHECK_TYPE(i == 0 || (t.fp32 != nullptr) == (s.tables[0].fp32 != nullptr), op,
                     ": all tables must have the same storage (fp32, or bf16 with trails)");
    const int64_t pad = padding_idx[i];
    TORCH_CHECK_VALUE(pad >= -1 && pad < t.rows, op, ": padding_idx[", i, "] = ", pad,
                      " is out of range for a table of ", t.rows, " rows (-1 means none)");
    s.index.push_back(check_index(op, indices[i], arg("indices", i), pad));
    const int64_t nnz = indices[i].numel();
    s.starts.push_back(bag_starts(op, offsets[i], arg("offsets", i), nnz, include_last));
    const int64_t B = static_cast<int64_t>(s.starts.back().size()) - 1;
    TORCH_CHECK_VALUE(i == 0 || B == s.batch, op, ": ", arg("offsets", i), " describes ", B,
                      " bags but offsets[0] describes ", s.batch);
    s.batch = B;
    if (!psw.empty()) {
      check_dense_cpu(psw[i], arg("per_sample_weights", i), op);
      TORCH_CHECK_TYPE(psw[i].scalar_type() == at::kFloat, op, ": ", arg("per_sample_weights", i),
                       " must be float32, got ", psw[i].scalar_type());
      TORCH_CHECK_VALUE(psw[i].dim() == 1 && psw[i].numel() == nnz, op, ": ",
                        arg("per_sample_weights", i), " has shape ", psw[i].sizes(),
                        ", expected [", nnz, "] (one weight per index)");
      s.psw.push_back(psw[i].data_ptr<float>());
    } else {
      s.psw.push_back(nullptr);
    }
    s.tables.push_back(t);
    s.col.push_back(s.col.back() + t.dim);
  }
  return s;
}

constexpr int64_t kBagBlock = 32;

// Runs fn(table, b0, b1) over blocks of bags of every table, in parallel.
template <class Fn>
void for_each_bag_block(const BagSet& s, Fn&& fn) {
  const int64_t per = (s.batch + kBagBlock - 1) / kBagBlock;
  const int64_t total = per * static_cast<int64_t>(s.tables.size());
  parallel_each(total, [&](int64_t i) {
    const int64_t t = i / per, b0 = (i % per) * kBagBlock;
    fn(t, b0, std::min(s.batch, b0 + kBagBlock));
  });
}

at::Tensor embedding_bags_forward(at::TensorList weights, at::TensorList indices,
                                  at::TensorList offsets, at::TensorList per_sample_weights,
                                  at::IntArrayRef padding_idx, bool include_last_offset, bool mean,
                                  std::optional<at::ScalarType> out_dtype) {
  const char* op = "ipex_train.embedding_bags_forward";
  // bf16 tables: only the top halves are read, so no trails are needed.
  BagSet s = check_bags(op, weights, {}, indices, offsets, per_sample_weights, padding_idx,
                        include_last_offset, mean, /*top_only=*/true);
  // the output is the tables' dtype unless out_dtype is float32 (bf16 tables:
  // the fp32 sums, unrounded)
  TORCH_CHECK_VALUE(!out_dtype || *out_dtype == weights[0].scalar_type() ||
                        *out_dtype == at::kFloat,
                    op, ": out_dtype must be float32 or the tables' dtype, got ", *out_dtype);
  const bool bf16 = s.tables[0].fp32 == nullptr && (!out_dtype || *out_dtype != at::kFloat);
  at::Tensor out = at::empty({s.batch, s.col.back()},
                             weights[0].options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  void* o = out.data_ptr();
  const int64_t ld = s.col.back();
  // out-of-range ids are found (and skipped) by the kernel: first one per block
  const int64_t per = (s.batch + kBagBlock - 1) / kBagBlock;
  std::vector<int64_t> bad(per * s.tables.size(), std::numeric_limits<int64_t>::max());
  for_each_bag_block(s, [&](int64_t t, int64_t b0, int64_t b1) {
    const EmbBags bags{s.starts[t].data(), s.psw[t], mean};
    void* base = static_cast<char*>(o) + s.col[t] * (bf16 ? 2 : 4);
    IPT_DISPATCH(emb_forward, s.tables[t], s.index[t], bags, b0, b1, base, bf16, ld,
                 &bad[t * per + b0 / kBagBlock]);
  });
  for (size_t t = 0; t < s.tables.size(); ++t)
    for (int64_t i = t * per; i < int64_t(t + 1) * per; ++i)
      if (bad[i] != std::numeric_limits<int64_t>::max())
        index_out_of_range(op, arg("indices", t), s.index[t], bad[i], s.tables[t].rows);
  return out;
}

void embedding_bags_backward_update_(at::TensorList weights, at::TensorList trails,
                                     at::TensorList state1, at::TensorList state2,
                                     const at::Tensor& grad_output, at::TensorList indices,
                                     at::TensorList offsets, at::TensorList per_sample_weights,
                                     at::IntArrayRef padding_idx, bool include_last_offset,
                                     bool mean, c10::string_view rule, double lr, double eps,
                                     double beta1, double beta2, double step_size, bool maximize) {
  const char* op = "ipex_train.embedding_bags_backward_update_";
  const int kind = rule_kind(op, rule);
  const EmbHyper h = make_hyper(kind, lr, eps, beta1, beta2, step_size, maximize);
  BagSet s = check_bags(op, weights, trails, indices, offsets, per_sample_weights, padding_idx,
                        include_last_offset, mean);
  const size_t T = weights.size();
  const bool need1 = kind != kEmbSgd, need2 = kind == kEmbAdam;
  TORCH_CHECK_VALUE(state1.size() == (need1 ? T : 0), op, ": got ", state1.size(),
                    " state1 tensors, expected ", need1 ? T : 0);
  TORCH_CHECK_VALUE(state2.size() == (need2 ? T : 0), op, ": got ", state2.size(),
                    " state2 tensors, expected ", need2 ? T : 0);
  for (size_t i = 0; i < T; ++i)
    attach_state(op, s.tables[i], kind, weights[i], need1 ? std::optional<at::Tensor>(state1[i]) : std::nullopt,
                 need2 ? std::optional<at::Tensor>(state2[i]) : std::nullopt, arg("state1", i),
                 arg("state2", i));
  check_dense_cpu(grad_output, "grad_output", op);
  const bool bf16 = s.tables[0].fp32 == nullptr;
  // bf16 tables take a bf16 or (out_dtype=float32 forward) a float32 gradient
  const bool grad_bf16 = grad_output.scalar_type() == at::kBFloat16;
  TORCH_CHECK_TYPE(grad_output.scalar_type() == at::kFloat || (bf16 && grad_bf16), op,
                   ": grad_output must be ", bf16 ? "bfloat16 or float32" : "float32",
                   " like the forward output, got ", grad_output.scalar_type());
  TORCH_CHECK_VALUE(grad_output.dim() == 2 && grad_output.size(0) == s.batch &&
                        grad_output.size(1) == s.col.back(),
                    op, ": grad_output has shape ", grad_output.sizes(), ", expected [", s.batch,
                    ", ", s.col.back(), "]");
  // mode mean: each bag's gradient row is scaled by 1 / (its non-padding entries).
  std::vector<std::vector<float>> bag_scale(mean ? T : 0);
  if (mean) {
    for (size_t t = 0; t < T; ++t) bag_scale[t].resize(s.batch);
    for_each_bag_block(s, [&](int64_t t, int64_t b0, int64_t b1) {
      const std::vector<int64_t>& st = s.starts[t];
      for (int64_t b = b0; b < b1; ++b) {
        int64_t count = 0;
        for (int64_t e = st[b]; e < st[b + 1]; ++e) count += row_of(s.index[t], e) != s.index[t].padding_idx;
        bag_scale[t][b] = count > 0 ? 1.0f / static_cast<float>(count) : 0.0f;
      }
    });
  }
  std::vector<Work> works(T);
  const char* go = static_cast<const char*>(grad_output.data_ptr());
  for (size_t t = 0; t < T; ++t) {
    Work& w = works[t];
    w.op = op;
    w.idx_name = arg("indices", t);
    w.t = s.tables[t];
    w.in = s.index[t];
    w.nnz = indices[t].numel();
    w.bag_start = s.starts[t].data();
    w.bags = s.batch;
    w.g = EmbGrad{go + s.col[t] * (grad_bf16 ? 2 : 4), grad_bf16, s.col.back(), s.psw[t],
                  mean ? bag_scale[t].data() : nullptr};
  }
  EntryBuffer storage;
  const float alpha = maximize ? h.lr : -h.lr;
  // SGD needs no per-row sum: each entry is applied in order
  split_entries(works, /*row_sums=*/kind != kEmbSgd, storage, add_in_order(alpha));
  if (kind == kEmbSgd) {
    for_each_bucket(works, [&](Work& wk, const EmbEntry* ents, int64_t n) {
      IPT_DISPATCH(emb_bucket_add, wk.t, wk.g, alpha, ents, n);
    });
    return;
  }
  for_each_bucket(works, [&](Work& wk, const EmbEntry* ents, int64_t n) {
    IPT_DISPATCH(emb_bucket_update, h, wk.t, wk.g, ents, n);
  });
}

// Asks the kernel to back a large table with transparent huge pages (Linux
// madvise MADV_HUGEPAGE on its 2 MiB-aligned interior). Random row access to a
// table of hundreds of MB misses the TLB on nearly every row with 4 KiB pages;
// with 2 MiB pages the translations stay cached. Call it before the first
// write (pages are chosen when first touched). A hint: nothing is returned.
void advise_hugepages(const at::Tensor& t) {
  check_dense_cpu(t, "tensor", "ipex_train._advise_hugepages");
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + t.nbytes()) & ~(kHuge - 1);
  if (end <= begin) return;
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint; errors ignored
#endif
}

}  // namespace
}  // namespace ops
}  // namespace ipex_train

TORCH_LIBRARY_FRAGMENT(ipex_train, m) {
  m.def("_advise_hugepages(Tensor t) -> ()");
  m.def("sparse_add_(Tensor(a!) weight, Tensor(b!)? trail, Tensor indices, Tensor values, "
        "float alpha) -> ()");
  m.def("sparse_row_update_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] trails, "
        "Tensor(c!)[] state1, Tensor(d!)[] state2, str rule, float[] lr, float[] eps, "
        "float[] beta1, float[] beta2, float[] step_size, bool[] maximize) -> ()");
  m.def("embedding_bags_forward(Tensor[] weights, Tensor[] indices, Tensor[] offsets, "
        "Tensor[] per_sample_weights, int[] padding_idx, bool include_last_offset, bool mean, "
        "ScalarType? out_dtype=None) -> Tensor");
  m.def("embedding_bags_backward_update_(Tensor(a!)[] weights, Tensor(b!)[] trails, "
        "Tensor(c!)[] state1, Tensor(d!)[] state2, Tensor grad_output, Tensor[] indices, "
        "Tensor[] offsets, Tensor[] per_sample_weights, int[] padding_idx, "
        "bool include_last_offset, bool mean, str rule, float lr, float eps, float beta1, "
        "float beta2, float step_size, bool maximize) -> ()");
}

TORCH_LIBRARY_IMPL(ipex_train, CPU, m) {
  m.impl("_advise_hugepages", &ipex_train::ops::advise_hugepages);
  m.impl("sparse_add_", &ipex_train::ops::sparse_add_);
  m.impl("sparse_row_update_", &ipex_train::ops::sparse_row_update_);
  m.impl("embedding_bags_forward", &ipex_train::ops::embedding_bags_forward);
  m.impl("embedding_bags_backward_update_", &ipex_train::ops::embedding_bags_backward_update_);
}

// Its grads may be sparse COO tensors, which dispatch to SparseCPU.
TORCH_LIBRARY_IMPL(ipex_train, SparseCPU, m) {
  m.impl("sparse_row_update_", &ipex_train::ops::sparse_row_update_);
}
