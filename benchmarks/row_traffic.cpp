// The memory floor of a fused embedding training step on this machine: bare
// loops that do only the step's table traffic, nothing else (no sort, no
// argument checks, no autograd, no Python). benchmarks/embedding.py builds and
// runs it next to the real variants and prints its figure as the bound.
//
//   forward: pool every lookup's row into its bag's sum (bag order, rows
//            prefetched ahead, as emb_forward does)
//   update : row += -lr * grad_row(bag) for every lookup, in lookup order, on
//            the batch the forward just read (rows prefetched for writing)
//   add    : row += -lr * values[e] for every lookup of another (cold) batch,
//            values [lookups, dim] read in order: the traffic of sparse_add_
//            with an nn.EmbeddingBag(sparse=True) gradient
//   rowwise: row-wise Adagrad's update after a forward of the same batch:
//            the update's row traffic plus one state float per row (a random
//            cache line read and written back): s[r] += mean(g^2),
//            row += -lr / (sqrt(s[r]) + eps) * g, state prefetched with the row
//
// Uniform random rows over a table on transparent huge pages, one new batch per
// round out of 16 (a batch's rows have left the caches when it comes back).
// Threads: OpenMP (OMP_NUM_THREADS), each taking the next block of whole bags.
// The update lets two threads meet on a row that occurs twice in a batch (~3%
// of lookups here): harmless for a timing, and no part of ipex_train does it.
//
//   g++ -O3 -mavx2 -mfma -fopenmp row_traffic.cpp -o row_traffic
//   ./row_traffic ROWS DIM BAGS PER_BAG ROUNDS
//     -> "forward_ms update_ms add_ms rowwise_ms" (minima), then the same four
//        as medians
//   ROW_TRAFFIC_CLOCK=cpu: process CPU time (all threads) instead of wall time
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kAhead = 8;  // rows prefetched ahead

// fn(first bag, end bag) over blocks of about 1024 lookups, each thread taking
// the next block.
template <class Fn>
void each_block(int64_t bags, int64_t per_bag, Fn&& fn) {
  const int64_t step = std::max<int64_t>(1, 1024 / per_bag);
  const int64_t blocks = (bags + step - 1) / step;
  std::atomic<int64_t> next{0};
#pragma omp parallel
  for (int64_t b; (b = next.fetch_add(1)) < blocks;) fn(b * step, std::min(bags, (b + 1) * step));
}

// Milliseconds: wall time, or with ROW_TRAFFIC_CLOCK=cpu the CPU time of the
// whole process (all threads), which other processes' load inflates far less.
bool g_cpu_clock = false;

double now_ms() {
  timespec ts;
  clock_gettime(g_cpu_clock ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// One forward, one update (the batch the forward read), one add, then an
// untimed forward of a third batch and its row-wise Adagrad update per round;
// the times of the rounds after two warm-up rounds go to ts[0..3]. kDim: the
// row width as a constant (0: use dim), as the ipex_train kernels are compiled
// for the common widths.
template <int64_t kDim>
void time_rounds(float* table, float* state, int64_t dim_rt, const std::vector<std::vector<int64_t>>& idx,
                 int64_t bags, int64_t per_bag, int64_t rounds, float* pooled, const float* grad,
                 float* const values[2], std::vector<double>* ts) {
  const int64_t dim = kDim ? kDim : dim_rt;
  const int64_t batches = static_cast<int64_t>(idx.size());
  // row ix[e] += -lr * src[e / per_src], every lookup, rows prefetched for writing
  auto update_rows = [&](const int64_t* ix, const float* src, int64_t per_src) {
    each_block(bags, per_bag, [&](int64_t b0, int64_t b1) {
      const int64_t e0 = b0 * per_bag, e1 = b1 * per_bag;
      for (int64_t e = e0; e < e1; ++e) {
        if (e + kAhead < e1) {
          const char* p = reinterpret_cast<const char*>(table + ix[e + kAhead] * dim);
          for (int64_t x = 0; x < dim * 4; x += 64) __builtin_prefetch(p + x, 1);
        }
        float* __restrict__ row = table + ix[e] * dim;
        const float* __restrict__ g = src + (e / per_src) * dim;
        for (int64_t j = 0; j < dim; ++j) row[j] += -0.01f * g[j];
      }
    });
  };
  // pooled[bag] += row ix[e], every lookup, in bag order
  auto forward = [&](const int64_t* ix) {
    each_block(bags, per_bag, [&](int64_t b0, int64_t b1) {
      const int64_t e0 = b0 * per_bag, e1 = b1 * per_bag;
      for (int64_t e = e0; e < e1; ++e) {
        if (e + kAhead < e1) {
          const char* p = reinterpret_cast<const char*>(table + ix[e + kAhead] * dim);
          for (int64_t x = 0; x < dim * 4; x += 64) __builtin_prefetch(p + x);
        }
        const float* __restrict__ row = table + ix[e] * dim;
        float* __restrict__ acc = pooled + (e / per_bag) * dim;
        for (int64_t j = 0; j < dim; ++j) acc[j] += row[j];
      }
    });
  };
  // row-wise Adagrad on row ix[e] with its bag's gradient row, every lookup
  auto rowwise_rows = [&](const int64_t* ix) {
    each_block(bags, per_bag, [&](int64_t b0, int64_t b1) {
      const int64_t e0 = b0 * per_bag, e1 = b1 * per_bag;
      for (int64_t e = e0; e < e1; ++e) {
        if (e + kAhead < e1) {
          const char* p = reinterpret_cast<const char*>(table + ix[e + kAhead] * dim);
          for (int64_t x = 0; x < dim * 4; x += 64) __builtin_prefetch(p + x, 1);
          __builtin_prefetch(state + ix[e + kAhead], 1);
        }
        float* __restrict__ row = table + ix[e] * dim;
        const float* __restrict__ g = grad + (e / per_bag) * dim;
        float lane[16] = {};  // 16 partial sums, as the kernels: no serial chain
        int64_t j = 0;
        for (; j + 16 <= dim; j += 16)
          for (int k = 0; k < 16; ++k) lane[k] += g[j + k] * g[j + k];
        for (; j < dim; ++j) lane[0] += g[j] * g[j];
        float sq = 0.0f;
        for (float v : lane) sq += v;
        const float s = state[ix[e]] + sq / static_cast<float>(dim);
        state[ix[e]] = s;
        const float mult = -0.01f / (std::sqrt(s) + 1e-8f);
        for (j = 0; j < dim; ++j) row[j] += mult * g[j];
      }
    });
  };
  for (int64_t round = 0; round < rounds + 2; ++round) {
    const int64_t* ix = idx[round % batches].data();
    double t0 = now_ms();
    forward(ix);
    const double fwd = now_ms() - t0;
    t0 = now_ms();
    update_rows(ix, grad, per_bag);  // gradient row: the lookup's bag
    const double upd = now_ms() - t0;
    const int64_t* cold = idx[(round + batches / 2) % batches].data();
    t0 = now_ms();
    update_rows(cold, values[round % 2], 1);  // one values row per lookup
    const double add = now_ms() - t0;
    const int64_t* third = idx[(round + batches / 4) % batches].data();
    forward(third);  // the row-wise update, too, follows its batch's forward
    t0 = now_ms();
    rowwise_rows(third);
    const double rw = now_ms() - t0;
    if (round >= 2) {
      ts[0].push_back(fwd);
      ts[1].push_back(upd);
      ts[2].push_back(add);
      ts[3].push_back(rw);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s ROWS DIM BAGS PER_BAG ROUNDS\n", argv[0]);
    return 2;
  }
  const char* clk = std::getenv("ROW_TRAFFIC_CLOCK");
  g_cpu_clock = clk && std::strcmp(clk, "cpu") == 0;
  const int64_t rows = std::atoll(argv[1]), dim = std::atoll(argv[2]), bags = std::atoll(argv[3]);
  const int64_t per_bag = std::atoll(argv[4]), rounds = std::atoll(argv[5]);
  const int64_t n = bags * per_bag, batches = 16;  // n lookups per batch
  if (rows < 1 || dim < 1 || bags < 1 || per_bag < 1 || rounds < 1) {
    std::fprintf(stderr, "all arguments must be positive\n");
    return 2;
  }
  const size_t huge = size_t{2} << 20;
  const size_t bytes = (static_cast<size_t>(rows * dim) * 4 + huge - 1) / huge * huge;
  float* table = static_cast<float*>(std::aligned_alloc(huge, bytes));
  const size_t sbytes = (static_cast<size_t>(rows) * 4 + huge - 1) / huge * huge;
  float* state = static_cast<float*>(std::aligned_alloc(huge, sbytes));
  if (!table || !state) return 1;
  madvise(table, bytes, MADV_HUGEPAGE);
  madvise(state, sbytes, MADV_HUGEPAGE);
  std::memset(state, 0, sbytes);
  std::mt19937_64 rng(0);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < rows * dim; ++i) table[i] = normal(rng);
  std::vector<std::vector<int64_t>> idx(batches, std::vector<int64_t>(n));
  for (auto& b : idx)
    for (auto& r : b) r = static_cast<int64_t>(rng() % static_cast<uint64_t>(rows));
  std::vector<float> pooled(bags * dim), grad(bags * dim, 1e-3f);
  std::vector<float> values0(n * dim, 1e-3f), values1(n * dim, 1e-3f);
  float* const values[2] = {values0.data(), values1.data()};
  std::vector<double> ts[4];
  auto run = [&](auto width) {
    constexpr int64_t kDim = decltype(width)::value;
    time_rounds<kDim>(table, state, dim, idx, bags, per_bag, rounds, pooled.data(), grad.data(), values, ts);
  };
  switch (dim) {
    case 16: run(std::integral_constant<int64_t, 16>{}); break;
    case 32: run(std::integral_constant<int64_t, 32>{}); break;
    case 64: run(std::integral_constant<int64_t, 64>{}); break;
    case 128: run(std::integral_constant<int64_t, 128>{}); break;
    default: run(std::integral_constant<int64_t, 0>{});
  }
  volatile float sink = 0;  // keeps the pooled sums (and so the forward) live
  for (float v : pooled) sink = sink + v;
  double lo[4], med[4];
  for (int k = 0; k < 4; ++k) {
    std::sort(ts[k].begin(), ts[k].end());
    lo[k] = ts[k].front();
    const size_t m = ts[k].size();
    med[k] = m % 2 ? ts[k][m / 2] : (ts[k][m / 2 - 1] + ts[k][m / 2]) / 2;
  }
  std::printf("%.4f %.4f %.4f %.4f %.4f %.4f %.4f %.4f\n", lo[0], lo[1], lo[2], lo[3], med[0],
              med[1], med[2], med[3]);
  std::free(table);
  std::free(state);
  return 0;
}
