// See bucket_sort.h. Torch-light: ATen/Parallel.h and c10's error macros only.
#include "ops/bucket_sort.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <tuple>

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

// Sizes the buckets for n set-aside entries. row_sums: the kernel sums each
// row's entries per bucket (emb_bucket_update).
void plan_buckets(Work& w, int64_t n, bool row_sums) {
  // Enough buckets for every thread; with row_sums, also small enough that one
  // bucket's per-row sums (entries x dim floats) stay in the L2 cache. Without,
  // fewer and larger buckets are better: within a bucket the gradient source
  // rows run in increasing order, closer together the fewer the buckets (64K-entry
  // SGD backward and sparse_add_ 10-20% faster with 16 buckets than with 64).
  // Results do not depend on the bucket count.
  const int64_t threads = at::get_num_threads();
  const int64_t by_cache = row_sums ? n * std::max<int64_t>(w.t.dim, 1) * 4 / (256 << 10) : 0;
  const int64_t spread = threads > 1 ? std::min<int64_t>(n / 1024, 8 * threads) : 1;
  const int64_t want = std::min<int64_t>(4096, std::max(by_cache, spread));
  int lg = 0;
  while ((int64_t{1} << (lg + 1)) <= want) ++lg;
  w.nbuckets = int64_t{1} << lg;
  w.shift = 64 - lg;
}

// Bitmap bits for n entries: ~16 per entry (a row met once shares its bit with
// another row ~6% of the time, and is then set aside), 2^12 to 2^24.
int bitmap_log2(int64_t n) {
  int lg = 12;
  while (lg < 24 && (int64_t{1} << lg) < 16 * n) ++lg;
  return lg;
}

constexpr int64_t kKeptWords = int64_t{1} << 23;  // bitmaps kept per calling thread: 64 MiB

// The even bits of x (bit 2k to bit k), by halving strides: portable, no BMI2.
inline uint64_t even_bits(uint64_t x) {
  x &= 0x5555555555555555ull;
  x = (x | x >> 1) & 0x3333333333333333ull;
  x = (x | x >> 2) & 0x0F0F0F0F0F0F0F0Full;
  x = (x | x >> 4) & 0x00FF00FF00FF00FFull;
  x = (x | x >> 8) & 0x0000FFFF0000FFFFull;
  return (x | x >> 16) & 0x00000000FFFFFFFFull;
}

// Every entry into the buckets, straight from the indices (no in-order pass).
void sort_all_entries(std::vector<Work>& works, bool row_sums, EntryBuffer& storage) {
  std::vector<int64_t> first_chunk(works.size() + 1, 0);
  for (size_t i = 0; i < works.size(); ++i) {
    plan_buckets(works[i], works[i].nnz, row_sums);
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

}  // namespace

void split_entries(std::vector<Work>& works, bool row_sums, EntryBuffer& storage,
                   const OrderedFn& ordered) {
  const size_t T = works.size();
  std::vector<int64_t> first_chunk(T + 1, 0);
  bool bag_sources = false;
  for (size_t i = 0; i < T; ++i) {
    first_chunk[i + 1] = first_chunk[i] + (works[i].nnz + kEntryChunk - 1) / kEntryChunk;
    bag_sources |= works[i].bag_start != nullptr;
  }
  const int64_t chunks = first_chunk.back();
  const int64_t lanes = lane_count(chunks);
  // Gradient rows per bag (a few hundred KB, cached) gain nothing from being
  // read in order: with several lanes the marking passes cost more than they
  // save there (fused SGD backward at 2 threads: 74% vs 80% of the floor).
  if (row_sums || (bag_sources && lanes > 1)) return sort_all_entries(works, row_sums, storage);
  auto locate = [&](int64_t c) {
    size_t t = std::upper_bound(first_chunk.begin(), first_chunk.end(), c) - first_chunk.begin() - 1;
    const int64_t begin = (c - first_chunk[t]) * kEntryChunk;
    return std::make_tuple(t, begin, std::min(works[t].nnz, begin + kEntryChunk));
  };
  // Marks: per lane 2 bits per slot (bit 2k: slot k seen, bit 2k + 1: seen
  // twice), so that one word, one cache line, holds both bits an entry reads
  // and writes; 2W words per lane (every work's in turn), then the merged
  // `repeated` bitmap (1 bit per slot, W words). Marking needs several lanes.
  std::vector<int64_t> word0(T + 1, 0);
  for (size_t i = 0; i < T; ++i) {
    Work& w = works[i];
    const bool mark = w.nnz > 0 && lanes > 1 && first_chunk[i + 1] - first_chunk[i] > 1;
    const int lg = mark ? bitmap_log2(w.nnz) : 0;
    w.rep_shift = 64 - lg;
    word0[i + 1] = word0[i] + (mark ? (int64_t{1} << lg) / 64 : 0);
  }
  const int64_t W = word0.back();
  const int64_t nwords = W ? (2 * lanes + (lanes > 1)) * W : 0;
  static thread_local std::vector<uint64_t> kept;
  std::vector<uint64_t> own;
  std::vector<uint64_t>& bitvec = nwords <= kKeptWords ? kept : own;
  if (static_cast<int64_t>(bitvec.size()) < nwords) bitvec.resize(nwords);
  uint64_t* const bits = bitvec.data();  // (thread_local: the workers use this pointer)
  std::vector<int64_t> bad(chunks, std::numeric_limits<int64_t>::max());
  std::vector<char> cleared(lanes, 0);  // each lane clears its own marks, in parallel
  parallel_lanes(chunks, [&](int64_t lane, int64_t c) {
    if (W && !cleared[lane]) {
      std::fill(bits + 2 * lane * W, bits + 2 * (lane + 1) * W, uint64_t{0});
      cleared[lane] = 1;
    }
    auto [t, begin, end] = locate(c);
    const Work& w = works[t];
    const EmbIndex in = w.in;
    const uint64_t rows = static_cast<uint64_t>(w.t.rows);
    if (word0[t + 1] == word0[t]) {  // nothing to mark: the range check only
      for (int64_t i = begin; i < end; ++i)
        if (static_cast<uint64_t>(row_of(in, i)) >= rows) {
          bad[c] = i;
          break;
        }
      return;
    }
    uint64_t* const marks = bits + 2 * (lane * W + word0[t]);
    const int shift = w.rep_shift;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = row_of(in, i);
      if (static_cast<uint64_t>(r) >= rows) {
        bad[c] = std::min(bad[c], i);
        continue;
      }
      if (r == in.padding_idx) continue;
      const uint64_t h = hash_row(r) >> shift, pos = 2 * (h & 31);
      const uint64_t m = marks[h >> 5];
      marks[h >> 5] = m | (uint64_t{1} << pos) | (m >> pos & 1) << (pos + 1);
    }
  });
  for (size_t t = 0; t < T; ++t)
    for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c)
      if (bad[c] != std::numeric_limits<int64_t>::max())
        index_out_of_range(works[t].op, works[t].idx_name, works[t].in, bad[c], works[t].t.rows);
  // -- checked: the writes start in `ordered`
  uint64_t* const repeated = bits + 2 * lanes * W;
  if (W) {  // repeated = met twice in one lane, or in two lanes
    constexpr int64_t kBlock = 4096;
    parallel_each((W + kBlock - 1) / kBlock, [&](int64_t k) {
      for (int64_t i = k * kBlock; i < std::min(W, (k + 1) * kBlock); ++i) {
        uint64_t out = 0;
        for (int half = 0; half < 2; ++half) {  // slots 64i..64i+31, then 64i+32..64i+63
          uint64_t s = 0, tw = 0;
          for (int64_t l = 0; l < lanes; ++l) {
            if (!cleared[l]) continue;  // a lane that took no chunk marked nothing
            const uint64_t ml = bits[2 * (l * W + i) + half];
            tw |= ml >> 1 | (s & ml);  // seen-twice bits moved onto the seen bits
            s |= ml;
          }
          out |= even_bits(tw) << (32 * half);
        }
        repeated[i] = out;
      }
    });
  }
  for (size_t t = 0; t < T; ++t)
    works[t].repeated = word0[t + 1] > word0[t] ? repeated + word0[t] : nullptr;
  std::vector<int64_t> rest0(T + 1, 0);  // each work's slice of the set-aside entries
  for (size_t t = 0; t < T; ++t) rest0[t + 1] = rest0[t] + works[t].nnz;
  EmbEntry* const rest = storage.get(2 * rest0[T]);
  EmbEntry* const sorted = rest + rest0[T];
  std::vector<int64_t> nrest(chunks, 0);
  parallel_each(chunks, [&](int64_t c) {
    auto [t, begin, end] = locate(c);
    const Work& w = works[t];
    int64_t b = 0;
    if (w.bag_start)  // the last bag starting at or before `begin` (earlier ones are empty)
      b = std::upper_bound(w.bag_start, w.bag_start + w.bags + 1, begin) - w.bag_start - 1;
    nrest[c] = ordered(w, b, begin, end, rest + rest0[t] + begin);
  });
  // Counting sort of the set-aside entries: chunk c's list is at rest0[t] + begin.
  int64_t total = 0;
  for (size_t t = 0; t < T; ++t) {
    Work& w = works[t];
    int64_t n = 0;
    for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c) n += nrest[c];
    plan_buckets(w, n, /*row_sums=*/false);
    w.perm = sorted + rest0[t];
    total += n;
  }
  std::vector<std::vector<int64_t>> hist(chunks);
  if (total)
    parallel_each(chunks, [&](int64_t c) {
      auto [t, begin, end] = locate(c);
      const Work& w = works[t];
      hist[c].assign(w.nbuckets, 0);
      const EmbEntry* const list = rest + rest0[t] + begin;
      for (int64_t k = 0; k < nrest[c]; ++k) ++hist[c][bucket_of(list[k].row, w.shift)];
    });
  // Exclusive prefix in (bucket, chunk) order: each chunk's slice of each bucket.
  for (size_t t = 0; t < T; ++t) {
    Work& w = works[t];
    w.bstart.assign(w.nbuckets + 1, 0);
    int64_t pos = 0;
    for (int64_t p = 0; p < w.nbuckets; ++p) {
      w.bstart[p] = pos;
      if (total)
        for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c) {
          const int64_t n = hist[c][p];
          hist[c][p] = pos;
          pos += n;
        }
    }
    w.bstart[w.nbuckets] = pos;
  }
  if (total)
    parallel_each(chunks, [&](int64_t c) {
      if (nrest[c] == 0) return;
      auto [t, begin, end] = locate(c);
      const Work& w = works[t];
      int64_t* const pos = hist[c].data();
      const EmbEntry* const list = rest + rest0[t] + begin;
      for (int64_t k = 0; k < nrest[c]; ++k) {
        EmbEntry* dst = w.perm + pos[bucket_of(list[k].row, w.shift)]++;
        *dst = list[k];
        prefetch_store_stream(dst);
      }
    });
}

}  // namespace ops
}  // namespace ipex_train
