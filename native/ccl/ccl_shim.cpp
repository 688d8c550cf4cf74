// A stand-in for libccl.so.2, which oneccl-cpu's libccl.so lists as NEEDED
// but which PyPI ships only inside the SYCL (GPU) oneccl wheel.
//
// libccl.so takes exactly four symbols from it (checked with
// `nm -D --undefined-only libccl.so`): the Intel compiler runtime's memcpy /
// memset entry points and its CPU-feature word. We provide them with plain
// libc behaviour. The feature word is only read by the bundled libm's
// dispatcher, which spins until the word is non-zero and then tests feature
// bits: setting it to 1 ("initialised, no optional features") makes it take
// its baseline x86-64 paths on every CPU.
#include <cstdint>
#include <cstring>

extern "C" {

uint64_t __intel_cpu_feature_indicator_x[2] = {0, 0};

void __intel_cpu_features_init_x() { __intel_cpu_feature_indicator_x[0] = 1; }

void* _intel_fast_memcpy(void* dst, const void* src, size_t n) { return std::memcpy(dst, src, n); }

void* _intel_fast_memset(void* dst, int c, size_t n) { return std::memset(dst, c, n); }

}  // extern "C"
