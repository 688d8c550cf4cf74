// Bit-level helpers for bf16 and the split-bf16 weight layout. Kernel-side:
// everything here is `static inline` (see isa.h for why).
//
// Split layout of one fp32 master weight w (little-endian bits):
//
//     w bits:  [ 31 ........ 16 | 15 ......... 0 ]
//               top (bf16 weight) trail (int16 in the optimizer state)
//
// The top half is w truncated to bf16: the split is a pure bit partition, so
// join(split(w)) == w for every value, NaN and Inf included, on every ISA.
#pragma once
#include <cstdint>

static inline float ipt_bits_to_f32(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint32_t ipt_f32_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  return u;
}

static inline float ipt_bf16_to_f32(uint16_t b) { return ipt_bits_to_f32(static_cast<uint32_t>(b) << 16); }

// Round-to-nearest-even fp32 -> bf16, NaN kept quiet (as torch rounds).
static inline uint16_t ipt_f32_to_bf16_rne(float f) {
  uint32_t u = ipt_f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

static inline float ipt_join(uint16_t top, uint16_t trail) {
  return ipt_bits_to_f32((static_cast<uint32_t>(top) << 16) | trail);
}

static inline void ipt_split(float w, uint16_t* top, uint16_t* trail) {
  const uint32_t u = ipt_f32_to_bits(w);
  *top = static_cast<uint16_t>(u >> 16);
  *trail = static_cast<uint16_t>(u);
}
