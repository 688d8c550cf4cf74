// The active ISA level and run-time dispatch to the per-level kernels
// (kernels/isa.h). Defined in runtime/isa.cpp; baseline flags only: included
// by native/ops and native/runtime, never by kernels.
#pragma once

namespace ipex_train {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3 };

// Best level the running CPU (and OS) supports.
Isa best_isa();
// Level in use: IPEX_TRAIN_ISA clamped to best_isa(), read once.
Isa active_isa();
// Force a level (clamped to best_isa()); returns the level now in use.
Isa set_active_isa(Isa isa);
const char* isa_name(Isa isa);
// Parses "scalar" | "avx2" | "avx512" | "avx512_bf16"; returns false if unknown.
bool parse_isa(const char* name, Isa* out);

}  // namespace ipex_train

// IPT_DISPATCH(fn, args...): call ipex_train::<active level>::fn(args...).
#define IPT_DISPATCH(fn, ...)                                          \
  do {                                                                 \
    switch (::ipex_train::active_isa()) {                              \
      case ::ipex_train::Isa::avx512_bf16:                             \
        ::ipex_train::avx512_bf16::fn(__VA_ARGS__);                    \
        break;                                                         \
      case ::ipex_train::Isa::avx512:                                  \
        ::ipex_train::avx512::fn(__VA_ARGS__);                         \
        break;                                                         \
      case ::ipex_train::Isa::avx2:                                    \
        ::ipex_train::avx2::fn(__VA_ARGS__);                           \
        break;                                                         \
      default:                                                         \
        ::ipex_train::scalar::fn(__VA_ARGS__);                         \
    }                                                                  \
  } while (0)
