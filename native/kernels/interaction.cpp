// DLRM interaction kernels (see interaction.h for the layout and the fixed
// summation orders). Each sample's rows are first widened into an fp32
// scratch block padded to a multiple of 16 with zeros; the arithmetic then
// runs on compile-time-sized blocks the compiler vectorizes per level.
#include "kernels/interaction.h"

#include <vector>

#include "kernels/bf16.h"

namespace ipex_train {
namespace IPT_ISA_NS {
namespace {

constexpr int kLanes = 16;

static inline int64_t padded(int64_t d) { return (d + kLanes - 1) / kLanes * kLanes; }

// Rows t_0..t_F of sample b into rows[n][dpad] (fp32, zero tail).
static void load_rows(const InteractionInputs& in, int64_t b, int64_t dpad, float* rows) {
  const int64_t n = in.num_emb + 1, d = in.dim;
  for (int64_t i = 0; i < n; ++i) {
    float* dst = rows + i * dpad;
    const int64_t off = i == 0 ? b * in.dense_stride : b * in.emb_stride_b + (i - 1) * in.emb_stride_f;
    const void* base = i == 0 ? in.dense : in.emb;
    if (in.is_bf16) {
      const uint16_t* src = static_cast<const uint16_t*>(base) + off;
      for (int64_t k = 0; k < d; ++k) dst[k] = ipt_bf16_to_f32(src[k]);
    } else {
      const float* src = static_cast<const float*>(base) + off;
      for (int64_t k = 0; k < d; ++k) dst[k] = src[k];
    }
    for (int64_t k = d; k < dpad; ++k) dst[k] = 0.0f;
  }
}

// Two implementations of the same arithmetic (same terms, same order, so
// the same bits; tests/nn/test_interaction.py checks every level):
// AVX-512 levels use 16-lane GCC vectors and two-row blocking (32 vector
// registers hold it); below AVX-512 GCC spills 64-byte vectors to memory
// (10x slower), so those levels keep plain float arrays it vectorizes well.

// n results (fp32 sums) written as the output's type, bf16 rounded to nearest even.
template <class T>
static inline void store(T* dst, const float* src, int64_t n);
template <>
inline void store<float>(float* dst, const float* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = src[k];
}
template <>
inline void store<uint16_t>(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = ipt_f32_to_bf16_rne(src[k]);
}

// Row b of the output gradient [B, width] (fp32 or bf16) as fp32.
static inline void load_grad_row(const void* grad_out, bool grad_is_bf16, int64_t b,
                                 int64_t width, float* go) {
  if (grad_is_bf16) {
    const uint16_t* src = static_cast<const uint16_t*>(grad_out) + b * width;
    for (int64_t k = 0; k < width; ++k) go[k] = ipt_bf16_to_f32(src[k]);
  } else {
    const float* src = static_cast<const float*>(grad_out) + b * width;
    for (int64_t k = 0; k < width; ++k) go[k] = src[k];
  }
}

#if defined(__AVX512F__)

// Sixteen lanes as one GCC vector: at AVX-512 one register, at AVX2 two, at
// the baseline four; elementwise semantics (and so the bits) are the same.
typedef float ipt_v16 __attribute__((vector_size(64)));
typedef int ipt_i16 __attribute__((vector_size(64)));

static inline ipt_v16 load16(const float* p) {
  ipt_v16 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// Two-source lane pick: lanes of a are 0..15, lanes of b 16..31.
#define IPT_PICK(a, b, ...) __builtin_shuffle((a), (b), ipt_i16{__VA_ARGS__})

// out[k] = halving tree of s[k] for 16 lane-sum vectors at once: each level
// adds the same lane pairs as the per-dot tree (s_l + s_{l+8}, s_l + s_{l+4},
// s_l + s_{l+2}, s_0 + s_1, left operand the lower lane), with two dots'
// halves packed per register, so the bits equal 16 separate trees.
static inline void halving_trees16(const ipt_v16* s, float* out) {
  ipt_v16 x[8], y[4], z[2];
  for (int q = 0; q < 8; ++q)  // lanes 0-7: dot 2q's s_l + s_{l+8}; 8-15: dot 2q+1's
    x[q] = IPT_PICK(s[2 * q], s[2 * q + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           IPT_PICK(s[2 * q], s[2 * q + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29,
                    30, 31);
  for (int q = 0; q < 4; ++q)  // four dots x 4 lanes: + s_{l+4}
    y[q] = IPT_PICK(x[2 * q], x[2 * q + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           IPT_PICK(x[2 * q], x[2 * q + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30,
                    31);
  for (int q = 0; q < 2; ++q)  // eight dots x 2 lanes: + s_{l+2}
    z[q] = IPT_PICK(y[2 * q], y[2 * q + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           IPT_PICK(y[2 * q], y[2 * q + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30,
                    31);
  const ipt_v16 w = IPT_PICK(z[0], z[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
                    IPT_PICK(z[0], z[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  __builtin_memcpy(out, &w, sizeof w);
}
#undef IPT_PICK

// out[p] = <rows + ia[p], rows + ja[p]> for 16 pairs p (ia, ja: element
// offsets of the two rows): lane sums over NC 16-chunks in ascending order
// (NC = 0: nc at run time), then the trees. One pair at a time keeps the
// register count low; the 16 independent sums overlap in the pipeline.
template <int NC>
static inline void dots16(const float* rows, const int64_t* ia, const int64_t* ja, int64_t nc,
                          float* out) {
  ipt_v16 s[16];
  for (int p = 0; p < 16; ++p) {
    const float* a = rows + ia[p];
    const float* b = rows + ja[p];
    ipt_v16 acc = ipt_v16{};
    if (NC > 0) {
      for (int c = 0; c < NC; ++c) acc = acc + load16(a + c * kLanes) * load16(b + c * kLanes);
    } else {
      for (int64_t c = 0; c < nc; ++c) acc = acc + load16(a + c * kLanes) * load16(b + c * kLanes);
    }
    s[p] = acc;
  }
  halving_trees16(s, out);
}

template <int NC>
static void all_dots(const float* rows, const int64_t* ia, const int64_t* ja, int64_t groups,
                     int64_t nc, float* z) {
  for (int64_t g = 0; g < groups; ++g) dots16<NC>(rows, ia + g * 16, ja + g * 16, nc, z + g * 16);
}

// The lane-sum vectors of all pairs of rows i, i + 1 against rows j < i (and
// of pair (i + 1, i)): each t_j chunk is loaded once for two pairs. s[k] is
// pair k's vector, in output order; the trees then run 16 at a time.
template <int NC>
static void all_dots_rowpairs(const float* rows, int64_t n, int64_t groups, ipt_v16* s,
                              float* z) {
  constexpr int64_t dpad = NC * kLanes;
  for (int64_t i = 1; i < n; i += 2) {
    const bool two = i + 1 < n;
    ipt_v16 a[NC], b[NC];
    for (int c = 0; c < NC; ++c) {
      a[c] = load16(rows + i * dpad + c * kLanes);
      b[c] = two ? load16(rows + (i + 1) * dpad + c * kLanes) : ipt_v16{};
    }
    ipt_v16* si = s + i * (i - 1) / 2;
    ipt_v16* si1 = s + (i + 1) * i / 2;
    for (int64_t j = 0; j < i; ++j) {
      ipt_v16 x = ipt_v16{}, y = ipt_v16{};
      for (int c = 0; c < NC; ++c) {
        const ipt_v16 t = load16(rows + j * dpad + c * kLanes);
        x = x + a[c] * t;
        y = y + b[c] * t;
      }
      si[j] = x;
      if (two) si1[j] = y;
    }
    if (two) {
      ipt_v16 y = ipt_v16{};
      for (int c = 0; c < NC; ++c) y = y + b[c] * a[c];
      si1[i] = y;
    }
  }
  const int64_t pairs = n * (n - 1) / 2;
  for (int64_t k = pairs; k < groups * 16; ++k) s[k] = ipt_v16{};  // padding: trees of zeros
  for (int64_t g = 0; g < groups; ++g) halving_trees16(s + g * 16, z + g * 16);
}

// acc[0 .. NB*16) = sum_{j != i, ascending} g_ij * rows[j][d0 ..], with g_ij
// read from the strict lower triangle gz (g_ij = gz[i(i-1)/2 + j] for j < i,
// gz[j(j-1)/2 + i] for j > i): two loops, no test of j against i.
template <int NB>
static inline void weighted_rows(const float* rows, const float* gz, int64_t n, int64_t i,
                                 int64_t dpad, int64_t d0, float* acc) {
  ipt_v16 a[NB];
  for (int k = 0; k < NB; ++k) a[k] = ipt_v16{};
  const float* gi = gz + i * (i - 1) / 2;
  for (int64_t j = 0; j < i; ++j) {
    const float gj = gi[j];
    const float* r = rows + j * dpad + d0;
    for (int k = 0; k < NB; ++k) a[k] = a[k] + gj * load16(r + k * kLanes);
  }
  for (int64_t j = i + 1; j < n; ++j) {
    const float gj = gz[j * (j - 1) / 2 + i];
    const float* r = rows + j * dpad + d0;
    for (int k = 0; k < NB; ++k) a[k] = a[k] + gj * load16(r + k * kLanes);
  }
  __builtin_memcpy(acc + d0, a, sizeof a);
}

// weighted_rows for rows i and i + 1 at once (each t_j chunk loaded once for
// both): the same terms in the same order per row; j = i feeds only row
// i + 1, j = i + 1 only row i.
template <int NB>
static inline void weighted_row_pair(const float* rows, const float* gz, int64_t n, int64_t i,
                                     int64_t dpad, int64_t d0, float* acc0, float* acc1) {
  ipt_v16 a[NB], c[NB];
  for (int k = 0; k < NB; ++k) a[k] = c[k] = ipt_v16{};
  const float* gi = gz + i * (i - 1) / 2;
  const float* gi1 = gz + (i + 1) * i / 2;
  for (int64_t j = 0; j < i; ++j) {
    const float g0 = gi[j], g1 = gi1[j];
    const float* r = rows + j * dpad + d0;
    for (int k = 0; k < NB; ++k) {
      const ipt_v16 t = load16(r + k * kLanes);
      a[k] = a[k] + g0 * t;
      c[k] = c[k] + g1 * t;
    }
  }
  {  // j = i: row i + 1 only; j = i + 1: row i only (the same pair gradient g_{i+1,i})
    const float g = gi1[i];
    const float* ri = rows + i * dpad + d0;
    const float* ri1 = rows + (i + 1) * dpad + d0;
    for (int k = 0; k < NB; ++k) {
      c[k] = c[k] + g * load16(ri + k * kLanes);
      a[k] = a[k] + g * load16(ri1 + k * kLanes);
    }
  }
  for (int64_t j = i + 2; j < n; ++j) {
    const float* gj = gz + j * (j - 1) / 2;
    const float g0 = gj[i], g1 = gj[i + 1];
    const float* r = rows + j * dpad + d0;
    for (int k = 0; k < NB; ++k) {
      const ipt_v16 t = load16(r + k * kLanes);
      a[k] = a[k] + g0 * t;
      c[k] = c[k] + g1 * t;
    }
  }
  __builtin_memcpy(acc0 + d0, a, sizeof a);
  __builtin_memcpy(acc1 + d0, c, sizeof c);
}

template <class T>
static void forward_rows(const InteractionInputs& in, T* out, int64_t begin, int64_t end) {
  const int64_t n = in.num_emb + 1, d = in.dim, dpad = padded(d), nc = dpad / kLanes;
  const int64_t pairs = n * (n - 1) / 2, width = d + pairs;
  const int64_t groups = (pairs + 15) / 16;
  // Pair k = (i, j) of the strict lower triangle, row-major, as the rows'
  // offsets in the scratch block; the last group is padded with (0, 0),
  // whose dots are computed and dropped.
  std::vector<int64_t> ia(groups * 16, 0), ja(groups * 16, 0);
  for (int64_t i = 1, k = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j, ++k) {
      ia[k] = i * dpad;
      ja[k] = j * dpad;
    }
  std::vector<float> rows(n * dpad), z(groups * 16);
  std::vector<ipt_v16> sums(groups * 16);
  for (int64_t b = begin; b < end; ++b) {
    load_rows(in, b, dpad, rows.data());
    T* o = out + b * width;
    const T* dense = static_cast<const T*>(in.dense) + b * in.dense_stride;
    for (int64_t k = 0; k < d; ++k) o[k] = dense[k];  // bit copy in the input dtype
    switch (nc) {  // the common widths (D up to 128) with a compile-time chunk count
      case 1: all_dots_rowpairs<1>(rows.data(), n, groups, sums.data(), z.data()); break;
      case 2: all_dots_rowpairs<2>(rows.data(), n, groups, sums.data(), z.data()); break;
      case 4: all_dots_rowpairs<4>(rows.data(), n, groups, sums.data(), z.data()); break;
      case 8: all_dots_rowpairs<8>(rows.data(), n, groups, sums.data(), z.data()); break;
      default: all_dots<0>(rows.data(), ia.data(), ja.data(), groups, nc, z.data());
    }
    store(o + d, z.data(), pairs);
  }
}

template <class T>
static void backward_rows(const InteractionInputs& in, const void* grad_out, bool grad_is_bf16,
                          T* grad_dense, T* grad_emb, int64_t begin, int64_t end) {
  const int64_t n = in.num_emb + 1, d = in.dim, dpad = padded(d);
  const int64_t pairs = n * (n - 1) / 2, width = d + pairs;
  std::vector<float> rows(n * dpad), go(width), acc(2 * dpad);
  for (int64_t b = begin; b < end; ++b) {
    load_rows(in, b, dpad, rows.data());
    load_grad_row(grad_out, grad_is_bf16, b, width, go.data());
    const float* gz = go.data() + d;  // pair gradients, strict lower triangle
    for (int64_t i = 0; i < n;) {
      const bool two = i + 1 < n;  // rows i, i + 1 together; the last alone when n is odd
      float* acc1 = acc.data() + dpad;
      int64_t d0 = 0;
      for (; d0 + 4 * kLanes <= dpad; d0 += 4 * kLanes) {
        if (two) weighted_row_pair<4>(rows.data(), gz, n, i, dpad, d0, acc.data(), acc1);
        else weighted_rows<4>(rows.data(), gz, n, i, dpad, d0, acc.data());
      }
      for (; d0 < dpad; d0 += kLanes) {
        if (two) weighted_row_pair<1>(rows.data(), gz, n, i, dpad, d0, acc.data(), acc1);
        else weighted_rows<1>(rows.data(), gz, n, i, dpad, d0, acc.data());
      }
      for (int64_t r = i; r < i + (two ? 2 : 1); ++r) {
        float* a = acc.data() + (r - i) * dpad;
        if (r == 0) {
          for (int64_t k = 0; k < d; ++k) a[k] = a[k] + go[k];
          store(grad_dense + b * d, a, d);
        } else {
          store(grad_emb + (b * in.num_emb + r - 1) * d, a, d);
        }
      }
      i += two ? 2 : 1;
    }
  }
}

#else  // !__AVX512F__

// s_l += s_{l+8}, += s_{l+4}, += s_{l+2}, then s_0 + s_1. Written on GCC
// vector types so the first two levels are 8- and 4-wide adds at every level
// (a plain loop over s[] was scalarized: ~30 instructions a pair).
typedef float ipt_v8 __attribute__((vector_size(32)));
typedef float ipt_v4 __attribute__((vector_size(16)));

static inline float halving_tree(const float* s) {
  ipt_v8 lo8, hi8;
  __builtin_memcpy(&lo8, s, sizeof lo8);
  __builtin_memcpy(&hi8, s + 8, sizeof hi8);
  const ipt_v8 s8 = lo8 + hi8;
  ipt_v4 lo4, hi4;
  __builtin_memcpy(&lo4, &s8, sizeof lo4);
  __builtin_memcpy(&hi4, reinterpret_cast<const char*>(&s8) + sizeof lo4, sizeof hi4);
  const ipt_v4 s4 = lo4 + hi4;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// out[k] = <a, b_k> for the NJ rows b_k = b + k * dpad (one pass over a).
template <int NJ>
static inline void dots(const float* a, const float* b, int64_t dpad, float* out) {
  float s[NJ][kLanes] = {};
  for (int64_t c = 0; c < dpad; c += kLanes)
    for (int k = 0; k < NJ; ++k)
      for (int l = 0; l < kLanes; ++l) s[k][l] = s[k][l] + a[c + l] * b[k * dpad + c + l];
  for (int k = 0; k < NJ; ++k) out[k] = halving_tree(s[k]);
}

// acc[0 .. NB*16) = sum_{j != skip, ascending} g[j] * rows[j][d0 ..].
template <int NB>
static inline void weighted_rows(const float* rows, const float* g, int64_t n, int64_t skip,
                                 int64_t dpad, int64_t d0, float* acc) {
  float a[NB * kLanes] = {};
  for (int64_t j = 0; j < n; ++j) {
    if (j == skip) continue;
    const float gj = g[j];
    const float* r = rows + j * dpad + d0;
    for (int l = 0; l < NB * kLanes; ++l) a[l] = a[l] + gj * r[l];
  }
  for (int l = 0; l < NB * kLanes; ++l) acc[d0 + l] = a[l];
}

template <class T>
static void forward_rows(const InteractionInputs& in, T* out, int64_t begin, int64_t end) {
  const int64_t n = in.num_emb + 1, d = in.dim, dpad = padded(d);
  const int64_t width = d + n * (n - 1) / 2;
  std::vector<float> rows(n * dpad), z(n * (n - 1) / 2 + 1);
  for (int64_t b = begin; b < end; ++b) {
    load_rows(in, b, dpad, rows.data());
    T* o = out + b * width;
    const T* dense = static_cast<const T*>(in.dense) + b * in.dense_stride;
    for (int64_t k = 0; k < d; ++k) o[k] = dense[k];  // bit copy in the input dtype
    float* zi = z.data();
    for (int64_t i = 1; i < n; ++i) {
      const float* ti = rows.data() + i * dpad;
      int64_t j = 0;
      for (; j + 4 <= i; j += 4) dots<4>(ti, rows.data() + j * dpad, dpad, zi + j);
      for (; j < i; ++j) dots<1>(ti, rows.data() + j * dpad, dpad, zi + j);
      zi += i;
    }
    store(o + d, z.data(), n * (n - 1) / 2);
  }
}

template <class T>
static void backward_rows(const InteractionInputs& in, const void* grad_out, bool grad_is_bf16,
                          T* grad_dense, T* grad_emb, int64_t begin, int64_t end) {
  const int64_t n = in.num_emb + 1, d = in.dim, dpad = padded(d);
  const int64_t pairs = n * (n - 1) / 2, width = d + pairs;
  std::vector<float> rows(n * dpad), g(n * n), go(width), acc(dpad);
  for (int64_t b = begin; b < end; ++b) {
    load_rows(in, b, dpad, rows.data());
    load_grad_row(grad_out, grad_is_bf16, b, width, go.data());
    // Symmetric pair-gradient matrix; the diagonal is never read.
    const float* gz = go.data() + d;
    for (int64_t i = 1; i < n; ++i)
      for (int64_t j = 0; j < i; ++j) g[i * n + j] = g[j * n + i] = gz[i * (i - 1) / 2 + j];
    for (int64_t i = 0; i < n; ++i) {
      int64_t d0 = 0;
      for (; d0 + 4 * kLanes <= dpad; d0 += 4 * kLanes)
        weighted_rows<4>(rows.data(), g.data() + i * n, n, i, dpad, d0, acc.data());
      for (; d0 < dpad; d0 += kLanes)
        weighted_rows<1>(rows.data(), g.data() + i * n, n, i, dpad, d0, acc.data());
      if (i == 0) {
        for (int64_t k = 0; k < d; ++k) acc[k] = acc[k] + go[k];
        store(grad_dense + b * d, acc.data(), d);
      } else {
        store(grad_emb + (b * in.num_emb + i - 1) * d, acc.data(), d);
      }
    }
  }
}

#endif  // __AVX512F__

}  // namespace

void interaction_forward_rows(const InteractionInputs& in, void* out, int64_t begin, int64_t end) {
  if (in.is_bf16) forward_rows(in, static_cast<uint16_t*>(out), begin, end);
  else forward_rows(in, static_cast<float*>(out), begin, end);
}

void interaction_backward_rows(const InteractionInputs& in, const void* grad_out, bool grad_is_bf16,
                               void* grad_dense, void* grad_emb, int64_t begin, int64_t end) {
  if (in.is_bf16)
    backward_rows(in, grad_out, grad_is_bf16, static_cast<uint16_t*>(grad_dense),
                  static_cast<uint16_t*>(grad_emb), begin, end);
  else
    backward_rows(in, grad_out, grad_is_bf16, static_cast<float*>(grad_dense),
                  static_cast<float*>(grad_emb), begin, end);
}

}  // namespace IPT_ISA_NS
}  // namespace ipex_train
