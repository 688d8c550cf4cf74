// ISA levels and run-time dispatch.
//
// Every file in native/kernels/ is compiled once per level, with that level's
// flags and IPT_ISA_NS defined to the level's name, so each kernel exists as
// ipex_train::scalar::f, ipex_train::avx2::f, ... . Code outside the kernels
// (native/runtime, native/ops) is built with baseline flags only and reaches a
// kernel through IPT_DISPATCH, which calls the copy for the active level.
//
// Rule for kernel headers: everything they define must be `static inline` or
// live inside namespace IPT_ISA_NS. A plain `inline` function would be emitted
// once per level and the linker would keep an arbitrary one - possibly the
// AVX-512 copy, which then crashes an AVX2-only CPU. tests/test_isa.py checks
// the built library for exactly that.
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

#define IPT_DECLARE_FOR_ALL_ISAS(DECLS)   \
  namespace ipex_train {                  \
  namespace scalar { DECLS }              \
  namespace avx2 { DECLS }                \
  namespace avx512 { DECLS }              \
  namespace avx512_bf16 { DECLS }         \
  }

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
