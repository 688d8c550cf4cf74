// ISA levels of the kernels.
//
// Every file in native/kernels/ is compiled once per level, with that level's
// flags and IPT_ISA_NS defined to the level's name, so each kernel exists as
// ipex_train::scalar::f, ipex_train::avx2::f, ... . Code outside the kernels
// (native/runtime, native/ops) is built with baseline flags only and reaches a
// kernel through IPT_DISPATCH (runtime/dispatch.h), which calls the copy for
// the active level.
//
// Rule for kernel headers: everything they define must be `static inline` or
// live inside namespace IPT_ISA_NS. A plain `inline` function would be emitted
// once per level and the linker would keep an arbitrary one - possibly the
// AVX-512 copy, which then crashes an AVX2-only CPU. tests/test_isa.py checks
// the built library for exactly that.
#pragma once

#define IPT_DECLARE_FOR_ALL_ISAS(DECLS)   \
  namespace ipex_train {                  \
  namespace scalar { DECLS }              \
  namespace avx2 { DECLS }                \
  namespace avx512 { DECLS }              \
  namespace avx512_bf16 { DECLS }         \
  }
