// Sparse row updates and embedding-bag kernels (torch-free, one copy per ISA).
//
// Vocabulary: a *table* is a 2-D tensor [rows, dim] (an embedding table, or any
// parameter viewed as rows). An *entry* is one lookup / one sparse-gradient row:
// entry e touches table row idx[e]. Its gradient row lives at
//     grad.data + src(e) * grad.ld
// where src(e) = e for a sparse gradient (one values row per entry) and the
// entry's bag for an embedding-bag backward (one grad_output row per bag); the
// sort records src(e) with the entry (EmbEntry). The row is multiplied by
// grad.scale[e] (per-sample weight) or grad.src_scale[src(e)] (mode mean:
// 1 / bag size) when either is set.
//
// Threads never share a row. Updates that need a row's summed gradient
// (emb_bucket_update) get whole buckets: the ops layer sorts the entries into
// buckets by a hash of their row (a stable counting sort: within a bucket,
// entries keep their original order). Updates that apply entry by entry
// (SGD, sparse-add) first run an in-order pass over the entries
// (emb_ordered_apply): with several threads, it applies only the entries of
// rows the ops layer found once in the call (a hashed bitmap; a collision only
// marks a row met once as repeated), which have no order to keep, and sets the
// others aside for the buckets. Every row is therefore updated by one thread,
// in the original entry order, so results do not depend on the thread count,
// the chunking or the bucket count. The sort writes each entry with its row and gradient
// source row (EmbEntry), so the kernels read them in sequence instead of
// looking up idx[e] and bag[e] at random.
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace ipex_train {

// One table in fp32 (fp32 != nullptr) or split-bf16 storage (top + trail, see
// kernels/bf16.h), with its optional optimizer state:
//   adagrad: state1 = sum [rows, dim]      rowwise_adagrad: state1 = sum [rows]
//   adam   : state1 = exp_avg, state2 = exp_avg_sq, both [rows, dim]
struct EmbTable {
  float* fp32;
  uint16_t* top;
  uint16_t* trail;
  int64_t rows, dim;
  float* state1;
  float* state2;
};

// Row ids of the entries: int32 or int64.
struct EmbIndex {
  const void* idx;
  bool idx64;
  int64_t padding_idx;  // entries of this row are skipped (forward); -1: none
};

// Index helpers of the kernels and of the ops' bucket sort. Always inlined, so
// no out-of-line copy compiled with one level's flags exists for the linker to
// share between levels (see isa.h).
static inline __attribute__((always_inline)) int64_t row_of(EmbIndex in, int64_t e) {
  return in.idx64 ? static_cast<const int64_t*>(in.idx)[e]
                  : static_cast<const int32_t*>(in.idx)[e];
}

// Fibonacci hash of a row id: its high bits pick the bucket of the ops' sort
// and the slot of the kernels' per-bucket row table.
static inline __attribute__((always_inline)) uint64_t hash_row(int64_t r) {
  return static_cast<uint64_t>(r) * 0x9E3779B97F4A7C15ull;
}

// Where each entry's gradient row comes from (see the header comment).
struct EmbGrad {
  const void* data;  // fp32 or bf16 bits
  bool bf16;
  int64_t ld;              // elements between consecutive source rows
  const float* scale;      // nullable: multiply entry e by scale[e]
  const float* src_scale;  // nullable: multiply entry e by src_scale[src(e)]
};

// One entry in bucket order: table row, gradient source row (see above) and
// the entry's position (for grad.scale).
struct EmbEntry {
  int64_t row;
  int32_t src;
  int32_t e;
};

enum EmbOptKind : int { kEmbSgd = 0, kEmbAdagrad = 1, kEmbRowWiseAdagrad = 2, kEmbAdam = 3 };

// Per-row update rules, g = the row's summed gradient (negated if maximize).
// (The fused embedding backward applies SGD entry by entry through
// emb_bucket_add instead, in entry order: no per-row sum is needed.)
//   sgd            : w -= lr * g
//   adagrad        : s += g*g;               w -= lr * (g / (sqrt(s) + eps))   (torch sparse Adagrad)
//   rowwise_adagrad: s_row += mean_j(g_j^2); w -= (lr / (sqrt(s_row) + eps)) * g (FBGEMM EXACT_ROWWISE_ADAGRAD)
//   adam           : m += (g - m)*(1-beta1); v += (g*g - v)*(1-beta2);
//                    w += -step_size * (m / (sqrt(v) + eps))                  (torch SparseAdam)
struct EmbHyper {
  int kind;
  float lr, eps, beta1, beta2, step_size;
  bool maximize;
};

// Bags of one table: bag b holds entries [start[b], start[b+1]).
struct EmbBags {
  const int64_t* start;
  const float* psw;  // nullable per-sample weights (mode sum)
  bool mean;
};

}  // namespace ipex_train

#define IPT_EMBEDDING_KERNEL_DECLS                                                          \
  /* Entries [e0, e1) in order, padding rows skipped: w[row] += alpha * grad.     */      \
  /* Entry e's gradient source row is e, or with bag_start its bag (b: the bag of  */      \
  /* entry e0). An entry whose row has its bit set in `repeated` (bit              */      \
  /* hash_row(row) >> rep_shift) goes to rest[] instead (their count to *nrest).   */      \
  /* repeated == nullptr: no bit set (one thread owns every row of the call).      */      \
  void emb_ordered_apply(float alpha, const EmbTable& t, EmbGrad g, EmbIndex in,           \
                         const int64_t* bag_start, int64_t b, int64_t e0, int64_t e1,      \
                         const uint64_t* repeated, int rep_shift, EmbEntry* rest,          \
                         int64_t* nrest);                                                   \
  /* w[row] += alpha * grad for the n entries ents[0..n), in that order. */               \
  void emb_bucket_add(const EmbTable& t, EmbGrad g, float alpha, const EmbEntry* ents,     \
                      int64_t n);                                                           \
  /* Sums each row's entries (in order), then applies the update once per row. */          \
  void emb_bucket_update(const EmbHyper& h, const EmbTable& t, EmbGrad g,                  \
                         const EmbEntry* ents, int64_t n);                                  \
  /* Dense gradient [rows, dim]: the update for rows [r0, r1). */                           \
  void emb_dense_update(const EmbHyper& h, const EmbTable& t, const void* grad, bool bf16, \
                        int64_t r0, int64_t r1);                                            \
  /* Bags [b0, b1): out[b, 0:dim] (row stride ld, fp32 or bf16) = pooled rows. Row  */     \
  /* ids outside [0, rows) are skipped and the first such entry goes to *first_bad    */     \
  /* (left as it is when there is none): the caller raises and drops the output.     */     \
  void emb_forward(const EmbTable& t, EmbIndex in, const EmbBags& bags, int64_t b0,        \
                   int64_t b1, void* out, bool out_bf16, int64_t ld, int64_t* first_bad);

IPT_DECLARE_FOR_ALL_ISAS(IPT_EMBEDDING_KERNEL_DECLS)
