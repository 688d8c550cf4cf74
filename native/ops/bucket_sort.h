// The bucket sort of the sparse ops (sparse_ops.cpp) and its scheduler.
//
// An op call's entries (one per index: table row, gradient source row) are
// sorted into buckets by a hash of their row, a stable counting sort in
// parallel over chunks of entries (no comparison sort); then whole buckets
// run in parallel, so one thread owns each row and applies its entries in
// their original order. Results are the same for any thread count and any
// bucket count.
#pragma once

#include <cstdint>
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
  int shift;  // bucket = hash(row) >> shift; 64 -> one bucket
  int64_t nbuckets;
  EmbEntry* perm = nullptr;     // entries in bucket order (in an EntryBuffer)
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

// Sorts the entries of every work item (padding rows dropped) into buckets,
// and checks on the way that every row id is in range (raising before any
// kernel writes; see check_index). The entries go to `storage`, which must
// outlive their use.
void sort_entries(std::vector<Work>& works, bool row_sums, EntryBuffer& storage);

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
