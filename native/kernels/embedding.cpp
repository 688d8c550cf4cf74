// Sparse row updates and embedding-bag forward; see embedding.h for the model.
// Inner loops run over one row (dim elements) and are elementwise, so the
// compiler vectorizes them per ISA without changing results; the one reduction
// (row-wise Adagrad's mean of squares) uses fixed lanes summed in a fixed order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/embedding.h"

namespace ipex_train {
namespace IPT_ISA_NS {
namespace {

constexpr int kLanes = 16;

// Helpers are always inlined, so that the row width of each kernel copy (see
// Width below) reaches their loops as a constant; prefetch helpers must be (see
// prefetch_row).
#define IPT_INLINE __attribute__((always_inline)) inline

// Row widths the kernels are also compiled for as constants (row loops fully
// unrolled, no remainder code: the fp32 SGD backward ran 20-30% faster at 64
// than with the width read at run time). Any other width runs the same code
// with kD = 0, the width then read from the table. Same operations in the same
// order either way, so the same bits.
template <int64_t kD>
struct Width {
  static constexpr int64_t value = kD;
};

template <class Fn>
IPT_INLINE void by_width(int64_t d, Fn&& fn) {
  switch (d) {
    case 16: fn(Width<16>{}); break;
    case 32: fn(Width<32>{}); break;
    case 64: fn(Width<64>{}); break;
    case 128: fn(Width<128>{}); break;
    default: fn(Width<0>{});
  }
}

// Loads the fp32 master row r into buf (split) or returns a pointer to it (fp32).
IPT_INLINE void load_row(const EmbTable& t, int64_t r, float* buf, int64_t d) {
  const uint16_t* top = t.top + r * d;
  const uint16_t* trail = t.trail + r * d;
  for (int64_t j = 0; j < d; ++j) buf[j] = ipt_join(top[j], trail[j]);
}

IPT_INLINE void store_row(const EmbTable& t, int64_t r, const float* buf, int64_t d) {
  uint16_t* top = t.top + r * d;
  uint16_t* trail = t.trail + r * d;
  for (int64_t j = 0; j < d; ++j) ipt_split(buf[j], &top[j], &trail[j]);
}

// Prefetch helpers must be IPT_INLINE (always_inline): GCC finds a function
// that only prefetches to be free of side effects and deletes calls to it as
// dead code (GCC 12 did exactly that to prefetch_row, silently).
// tests/test_isa.py checks that the kernels keep their prefetch instructions.

IPT_INLINE void prefetch_row(const EmbTable& t, int64_t r, int64_t d) {
  if (t.fp32) {
    const char* p = reinterpret_cast<const char*>(t.fp32 + r * d);
    for (int64_t b = 0; b < d * 4; b += 64) __builtin_prefetch(p + b, 1);
  } else {
    const char* p = reinterpret_cast<const char*>(t.top + r * d);
    const char* q = reinterpret_cast<const char*>(t.trail + r * d);
    for (int64_t b = 0; b < d * 2; b += 64) {
      __builtin_prefetch(p + b, 1);
      __builtin_prefetch(q + b, 1);
    }
  }
}

// acc[j] (=|+=) scale * src[j], src fp32 or bf16.
template <bool kFirst, bool kBf16>
IPT_INLINE void accumulate(float* acc, const void* src, float scale, int64_t d) {
  if constexpr (kBf16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t j = 0; j < d; ++j) {
      const float v = scale * ipt_bf16_to_f32(s[j]);
      acc[j] = kFirst ? v : acc[j] + v;
    }
  } else {
    const float* s = static_cast<const float*>(src);
    for (int64_t j = 0; j < d; ++j) {
      const float v = scale * s[j];
      acc[j] = kFirst ? v : acc[j] + v;
    }
  }
}

IPT_INLINE void accumulate_any(bool first, bool bf16, float* acc, const void* src, float scale, int64_t d) {
  if (first) {
    if (bf16) accumulate<true, true>(acc, src, scale, d);
    else accumulate<true, false>(acc, src, scale, d);
  } else {
    if (bf16) accumulate<false, true>(acc, src, scale, d);
    else accumulate<false, false>(acc, src, scale, d);
  }
}

// Split-storage row += sc * src in one pass: join, add, split per element
// (the same fp32 operations as the fp32 path, so the same bits).
template <bool kBf16>
IPT_INLINE void add_split_row(uint16_t* __restrict__ top, uint16_t* __restrict__ trail,
                          const void* __restrict__ src, float sc, int64_t d) {
  for (int64_t j = 0; j < d; ++j) {
    const float v = kBf16 ? sc * ipt_bf16_to_f32(static_cast<const uint16_t*>(src)[j])
                          : sc * static_cast<const float*>(src)[j];
    const float w = ipt_join(top[j], trail[j]) + v;
    ipt_split(w, &top[j], &trail[j]);
  }
}

// Multiplier of an entry's gradient row (1 when there is none).
IPT_INLINE float entry_scale(const EmbGrad& g, const EmbEntry& en) {
  return g.scale ? g.scale[en.e] : g.src_scale ? g.src_scale[en.src] : 1.0f;
}

IPT_INLINE const void* grad_row(const EmbGrad& g, int64_t src) {
  return static_cast<const char*>(g.data) + src * g.ld * (g.bf16 ? 2 : 4);
}

// Sum of squares of g[0..d) in a fixed order: kLanes partial sums (lane j % kLanes),
// then the lanes added left to right. The same on every ISA.
IPT_INLINE float sum_squares(const float* g, int64_t d) {
  float lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes)
    for (int k = 0; k < kLanes; ++k) lane[k] = lane[k] + g[j + k] * g[j + k];
  for (int k = 0; j + k < d; ++k) lane[k] = lane[k] + g[j + k] * g[j + k];
  float s = 0.0f;
  for (int k = 0; k < kLanes; ++k) s = s + lane[k];
  return s;
}

// Applies the update rule to row r with gradient g (g may be modified).
IPT_INLINE void update_row(const EmbHyper& h, const EmbTable& t, int64_t r, float* g, float* wbuf,
                           int64_t d) {
  if (h.maximize)
    for (int64_t j = 0; j < d; ++j) g[j] = -g[j];
  float* w = t.fp32 ? t.fp32 + r * d : wbuf;
  if (!t.fp32) load_row(t, r, wbuf, d);
  const float lr = h.lr, eps = h.eps;
  switch (h.kind) {
    case kEmbSgd:
      for (int64_t j = 0; j < d; ++j) w[j] = w[j] - lr * g[j];
      break;
    case kEmbAdagrad: {
      float* s = t.state1 + r * d;
      for (int64_t j = 0; j < d; ++j) {
        s[j] = s[j] + g[j] * g[j];
        w[j] = w[j] - lr * (g[j] / (std::sqrt(s[j]) + eps));
      }
      break;
    }
    case kEmbRowWiseAdagrad: {
      const float mean = d > 0 ? sum_squares(g, d) / static_cast<float>(d) : 0.0f;
      const float s = t.state1[r] + mean;
      t.state1[r] = s;
      const float mult = lr / (std::sqrt(s) + eps);
      for (int64_t j = 0; j < d; ++j) w[j] = w[j] - mult * g[j];
      break;
    }
    default: {  // kEmbAdam
      float* m = t.state1 + r * d;
      float* v = t.state2 + r * d;
      const float c1 = 1.0f - h.beta1, c2 = 1.0f - h.beta2, neg_step = -h.step_size;
      for (int64_t j = 0; j < d; ++j) {
        const float mj = m[j] + (g[j] - m[j]) * c1;
        const float vj = v[j] + (g[j] * g[j] - v[j]) * c2;
        m[j] = mj;
        v[j] = vj;
        w[j] = w[j] + neg_step * (mj / (std::sqrt(vj) + eps));
      }
    }
  }
  if (!t.fp32) store_row(t, r, wbuf, d);
}

// Prefetches gradient source row src (rows of a sparse grad are read in
// bucket order, i.e. scattered).
IPT_INLINE void prefetch_src(const EmbGrad& g, int64_t src, int64_t d) {
  const char* p = static_cast<const char*>(grad_row(g, src));
  for (int64_t b = 0; b < d * (g.bf16 ? 2 : 4); b += 64) __builtin_prefetch(p + b);
}

struct Scratch {
  std::vector<int64_t> keys;  // open-addressing table: row or -1
  std::vector<int32_t> slot;  // its slot in urows/acc
  std::vector<int64_t> urows;
  std::vector<float> acc;
  std::vector<float> wbuf;
};

Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

template <int64_t kD>
void bucket_add(const EmbTable& t, const EmbGrad& g, float alpha, const EmbEntry* ents, int64_t n) {
  const int64_t d = kD ? kD : t.dim;
  constexpr int64_t kAhead = 8;  // rows in flight per thread (A/B measured: 8 beats 4, 12, 16)
  for (int64_t k = 0; k < n; ++k) {
    if (k + kAhead < n) {
      prefetch_row(t, ents[k + kAhead].row, d);
      prefetch_src(g, ents[k + kAhead].src, d);
    }
    const EmbEntry& en = ents[k];
    const int64_t r = en.row;
    const float sc = alpha * entry_scale(g, en);
    const void* src = grad_row(g, en.src);
    if (t.fp32) {
      accumulate_any(false, g.bf16, t.fp32 + r * d, src, sc, d);
    } else if (g.bf16) {
      add_split_row<true>(t.top + r * d, t.trail + r * d, src, sc, d);
    } else {
      add_split_row<false>(t.top + r * d, t.trail + r * d, src, sc, d);
    }
  }
}

template <int64_t kD>
void bucket_update(const EmbHyper& h, const EmbTable& t, const EmbGrad& g, const EmbEntry* ents,
                   int64_t n) {
  const int64_t d = kD ? kD : t.dim;
  Scratch& s = scratch();
  int64_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  s.keys.assign(cap, -1);
  s.slot.resize(cap);
  s.urows.resize(n);
  s.acc.resize(n * d);
  s.wbuf.resize(d);
  const uint64_t mask = static_cast<uint64_t>(cap - 1);
  int64_t nu = 0;
  constexpr int64_t kSrcAhead = 8;
  for (int64_t k = 0; k < n; ++k) {
    if (k + kSrcAhead < n) prefetch_src(g, ents[k + kSrcAhead].src, d);
    const int64_t r = ents[k].row;
    uint64_t hsh = (hash_row(r) >> 20) & mask;
    while (s.keys[hsh] != -1 && s.keys[hsh] != r) hsh = (hsh + 1) & mask;
    const float sc = entry_scale(g, ents[k]);
    const bool fresh = s.keys[hsh] == -1;
    if (fresh) {
      s.keys[hsh] = r;
      s.slot[hsh] = static_cast<int32_t>(nu);
      s.urows[nu++] = r;
      // Buckets are sized to stay in L2 (ops layer), so the row fetched now is
      // still cached when the update phase below reaches it.
      prefetch_row(t, r, d);
      if (h.kind == kEmbRowWiseAdagrad) __builtin_prefetch(t.state1 + r, 1);
    }
    accumulate_any(fresh, g.bf16, s.acc.data() + s.slot[hsh] * d, grad_row(g, ents[k].src), sc, d);
  }
  constexpr int64_t kAhead = 8;
  const int64_t state_width = h.kind == kEmbRowWiseAdagrad ? 1 : d;
  for (int64_t u = 0; u < nu; ++u) {
    if (u + kAhead < nu) {
      const int64_t rn = s.urows[u + kAhead];
      prefetch_row(t, rn, d);
      if (t.state1)
        for (int64_t x = 0; x < state_width; x += 16) __builtin_prefetch(t.state1 + rn * state_width + x, 1);
      if (t.state2)
        for (int64_t x = 0; x < d; x += 16) __builtin_prefetch(t.state2 + rn * d + x, 1);
    }
    update_row(h, t, s.urows[u], s.acc.data() + u * d, s.wbuf.data(), d);
  }
}

// Bit hash_row(r) >> shift of the bitmap `bits` (shift < 64).
IPT_INLINE bool bit_set(const uint64_t* bits, int shift, int64_t r) {
  const uint64_t h = hash_row(r) >> shift;
  return (bits[h >> 6] >> (h & 63)) & 1;
}

template <int64_t kD>
int64_t ordered_apply(float alpha, const EmbTable& t, const EmbGrad& g, EmbIndex in,
                      const int64_t* st, int64_t b, int64_t e0, int64_t e1, const uint64_t* rep,
                      int rep_shift, EmbEntry* rest) {
  const int64_t d = kD ? kD : t.dim;
  constexpr int64_t kAhead = 8;  // rows in flight, as bucket_add
  int64_t nrest = 0;
  for (int64_t e = e0; e < e1; ++e) {
    if (e + kAhead < e1) {
      const int64_t rn = row_of(in, e + kAhead);
      if (!rep || !bit_set(rep, rep_shift, rn)) prefetch_row(t, rn, d);
    }
    if (st)
      while (st[b + 1] <= e) ++b;
    const int64_t r = row_of(in, e);
    if (r == in.padding_idx) continue;
    const EmbEntry en{r, static_cast<int32_t>(st ? b : e), static_cast<int32_t>(e)};
    if (rep && bit_set(rep, rep_shift, r)) {
      rest[nrest++] = en;
      continue;
    }
    const void* src = grad_row(g, en.src);
    const float sc = alpha * entry_scale(g, en);
    if (t.fp32) accumulate_any(false, g.bf16, t.fp32 + r * d, src, sc, d);
    else if (g.bf16) add_split_row<true>(t.top + r * d, t.trail + r * d, src, sc, d);
    else add_split_row<false>(t.top + r * d, t.trail + r * d, src, sc, d);
  }
  return nrest;
}

}  // namespace

void emb_ordered_apply(float alpha, const EmbTable& t, EmbGrad g, EmbIndex in,
                       const int64_t* bag_start, int64_t b, int64_t e0, int64_t e1,
                       const uint64_t* repeated, int rep_shift, EmbEntry* rest, int64_t* nrest) {
  by_width(t.dim, [&](auto w) {
    *nrest = ordered_apply<decltype(w)::value>(alpha, t, g, in, bag_start, b, e0, e1, repeated,
                                               rep_shift, rest);
  });
}

void emb_bucket_add(const EmbTable& t, EmbGrad g, float alpha, const EmbEntry* ents, int64_t n) {
  by_width(t.dim, [&](auto w) { bucket_add<decltype(w)::value>(t, g, alpha, ents, n); });
}

void emb_bucket_update(const EmbHyper& h, const EmbTable& t, EmbGrad g, const EmbEntry* ents,
                       int64_t n) {
  if (n == 0) return;
  by_width(t.dim, [&](auto w) { bucket_update<decltype(w)::value>(h, t, g, ents, n); });
}

void emb_dense_update(const EmbHyper& h, const EmbTable& t, const void* grad, bool bf16,
                      int64_t r0, int64_t r1) {
  const int64_t d = t.dim;
  Scratch& s = scratch();
  s.acc.resize(d);
  s.wbuf.resize(d);
  for (int64_t r = r0; r < r1; ++r) {
    const void* src = static_cast<const char*>(grad) + r * d * (bf16 ? 2 : 4);
    accumulate_any(true, bf16, s.acc.data(), src, 1.0f, d);
    update_row(h, t, r, s.acc.data(), s.wbuf.data(), d);
  }
}

namespace {

// Pools columns [j0, j0 + W) of one bag into registers (a[W] stays in vector
// registers: W is a compile-time constant). Per element the additions run in
// entry order, so the result equals the plain loop's bit for bit. The first
// column block prefetches the row kDist entries ahead (up to e_stop).
constexpr int64_t kDist = 16;

// 8 fp32 lanes as a GCC vector: one ymm register on AVX2/AVX-512, two xmm
// on the baseline level. Lane-wise adds keep the per-element entry order.
typedef float V8 __attribute__((vector_size(32)));
typedef uint16_t V8u16 __attribute__((vector_size(16)));
typedef uint32_t V8u32 __attribute__((vector_size(32)));

static inline V8 load8(const float* p) {
  V8 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

static inline V8 load8_bf16(const uint16_t* p) {
  V8u16 h;
  __builtin_memcpy(&h, p, sizeof h);
  const V8u32 u = __builtin_convertvector(h, V8u32) << 16;
  V8 v;
  __builtin_memcpy(&v, &u, sizeof v);
  return v;
}

// Row r is a valid row id (the forward checks ids as it goes; see emb_forward).
IPT_INLINE bool in_table(const EmbTable& t, int64_t r) {
  return static_cast<uint64_t>(r) < static_cast<uint64_t>(t.rows);
}

template <int W, bool kTop, bool kPsw>
IPT_INLINE void pool_cols(const EmbTable& t, int64_t d, EmbIndex in, const float* psw, int64_t e0,
                          int64_t e1, int64_t j0, float* out, bool prefetch, int64_t e_stop,
                          int64_t* first_bad) {
  const int64_t row_bytes = d * (kTop ? 2 : 4);
  const char* base = kTop ? reinterpret_cast<const char*>(t.top) : reinterpret_cast<const char*>(t.fp32);
  if constexpr (W % 8 == 0) {
    constexpr int kV = W / 8;
    V8 a[kV];
#pragma GCC unroll 8
    for (int k = 0; k < kV; ++k) a[k] = V8{0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t e = e0; e < e1; ++e) {
      if (prefetch && e + kDist < e_stop) {
        const int64_t rn = row_of(in, e + kDist);
        if (in_table(t, rn)) {
          const char* p = base + rn * row_bytes;
          for (int64_t x = 0; x < row_bytes; x += 64) __builtin_prefetch(p + x);
        }
      }
      const int64_t r = row_of(in, e);
      if (!in_table(t, r)) {
        *first_bad = std::min(*first_bad, e);
        continue;
      }
      if (r == in.padding_idx) continue;
      const float w = kPsw ? psw[e] : 1.0f;
#pragma GCC unroll 8
      for (int k = 0; k < kV; ++k) {
        const V8 v = kTop ? load8_bf16(t.top + r * d + j0 + 8 * k) : load8(t.fp32 + r * d + j0 + 8 * k);
        a[k] = kPsw ? a[k] + w * v : a[k] + v;
      }
    }
#pragma GCC unroll 8
    for (int k = 0; k < kV; ++k) __builtin_memcpy(out + 8 * k, &a[k], sizeof(V8));
  } else {
    float a[W];
    for (int k = 0; k < W; ++k) a[k] = 0.0f;
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t r = row_of(in, e);
      if (!in_table(t, r)) {
        *first_bad = std::min(*first_bad, e);
        continue;
      }
      if (r == in.padding_idx) continue;
      const float w = kPsw ? psw[e] : 1.0f;
      for (int k = 0; k < W; ++k) {
        const float v = kTop ? ipt_bf16_to_f32(t.top[r * d + j0 + k]) : t.fp32[r * d + j0 + k];
        a[k] = kPsw ? a[k] + w * v : a[k] + v;
      }
    }
    for (int k = 0; k < W; ++k) out[k] = a[k];
  }
}

template <bool kTop, bool kPsw>
IPT_INLINE void pool_bag(const EmbTable& t, int64_t d, EmbIndex in, const float* psw, int64_t e0,
                         int64_t e1, float* acc, int64_t e_stop, int64_t* bad) {
  int64_t j = 0;
  for (; j + 64 <= d; j += 64) pool_cols<64, kTop, kPsw>(t, d, in, psw, e0, e1, j, acc + j, j == 0, e_stop, bad);
  for (; j + 16 <= d; j += 16) pool_cols<16, kTop, kPsw>(t, d, in, psw, e0, e1, j, acc + j, j == 0, e_stop, bad);
  for (; j + 8 <= d; j += 8) pool_cols<8, kTop, kPsw>(t, d, in, psw, e0, e1, j, acc + j, j == 0, e_stop, bad);
  for (; j < d; ++j) pool_cols<1, kTop, kPsw>(t, d, in, psw, e0, e1, j, acc + j, j == 0, e_stop, bad);
}

template <int64_t kD>
void forward(const EmbTable& t, EmbIndex in, const EmbBags& bags, int64_t b0, int64_t b1,
             void* out, bool out_bf16, int64_t ld, int64_t* first_bad) {
  const int64_t d = kD ? kD : t.dim;
  Scratch& s = scratch();
  s.acc.resize(d);
  float* acc = s.acc.data();
  const int64_t e_stop = bags.start[b1];
  if (d == 0) {  // no columns to pool: still report bad row ids
    for (int64_t e = bags.start[b0]; e < e_stop; ++e)
      if (!in_table(t, row_of(in, e))) *first_bad = std::min(*first_bad, e);
    return;
  }
  for (int64_t e = bags.start[b0]; e < std::min(e_stop, bags.start[b0] + kDist); ++e) {
    const int64_t r = row_of(in, e);
    if (!in_table(t, r)) continue;
    const char* p = t.fp32 ? reinterpret_cast<const char*>(t.fp32 + r * d)
                           : reinterpret_cast<const char*>(t.top + r * d);
    for (int64_t x = 0; x < d * (t.fp32 ? 4 : 2); x += 64) __builtin_prefetch(p + x);
  }
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t e0 = bags.start[b], e1 = bags.start[b + 1];
    if (t.fp32) {
      if (bags.psw) pool_bag<false, true>(t, d, in, bags.psw, e0, e1, acc, e_stop, first_bad);
      else pool_bag<false, false>(t, d, in, bags.psw, e0, e1, acc, e_stop, first_bad);
    } else {
      if (bags.psw) pool_bag<true, true>(t, d, in, bags.psw, e0, e1, acc, e_stop, first_bad);
      else pool_bag<true, false>(t, d, in, bags.psw, e0, e1, acc, e_stop, first_bad);
    }
    if (bags.mean) {
      int64_t count = 0;
      for (int64_t e = e0; e < e1; ++e) count += row_of(in, e) != in.padding_idx;
      if (count > 0) {
        const float inv = 1.0f / static_cast<float>(count);
        for (int64_t j = 0; j < d; ++j) acc[j] = acc[j] * inv;
      }
    }
    if (out_bf16) {
      uint16_t* o = static_cast<uint16_t*>(out) + b * ld;
      for (int64_t j = 0; j < d; ++j) o[j] = ipt_f32_to_bf16_rne(acc[j]);
    } else {
      float* o = static_cast<float*>(out) + b * ld;
      for (int64_t j = 0; j < d; ++j) o[j] = acc[j];
    }
  }
}

}  // namespace

void emb_forward(const EmbTable& t, EmbIndex in, const EmbBags& bags, int64_t b0, int64_t b1,
                 void* out, bool out_bf16, int64_t ld, int64_t* first_bad) {
  by_width(t.dim, [&](auto w) {
    forward<decltype(w)::value>(t, in, bags, b0, b1, out, out_bf16, ld, first_bad);
  });
}

}  // namespace IPT_ISA_NS
}  // namespace ipex_train
