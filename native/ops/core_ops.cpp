// Library-wide ops: the ISA level in use.
#include <torch/library.h>

#include "runtime/dispatch.h"

namespace {

std::string isa() { return ipex_train::isa_name(ipex_train::active_isa()); }
std::string best_isa() { return ipex_train::isa_name(ipex_train::best_isa()); }

std::string set_isa(const std::string& name) {
  ipex_train::Isa want;
  TORCH_CHECK_VALUE(ipex_train::parse_isa(name.c_str(), &want), "unknown ISA level '", name,
                    "'; expected one of scalar, avx2, avx512, avx512_bf16");
  return ipex_train::isa_name(ipex_train::set_active_isa(want));
}

}  // namespace

TORCH_LIBRARY(ipex_train, m) {
  m.def("isa() -> str", &isa);
  m.def("best_isa() -> str", &best_isa);
  m.def("_set_isa(str level) -> str", &set_isa);
}
