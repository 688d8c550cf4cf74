// Argument checks and tensor plumbing of the ccl backend's collectives
// (process_group_ccl.cpp): dtype and reduce-op mapping onto oneCCL, the checks
// that run on the caller's thread before anything is queued, and the
// flatten/unflatten copies of tensor lists. Errors name the op.
#pragma once

#include <torch/csrc/distributed/c10d/Types.hpp>

#include <ATen/ATen.h>

#include <oneapi/ccl.hpp>

#include <string>
#include <vector>

namespace ipex_train {
namespace ccl_args {

[[noreturn]] inline void fail(const std::string& msg) { C10_THROW_ERROR(DistBackendError, msg); }

inline bool is_half(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

inline ccl::datatype ccl_type(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat: return ccl::datatype::float32;
    case at::kDouble: return ccl::datatype::float64;
    case at::kInt: return ccl::datatype::int32;
    case at::kLong: return ccl::datatype::int64;
    case at::kShort: return ccl::datatype::int16;
    case at::kChar: return ccl::datatype::int8;
    case at::kByte: case at::kBool: return ccl::datatype::uint8;
    default: break;
  }
  fail(std::string("ccl ") + op + ": reductions do not support dtype " + c10::toString(t));
}

// Maps a c10d reduction on dtype `t` to oneCCL's; `avg` is set when the caller
// must divide the SUM by the world size afterwards.
inline ccl::reduction ccl_op(const c10d::ReduceOp& op, at::ScalarType t, const char* name, bool* avg) {
  *avg = false;
  const bool b = t == at::kBool;
  const bool fp = at::isFloatingType(t);
  switch (op.op_) {
    case c10d::ReduceOp::SUM: return b ? ccl::reduction::max : ccl::reduction::sum;
    case c10d::ReduceOp::PRODUCT: return b ? ccl::reduction::min : ccl::reduction::prod;
    case c10d::ReduceOp::MIN: return ccl::reduction::min;
    case c10d::ReduceOp::MAX: return ccl::reduction::max;
    case c10d::ReduceOp::BAND:
      if (b) return ccl::reduction::min;
      break;
    case c10d::ReduceOp::BOR:
      if (b) return ccl::reduction::max;
      break;
    case c10d::ReduceOp::AVG:
      if (fp) {
        *avg = true;
        return ccl::reduction::sum;
      }
      fail(std::string("ccl ") + name + ": ReduceOp.AVG needs a floating-point tensor, got " +
           c10::toString(t));
    default: break;
  }
  fail(std::string("ccl ") + name + ": reduce op " + std::to_string(int(op.op_)) +
       " (BAND/BOR only for bool; BXOR, PREMUL_SUM unsupported) is not supported for dtype " +
       c10::toString(t));
}

// Raises now, on the caller's thread, what the worker's ccl_op would raise.
inline void check_reduce(const c10d::ReduceOp& op, at::ScalarType t, const char* name) {
  bool avg;
  ccl_op(op, t, name, &avg);
}

inline void check_cpu(const at::Tensor& t, const char* op) {
  if (t.device().type() != c10::DeviceType::CPU)
    fail(std::string("ccl ") + op + ": expected a CPU tensor, got one on " + t.device().str());
  if (t.layout() != c10::kStrided)
    fail(std::string("ccl ") + op + ": expected a dense (strided) tensor");
  if (t.is_complex())
    fail(std::string("ccl ") + op + ": complex tensors are not supported");
}

inline void check_one(const std::vector<at::Tensor>& ts, const char* op) {
  if (ts.size() != 1)
    fail(std::string("ccl ") + op + ": expects exactly one tensor per call, got " +
         std::to_string(ts.size()));
  check_cpu(ts[0], op);
}

inline void check_same(const at::Tensor& a, const at::Tensor& ref, const char* op, const char* what) {
  check_cpu(a, op);
  if (a.scalar_type() != ref.scalar_type())
    fail(std::string("ccl ") + op + ": " + what + " has dtype " + c10::toString(a.scalar_type()) +
         ", expected " + c10::toString(ref.scalar_type()));
}

// A contiguous tensor holding `t`'s values: `t` itself when possible.
inline at::Tensor dense(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

// Copies `src` into `dst` unless they are the same storage.
inline void write_back(const at::Tensor& dst, const at::Tensor& src) {
  if (!dst.is_same(src)) dst.copy_(src);
}

// ---- tensor lists ----

// All of `ts` as one flat contiguous tensor, in list order.
inline at::Tensor flatten(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> flat;
  for (auto& t : ts) flat.push_back(t.reshape(-1));
  return at::cat(flat);
}

// Copies consecutive blocks of flat `buf` into `ts`, in list order.
inline void unflatten(const at::Tensor& buf, const std::vector<at::Tensor>& ts) {
  int64_t off = 0;
  for (auto& t : ts) {
    t.copy_(buf.narrow(0, off, t.numel()).view(t.sizes()));
    off += t.numel();
  }
}

// The one list of world-size per-rank tensors of a gather-like op's outputs
// (`outputs`) or a scatter-like op's inputs, each with `ref`'s dtype and size.
inline std::vector<at::Tensor> rank_list(const std::vector<std::vector<at::Tensor>>& lists,
                                         const at::Tensor& ref, int size, const char* op,
                                         bool outputs, bool at_root) {
  const std::string side = outputs ? "output" : "input", other = outputs ? "input" : "output";
  if (lists.size() != 1 || int(lists[0].size()) != size)
    fail(std::string("ccl ") + op + ": " +
         (at_root ? "the root needs one list of " + std::to_string(size) + " " + side + "s"
                  : "expected one list of " + std::to_string(size) + " " + side + " tensors"));
  for (auto& t : lists[0]) {
    check_same(t, ref, op, ("an " + side + " tensor").c_str());
    if (t.numel() != ref.numel())
      fail(std::string("ccl ") + op + ": " + side + " tensors must match the " + other + "'s size");
  }
  return lists[0];
}

// `big` must hold world-size times the elements of `small`, in its dtype.
inline void check_world_sized(const at::Tensor& big, const at::Tensor& small, int size,
                              const char* op, const char* big_name, const char* small_name) {
  if (big.numel() != small.numel() * size)
    fail(std::string("ccl ") + op + ": " + big_name + " has " + std::to_string(big.numel()) +
         " elements, expected world_size * " + small_name + " = " +
         std::to_string(small.numel() * size));
}

// Coalesced ops: outs[i] pairs with ins[i], the larger side (`outs_big`: the
// outputs) holding world-size times the other's elements.
inline void check_pairs(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins,
                        int size, const char* op, bool outs_big) {
  if (outs.size() != ins.size()) fail(std::string("ccl ") + op + ": list sizes differ");
  for (size_t i = 0; i < ins.size(); ++i) {
    check_same(outs[i], ins[i], op, "an output");
    const auto& big = outs_big ? outs[i] : ins[i];
    const auto& small = outs_big ? ins[i] : outs[i];
    if (big.numel() != small.numel() * size)
      fail(std::string("ccl ") + op + ": " + (outs_big ? "output " : "input ") +
           std::to_string(i) + " has the wrong size");
  }
}

inline void check_root(int64_t root, int size, const char* op) {
  if (root < 0 || root >= size)
    fail(std::string("ccl ") + op + ": root rank " + std::to_string(root) + " out of range [0, " +
         std::to_string(size) + ")");
}

inline void check_peer(int peer, int rank, int size, const char* op) {
  if (peer < 0 || peer >= size || peer == rank)
    fail(std::string("ccl ") + op + ": peer rank " + std::to_string(peer) +
         " is not another rank of this group of " + std::to_string(size));
}

// Per-rank byte counts of a tensor split along dim 0 (equal split when empty).
inline std::vector<size_t> split_bytes(const at::Tensor& t, const std::vector<int64_t>& splits,
                                       int size, const char* what) {
  const int64_t rows = t.dim() ? t.size(0) : 1;
  const size_t row_bytes = rows ? t.nbytes() / rows : 0;
  std::vector<size_t> out(size);
  if (splits.empty()) {
    if (rows % size)
      fail(std::string("ccl all_to_all_single: ") + what + " dim 0 (" + std::to_string(rows) +
           ") is not divisible by the world size " + std::to_string(size));
    for (auto& c : out) c = (rows / size) * row_bytes;
    return out;
  }
  if (int(splits.size()) != size)
    fail(std::string("ccl all_to_all_single: ") + what + " split sizes has " +
         std::to_string(splits.size()) + " entries, expected " + std::to_string(size));
  int64_t sum = 0;
  for (int r = 0; r < size; ++r) {
    if (splits[r] < 0) fail("ccl all_to_all_single: negative split size");
    sum += splits[r];
    out[r] = size_t(splits[r]) * row_bytes;
  }
  if (sum != rows)
    fail(std::string("ccl all_to_all_single: ") + what + " split sizes sum to " +
         std::to_string(sum) + " but dim 0 is " + std::to_string(rows));
  return out;
}

}  // namespace ccl_args
}  // namespace ipex_train
