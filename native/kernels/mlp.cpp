// MLP epilogue kernels (see mlp.h).
#include "kernels/mlp.h"

#include "kernels/bf16.h"

namespace ipex_train {
namespace IPT_ISA_NS {
namespace {

template <class T>
static inline float to_f32(T v);
template <>
inline float to_f32<float>(float v) { return v; }
template <>
inline float to_f32<uint16_t>(uint16_t v) { return ipt_bf16_to_f32(v); }

template <class T>
static void mask_colsum(const T* g, const T* y, T* gm, int64_t r0, int64_t rows, int64_t n,
                        float* partial) {
  for (int64_t j = 0; j < n; ++j) partial[j] = 0.0f;
  for (int64_t r = r0; r < r0 + rows; ++r) {
    const T* gr = g + r * n;
    const T* yr = y + r * n;
    T* mr = gm + r * n;
    for (int64_t j = 0; j < n; ++j) {
      const bool keep = !(to_f32(yr[j]) <= 0.0f);  // as threshold_backward: NaN passes
      const T m = keep ? gr[j] : T(0);
      mr[j] = m;
      partial[j] = partial[j] + (keep ? to_f32(gr[j]) : 0.0f);
    }
  }
}

}  // namespace

void relu_mask_colsum(const void* g, const void* y, void* gm, bool is_bf16, int64_t r0,
                      int64_t rows, int64_t n, float* partial) {
  if (is_bf16)
    mask_colsum(static_cast<const uint16_t*>(g), static_cast<const uint16_t*>(y),
                static_cast<uint16_t*>(gm), r0, rows, n, partial);
  else
    mask_colsum(static_cast<const float*>(g), static_cast<const float*>(y),
                static_cast<float*>(gm), r0, rows, n, partial);
}

}  // namespace IPT_ISA_NS
}  // namespace ipex_train
