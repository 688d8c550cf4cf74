// See bucket_sort.h. Torch-light: ATen/Parallel.h and c10's error macros only.
#include "ops/bucket_sort.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>

namespace ipex_train {
namespace ops {

EmbEntry* EntryBuffer::get(int64_t n) {
  if (n > kKeptEntries) {
    own_.reset(new EmbEntry[n]);  // trivial type: left uninitialised
    return own_.get();
  }
  static thread_local std::unique_ptr<EmbEntry[]> kept;
  static thread_local int64_t cap = 0;
  if (n > cap) {
    kept.reset(new EmbEntry[n]);
    cap = n;
  }
  return kept.get();
}

[[noreturn]] void index_out_of_range(const char* op, const std::string& name, const EmbIndex& in,
                                      int64_t pos, int64_t rows) {
  TORCH_CHECK_INDEX(false, op, ": ", name, "[", pos, "] = ", row_of(in, pos),
                    " is out of range for a table of ", rows, " rows");
  __builtin_unreachable();
}

namespace {

constexpr int64_t kEntryChunk = 1 << 13;

// Prefetch for writing the entry slot two cache lines after `dst` (address
// arithmetic only: the slot may lie past the buffer; a prefetch never faults).
__attribute__((always_inline)) inline void prefetch_store_stream(const EmbEntry* dst) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(dst) + 128), 1);
}

inline int64_t bucket_of(int64_t r, int shift) {
  return shift >= 64 ? 0 : static_cast<int64_t>(hash_row(r) >> shift);
}

// row_sums: the kernel sums each row's entries per bucket (emb_bucket_update).
void plan_buckets(Work& w, bool row_sums) {
  // Enough buckets for every thread; with row_sums, also small enough that one
  // bucket's per-row sums (entries x dim floats) stay in the L2 cache. Without,
  // fewer and larger buckets are better: within a bucket the gradient source
  // rows run in increasing order, closer together the fewer the buckets (64K-entry
  // SGD backward and sparse_add_ 10-20% faster with 16 buckets than with 64).
  // One thread: one bucket, so that the gradient source rows are read strictly
  // in order (sparse_add_ of 64K entries at 1 thread: 5.0 -> 3.1 ms; two buckets
  // were as slow as eight). Results do not depend on the bucket count.
  const int64_t threads = at::get_num_threads();
  const int64_t by_cache = row_sums ? w.nnz * std::max<int64_t>(w.t.dim, 1) * 4 / (256 << 10) : 0;
  const int64_t spread = threads > 1 ? std::min<int64_t>(w.nnz / 1024, 8 * threads) : 1;
  const int64_t want = std::min<int64_t>(4096, std::max(by_cache, spread));
  int lg = 0;
  while ((int64_t{1} << (lg + 1)) <= want) ++lg;
  w.nbuckets = int64_t{1} << lg;
  w.shift = 64 - lg;
}

}  // namespace

// Sorts the entries of every work item (padding rows dropped) into buckets,
// and checks on the way that every row id is in range (raising before any
// kernel writes; see check_index). The entries go to `storage`, which must
// outlive their use.
void sort_entries(std::vector<Work>& works, bool row_sums, EntryBuffer& storage) {
  std::vector<int64_t> first_chunk(works.size() + 1, 0);
  for (size_t i = 0; i < works.size(); ++i) {
    plan_buckets(works[i], row_sums);
    first_chunk[i + 1] = first_chunk[i] + (works[i].nnz + kEntryChunk - 1) / kEntryChunk;
  }
  const int64_t chunks = first_chunk.back();
  std::vector<std::vector<int64_t>> hist(chunks);
  std::vector<int64_t> bad(chunks, std::numeric_limits<int64_t>::max());
  auto locate = [&](int64_t c) {
    size_t t = std::upper_bound(first_chunk.begin(), first_chunk.end(), c) - first_chunk.begin() - 1;
    return std::make_pair(t, (c - first_chunk[t]) * kEntryChunk);
  };
  parallel_each(chunks, [&](int64_t c) {
    auto [t, begin] = locate(c);
    Work& w = works[t];
    std::vector<int64_t>& h = hist[c];
    h.assign(w.nbuckets, 0);
    int64_t* const count = h.data();
    const EmbIndex in = w.in;
    const uint64_t rows = static_cast<uint64_t>(w.t.rows);
    const int shift = w.shift;
    const int64_t end = std::min(w.nnz, begin + kEntryChunk);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = row_of(in, i);
      if (static_cast<uint64_t>(r) >= rows) {
        bad[c] = std::min(bad[c], i);
        continue;
      }
      if (r != in.padding_idx) ++count[bucket_of(r, shift)];
    }
  });
  for (size_t t = 0; t < works.size(); ++t)
    for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c)
      if (bad[c] != std::numeric_limits<int64_t>::max())
        index_out_of_range(works[t].op, works[t].idx_name, works[t].in, bad[c], works[t].t.rows);
  // Exclusive prefix in (bucket, chunk) order: each chunk's slice of each bucket.
  for (size_t t = 0; t < works.size(); ++t) {
    Work& w = works[t];
    w.bstart.assign(w.nbuckets + 1, 0);
    int64_t pos = 0;
    for (int64_t p = 0; p < w.nbuckets; ++p) {
      w.bstart[p] = pos;
      for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c) {
        const int64_t n = hist[c][p];
        hist[c][p] = pos;
        pos += n;
      }
    }
    w.bstart[w.nbuckets] = pos;
  }
  int64_t total = 0;
  for (const Work& w : works) total += w.bstart.back();
  EmbEntry* buf = storage.get(total);
  for (Work& w : works) {
    w.perm = buf;
    buf += w.bstart.back();
  }
  parallel_each(chunks, [&](int64_t c) {
    auto [t, begin] = locate(c);
    Work& w = works[t];
    std::vector<int64_t>& h = hist[c];
    const int64_t end = std::min(w.nnz, begin + kEntryChunk);
    int64_t* const pos = h.data();
    EmbEntry* const out = w.perm;
    const EmbIndex in = w.in;
    const int shift = w.shift;
    if (w.bag_start) {
      // bag of entry `begin`: the last bag starting at or before it (earlier
      // bags with the same start are empty); then advance with i
      const int64_t* st = w.bag_start;
      int64_t b = std::upper_bound(st, st + w.bags + 1, begin) - st - 1;
      for (int64_t i = begin; i < end; ++i) {
        while (st[b + 1] <= i) ++b;
        const int64_t r = row_of(in, i);
        if (r == in.padding_idx) continue;
        EmbEntry* dst = out + pos[bucket_of(r, shift)]++;
        *dst = EmbEntry{r, static_cast<int32_t>(b), static_cast<int32_t>(i)};
        prefetch_store_stream(dst);
      }
    } else {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r = row_of(in, i);
        if (r == in.padding_idx) continue;
        const int32_t e = static_cast<int32_t>(i);
        EmbEntry* dst = out + pos[bucket_of(r, shift)]++;
        *dst = EmbEntry{r, e, e};
        prefetch_store_stream(dst);
      }
    }
  });
}

}  // namespace ops
}  // namespace ipex_train
