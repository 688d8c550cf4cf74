// The parallel loops of the ATen wrappers, on torch's intra-op thread pool
// (OpenMP): chunks of a list of tensors, and items handed out one at a time.
// Needs only ATen/Parallel.h, so torch-light files can use it.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace ipex_train {
namespace ops {

// Elements per work item of the multi-tensor loop. A multiple of every vector
// width, small enough to balance, large enough to amortise the dispatch.
constexpr int64_t kChunk = 1 << 15;

// Runs fn(tensor_index, begin, length) over every kChunk-sized piece of every
// tensor, in parallel on torch's intra-op thread pool (OpenMP).
template <class Fn>
void for_each_chunk(const std::vector<int64_t>& numel, Fn&& fn) {
  std::vector<int64_t> first_chunk(numel.size() + 1, 0);
  for (size_t i = 0; i < numel.size(); ++i)
    first_chunk[i + 1] = first_chunk[i] + (numel[i] + kChunk - 1) / kChunk;
  const int64_t total = first_chunk.back();
  if (total == 0) return;
  int64_t elements = 0;
  for (int64_t n : numel) elements += n;
  if (elements <= kChunk) {  // too little work to pay for waking the thread pool
    for (size_t t = 0; t < numel.size(); ++t)
      for (int64_t b = 0; b < numel[t]; b += kChunk) fn(t, b, std::min(kChunk, numel[t] - b));
    return;
  }
  at::parallel_for(0, total, 1, [&](int64_t b, int64_t e) {
    size_t t = std::upper_bound(first_chunk.begin(), first_chunk.end(), b) - first_chunk.begin() - 1;
    for (int64_t c = b; c < e; ++c) {
      while (c >= first_chunk[t + 1]) ++t;
      const int64_t begin = (c - first_chunk[t]) * kChunk;
      fn(t, begin, std::min(kChunk, numel[t] - begin));
    }
  });
}

// Lanes for parallel_lanes with n items: min(n, threads).
inline int64_t lane_count(int64_t n) {
  return std::max<int64_t>(0, std::min<int64_t>(n, at::get_num_threads()));
}

// parallel_each, calling fn(lane, i): lane in [0, lane_count(n)) is the same
// for every item one task takes and no two tasks share it, so per-lane
// scratch needs no locks (a nested call runs all lanes in one task).
template <class Fn>
void parallel_lanes(int64_t n, Fn&& fn) {
  const int64_t lanes = lane_count(n);
  if (lanes == 0) return;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, lanes, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t lane = l0; lane < l1; ++lane)
      for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) fn(lane, i);
  });
}

// Runs fn(i) for every i in [0, n) on torch's threads, each thread taking the
// next unclaimed i. The items here are memory-bound, and on a shared machine
// equal items do not take equal times: with fixed halves (at::parallel_for),
// one thread often sat idle at the end of every phase. Which thread runs an
// item never changes its result.
template <class Fn>
void parallel_each(int64_t n, Fn&& fn) {
  parallel_lanes(n, [&](int64_t, int64_t i) { fn(i); });
}

}  // namespace ops
}  // namespace ipex_train
