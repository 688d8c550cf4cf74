// Element access for the optimizer kernels, templated on storage so that each
// (param storage, grad dtype) pair compiles to its own tight loop.
#pragma once
#include <type_traits>

#include "kernels/bf16.h"
#include "kernels/optim.h"

namespace ipex_train {
namespace IPT_ISA_NS {

template <bool kSplit>
struct ParamIO {
  ParamChunk p;
  float load(int64_t i) const {
    if constexpr (kSplit) return ipt_join(p.top[i], p.trail[i]);
    else return p.fp32[i];
  }
  void store(int64_t i, float w) const {
    if constexpr (kSplit) ipt_split(w, &p.top[i], &p.trail[i]);
    else p.fp32[i] = w;
  }
};

template <bool kBf16>
struct GradIO {
  const void* data;
  float load(int64_t i) const {
    if constexpr (kBf16) return ipt_bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
    else return static_cast<const float*>(data)[i];
  }
};

// Calls body(ParamIO<split>, GradIO<bf16>) with the storage-specific types.
template <class Body>
static inline void with_param_grad(ParamChunk p, GradChunk g, Body&& body) {
  const bool split = p.fp32 == nullptr;
  if (split && g.is_bf16) body(ParamIO<true>{p}, GradIO<true>{g.data});
  else if (split) body(ParamIO<true>{p}, GradIO<false>{g.data});
  else if (g.is_bf16) body(ParamIO<false>{p}, GradIO<true>{g.data});
  else body(ParamIO<false>{p}, GradIO<false>{g.data});
}

// Calls body(ParamIO<split>) for kernels that read no gradient.
template <class Body>
static inline void with_param(ParamChunk p, Body&& body) {
  if (p.fp32 == nullptr) body(ParamIO<true>{p});
  else body(ParamIO<false>{p});
}

// Turns run-time flags into compile-time ones so that each combination gets
// its own branch-free (vectorizable) loop:
//   with_flags(body, a, b) calls body(std::bool_constant<a>{}, std::bool_constant<b>{}).
template <class Body>
static inline void with_flags(Body&& body) { body(); }

template <class Body, class... Rest>
static inline void with_flags(Body&& body, bool first, Rest... rest) {
  if (first)
    with_flags([&](auto... fs) { body(std::true_type{}, fs...); }, rest...);
  else
    with_flags([&](auto... fs) { body(std::false_type{}, fs...); }, rest...);
}

}  // namespace IPT_ISA_NS
}  // namespace ipex_train
