// The entry pass of the sparse ops (sparse_ops.cpp) and its scheduler.
//
// An op call's entries (one per index: table row, gradient source row) are
// checked, then applied so that one thread owns each row and applies its
// entries in their original order. Updates that apply entry by entry (SGD,
// sparse-add) run an in-order kernel pass over the entries, chunk by chunk in
// parallel; with several threads it applies only the entries of rows met once
// in the call (repeated rows are marked first: a hashed bitmap per lane,
// merged), which have no order to keep, and sets the others aside. Updates
// that sum a row's entries first, and the fused backward with several
// threads, skip that pass. What is left is sorted into
// buckets by a hash of its row, a stable counting sort (no comparison sort),
// and whole buckets run in parallel. Results are the same for any thread
// count, chunking and bucket count.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/embedding.h"
#include "ops/parallel.h"

namespace ipex_train {
namespace ops {

// One table's share of an op call.
struct Work {
  const char* op;
  std::string idx_name;  // for the out-of-range error
  EmbTable t;
  EmbIndex in;
  EmbGrad g;
  int64_t nnz;
  // Bag starts [B + 1] when the gradient has one row per bag (src(e) = the
  // entry's bag); nullptr: one row per entry (src(e) = e).
  const int64_t* bag_start = nullptr;
  int64_t bags = 0;
  // Rows marked as repeated: bit hash_row(row) >> rep_shift of `repeated`;
  // nullptr: none (every entry is applied in order by one thread).
  const uint64_t* repeated = nullptr;
  int rep_shift = 64;
  int shift;  // bucket = hash(row) >> shift; 64 -> one bucket
  int64_t nbuckets;
  EmbEntry* perm = nullptr;     // bucketed entries in bucket order (in an EntryBuffer)
  std::vector<int64_t> bstart;  // [nbuckets + 1]
};

// The sorted entries of one op call, all works together. Up to kKeptEntries
// (64 MiB) they live in a buffer kept by the calling thread and reused: no
// allocation, zero-fill or page faults per call (zero-filling a fresh 1 MiB
// buffer took 0.12-0.2 ms of a 4 ms step here). A larger call gets a buffer of
// its own, freed with it, so that one huge call does not pin its memory.
// By the time of the next call the buffer has left the caches, and the scatter
// writes it through one stream per bucket, which the hardware prefetchers do not
// follow: every write then waited for its line (scatter 0.45-0.5 ms for 64K
// entries). So the scatter prefetches each stream two lines ahead of its writes
// (0.16-0.2 ms).
class EntryBuffer {
 public:
  static constexpr int64_t kKeptEntries = int64_t{1} << 22;

  // A buffer for n entries, valid until this object goes or get() is called again.
  EmbEntry* get(int64_t n);

 private:
  std::unique_ptr<EmbEntry[]> own_;
};

// Raises the out-of-range error for entry `pos` of `in` (a table of `rows`).
[[noreturn]] void index_out_of_range(const char* op, const std::string& name, const EmbIndex& in,
                                      int64_t pos, int64_t rows);

// The kernel pass over one chunk: ordered(work, b, e0, e1, rest) applies the
// entries [e0, e1) (b: the bag of e0 when work.bag_start is set) whose row is
// not marked in work.repeated and writes the others to rest, returning their
// count (emb_ordered_apply).
using OrderedFn = std::function<int64_t(const Work&, int64_t, int64_t, int64_t, EmbEntry*)>;

// Checks that every row id of every work item is in range (raising before any
// write; see check_index). row_sums (the kernel sums a row's entries before its
// update), or gradient rows per bag with several threads: sorts every entry
// into buckets (padding rows dropped) for for_each_bucket; `ordered` is not
// called. Otherwise marks the repeated rows where several threads could meet
// on a row, runs `ordered` over every chunk in parallel, and sorts the entries
// it set aside into buckets. The entries go to `storage`, which must outlive
// their use.
void split_entries(std::vector<Work>& works, bool row_sums, EntryBuffer& storage,
                   const OrderedFn& ordered);

// Runs fn(work, entries, n) on every bucket of every work item, in parallel.
template <class Fn>
void for_each_bucket(std::vector<Work>& works, Fn&& fn) {
  std::vector<std::pair<int32_t, int32_t>> items;
  for (size_t t = 0; t < works.size(); ++t)
    for (int64_t p = 0; p < works[t].nbuckets; ++p)
      if (works[t].bstart[p + 1] > works[t].bstart[p]) items.emplace_back(t, p);
  parallel_each(static_cast<int64_t>(items.size()), [&](int64_t i) {
    Work& w = works[items[i].first];
    const int64_t p = items[i].second;
    fn(w, w.perm + w.bstart[p], w.bstart[p + 1] - w.bstart[p]);
  });
}

}  // namespace ops
}  // namespace ipex_train
