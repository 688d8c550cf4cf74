// DCNv2 cross-layer epilogue kernels (see cross.h).
#include "kernels/cross.h"

#include "kernels/bf16.h"

namespace ipex_train {
namespace IPT_ISA_NS {
namespace {

// Per-dtype load / round-and-store; the bf16 rounding is branch-free (RNE,
// NaN kept quiet, as ipt_f32_to_bf16_rne) so the loops vectorize.
struct F32 {
  using T = float;
  static inline float ld(float v) { return v; }
  static inline float rnd(float v) { return v; }
  static inline float st(float v) { return v; }
};
struct BF16 {
  using T = uint16_t;
  static inline float ld(uint16_t v) { return ipt_bits_to_f32(static_cast<uint32_t>(v) << 16); }
  static inline uint16_t st(float f) {
    const uint32_t u = ipt_f32_to_bits(f);
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t q = (u >> 16) | 0x40u;
    return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? q : r);
  }
  static inline float rnd(float v) { return ld(st(v)); }
};

template <class D>
void forward(typename D::T* y, const typename D::T* c, const typename D::T* x0,
             const typename D::T* xl, typename D::T* out, int64_t r0, int64_t r1, int64_t n) {
  for (int64_t r = r0; r < r1; ++r) {
    typename D::T* yr = y + r * n;
    const typename D::T* ar = x0 + r * n;
    const typename D::T* xr = xl + r * n;
    typename D::T* orow = out + r * n;
    for (int64_t j = 0; j < n; ++j) {
      const typename D::T z = D::st(D::ld(yr[j]) + D::ld(c[j]));
      const float p = D::ld(ar[j]) * D::ld(z);
      yr[j] = z;
      orow[j] = D::st(D::ld(xr[j]) + p);
    }
  }
}

template <class D, bool kAccumulate, bool kAddG>
void backward(const typename D::T* g, const typename D::T* x0, const typename D::T* z,
              typename D::T* acc, typename D::T* gz, int64_t r0, int64_t r1, int64_t n,
              float* partial) {
  for (int64_t j = 0; j < n; ++j) partial[j] = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const typename D::T* gr = g + r * n;
    const typename D::T* ar = x0 + r * n;
    const typename D::T* zr = z + r * n;
    typename D::T* accr = acc + r * n;
    typename D::T* gzr = gz + r * n;
    for (int64_t j = 0; j < n; ++j) {
      const float gv = D::ld(gr[j]);
      const float q = D::rnd(gv * D::ld(ar[j]));
      gzr[j] = D::st(q);
      partial[j] = partial[j] + q;
      float a = D::rnd(gv * D::ld(zr[j]));
      if (kAccumulate) a = D::rnd(D::ld(accr[j]) + a);
      if (kAddG) a = D::rnd(a + gv);
      accr[j] = D::st(a);
    }
  }
}

template <class D>
void backward_any(const void* g, const void* x0, const void* z, void* acc, void* gz,
                  bool accumulate, bool add_g, int64_t r0, int64_t r1, int64_t n, float* partial) {
  using T = typename D::T;
  auto* G = static_cast<const T*>(g);
  auto* A = static_cast<const T*>(x0);
  auto* Z = static_cast<const T*>(z);
  auto* C = static_cast<T*>(acc);
  auto* Q = static_cast<T*>(gz);
  if (accumulate && add_g) backward<D, true, true>(G, A, Z, C, Q, r0, r1, n, partial);
  else if (accumulate) backward<D, true, false>(G, A, Z, C, Q, r0, r1, n, partial);
  else if (add_g) backward<D, false, true>(G, A, Z, C, Q, r0, r1, n, partial);
  else backward<D, false, false>(G, A, Z, C, Q, r0, r1, n, partial);
}

}  // namespace

void cross_forward_rows(void* y, const void* c, const void* x0, const void* xl, void* out,
                        bool is_bf16, int64_t r0, int64_t r1, int64_t n) {
  if (is_bf16)
    forward<BF16>(static_cast<uint16_t*>(y), static_cast<const uint16_t*>(c),
                  static_cast<const uint16_t*>(x0), static_cast<const uint16_t*>(xl),
                  static_cast<uint16_t*>(out), r0, r1, n);
  else
    forward<F32>(static_cast<float*>(y), static_cast<const float*>(c),
                 static_cast<const float*>(x0), static_cast<const float*>(xl),
                 static_cast<float*>(out), r0, r1, n);
}

void cross_backward_rows(const void* g, const void* x0, const void* z, void* acc, void* gz,
                         bool is_bf16, bool accumulate, bool add_g, int64_t r0, int64_t r1,
                         int64_t n, float* partial) {
  if (is_bf16)
    backward_any<BF16>(g, x0, z, acc, gz, accumulate, add_g, r0, r1, n, partial);
  else
    backward_any<F32>(g, x0, z, acc, gz, accumulate, add_g, r0, r1, n, partial);
}

}  // namespace IPT_ISA_NS
}  // namespace ipex_train
