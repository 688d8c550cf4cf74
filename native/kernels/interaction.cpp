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
static inline void store(T* dst, const float* src, int64_t n);
template <>
inline void store<float>(float* dst, const float* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = src[k];
}
template <>
inline void store<uint16_t>(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = ipt_f32_to_bf16_rne(src[k]);
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
    if (grad_is_bf16) {
      const uint16_t* src = static_cast<const uint16_t*>(grad_out) + b * width;
      for (int64_t k = 0; k < width; ++k) go[k] = ipt_bf16_to_f32(src[k]);
    } else {
      const float* src = static_cast<const float*>(grad_out) + b * width;
      for (int64_t k = 0; k < width; ++k) go[k] = src[k];
    }
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
