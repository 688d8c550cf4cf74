// ProcessGroupCCL: a c10d::Backend over oneCCL for CPU tensors, plus its
// pybind11 binding (ipex_train._ccl). The only TU of the backend that includes
// torch headers.
//
// Execution model
//   Every call enqueues one Task on a single worker thread and returns a
//   WorkCCL at once. One thread keeps the op order identical on all ranks (what
//   oneCCL requires) and keeps a blocking oneCCL call off the caller's thread.
//   oneCCL has no timeouts: when a peer dies it may block forever. So a
//   watchdog thread fails the running op (and everything queued after it) once
//   it has run longer than its timeout, marks the group aborted, and later
//   calls fail fast. The worker thread that may still sit inside oneCCL is
//   detached, never joined, so an aborted group does not hang the process.
//
// Data types
//   Data movement (broadcast, gathers, all-to-all, send/recv) moves bytes, so
//   every dtype works. Reductions run in oneCCL's typed arithmetic; bfloat16
//   and float16 are widened to float32 for the reduction (oneCCL's 16-bit
//   float reductions need AVX-512 on CPU), bool is reduced as uint8 with SUM/MAX
//   as logical or and PRODUCT/MIN as logical and, AVG is SUM then a division
//   (floating dtypes only). Anything else raises a RuntimeError naming the op.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <oneapi/ccl.hpp>

#include "local_exchange.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace ipex_train {
namespace {

using c10d::OpType;
using c10d::ReduceOp;
using Clock = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;

// Set once any group in this process aborted (a oneCCL call may still be
// running on a detached worker thread); see ipex_train/distributed/__init__.py.
std::atomic<bool> g_any_aborted{false};

[[noreturn]] void fail(const std::string& msg) { C10_THROW_ERROR(DistBackendError, msg); }

class ProcessGroupCCL;

// A queued or running collective. Finished exactly once: by the worker
// (success or a oneCCL error) or by the watchdog / abort (timeout).
class WorkCCL : public c10d::Work {
 public:
  WorkCCL(int rank, OpType type, std::vector<at::Tensor> outputs, ms timeout, std::string name)
      : c10d::Work(rank, type), outputs_(std::move(outputs)), timeout_(timeout),
        name_(std::move(name)),
        future_(c10::make_intrusive<c10::ivalue::Future>(
            c10::ListType::create(c10::TensorType::get()))) {}

  bool isCompleted() override { return done_.load(); }
  bool isSuccess() const override { return done_.load() && !error_; }
  std::exception_ptr exception() const override {
    std::lock_guard<std::mutex> g(m_);
    return error_;
  }
  std::vector<at::Tensor> result() override { return outputs_; }
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override { return future_; }

  // Waits at most `timeout` (the op's own timeout when none is given); on
  // expiry the whole group is aborted: oneCCL cannot cancel a collective.
  bool wait(ms timeout = kNoTimeout) override;

  // Returns false when someone else finished it first.
  bool finish(std::exception_ptr err) {
    bool expected = false;
    if (!finishing_.compare_exchange_strong(expected, true)) return false;
    {
      std::lock_guard<std::mutex> g(m_);
      error_ = err;
      done_.store(true);
    }
    done_cv_.notify_all();
    if (err) {
      future_->setError(err);
    } else {
      future_->markCompleted(c10::IValue(outputs_));
    }
    return true;
  }

  const std::string& name() const { return name_; }
  ms timeout() const { return timeout_; }
  ProcessGroupCCL* pg = nullptr;  // set at enqueue; outlives the work's wait()

 private:
  std::vector<at::Tensor> outputs_;
  ms timeout_;
  std::string name_;
  c10::intrusive_ptr<c10::ivalue::Future> future_;
  mutable std::mutex m_;
  std::condition_variable done_cv_;
  std::atomic<bool> done_{false}, finishing_{false};
  std::exception_ptr error_;
};

// A collective runs to completion in `run`. A point-to-point op instead
// `start`s without blocking and hands back a Poll that returns true once the
// op is done (and throws if it failed); the worker polls every started op, so
// a rank can have sends and receives in flight at once (isend/irecv pairs
// that would deadlock if each blocked in turn).
using Poll = std::function<bool()>;

struct Task {
  c10::intrusive_ptr<WorkCCL> work;
  std::function<void()> run;
  std::function<Poll()> start;
};

struct InFlight {
  c10::intrusive_ptr<WorkCCL> work;
  Poll poll;
  Clock::time_point since;
};

// ------------------------------------------------ point-to-point matching ---
//
// torch.distributed matches a recv with the oldest unmatched send from its
// source that has the same tag. oneCCL's send/recv have no tag: between two
// ranks they match in issue order. So each message travels as a 16-byte
// header {tag, bytes} followed by its payload, and the receiver matches:
//
//   sender:    [tag 7 | 40 B] [40 B payload] [tag 3 | 8 B] [8 B payload] ...
//   receiver:  header -> the oldest posted recv from that peer with that tag?
//                yes: the payload lands in its tensor directly
//                no:  the payload lands in a stash, which a later recv with
//                     that tag takes (one copy), like MPI's unexpected queue
//
// Headers are read from a peer only while a posted recv from it waits, so no
// receive stays in flight once the user's receives are done. A message whose
// tag matches but whose size differs fails that recv with an error naming
// both sizes (the payload is still drained, so later messages match).
//
// Both directions keep one oneCCL op per peer in flight at a time: oneCCL
// progresses concurrent send/recv schedules in no fixed order (two isends to
// one peer were seen to post the second payload before the second header),
// so each header or payload is posted only after the previous one to or from
// that peer completed.

struct SendReq {
  std::array<int64_t, 2> hdr;   // {tag, bytes}
  at::Tensor buf;               // contiguous payload
  int posted = 0;               // 0: nothing, 1: header, 2: payload in flight
  std::unique_ptr<ccl::event> ev;
  bool finished = false;
  std::exception_ptr err;
};

struct RecvReq {
  int64_t tag;
  at::Tensor buf;               // contiguous destination
  std::function<void()> done;   // writes `buf` back to the user's tensor
  bool finished = false;
  std::exception_ptr err;
};

struct Stashed {
  int64_t tag;
  at::Tensor bytes;
};

// The traffic with one peer; used by the worker thread only.
struct Channel {
  std::deque<std::shared_ptr<SendReq>> sends;   // to the peer, in issue order
  std::deque<std::shared_ptr<RecvReq>> posted;  // receives waiting, in post order
  std::deque<Stashed> stash;                    // arrived before their recv, in order
  std::array<int64_t, 2> hdr{};                 // {tag, bytes} being received
  std::unique_ptr<ccl::event> hdr_ev, body_ev;  // header / payload in flight
  std::shared_ptr<RecvReq> body_for;            // the payload's recv (null: stash)
  at::Tensor body;
  int64_t body_tag = 0;
};

// ---------------------------------------------------------------- helpers ---

bool is_half(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

ccl::datatype ccl_type(at::ScalarType t, const char* op) {
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
ccl::reduction ccl_op(const ReduceOp& op, at::ScalarType t, const char* name, bool* avg) {
  *avg = false;
  const bool b = t == at::kBool;
  const bool fp = at::isFloatingType(t);
  switch (op.op_) {
    case ReduceOp::SUM: return b ? ccl::reduction::max : ccl::reduction::sum;
    case ReduceOp::PRODUCT: return b ? ccl::reduction::min : ccl::reduction::prod;
    case ReduceOp::MIN: return ccl::reduction::min;
    case ReduceOp::MAX: return ccl::reduction::max;
    case ReduceOp::BAND:
      if (b) return ccl::reduction::min;
      break;
    case ReduceOp::BOR:
      if (b) return ccl::reduction::max;
      break;
    case ReduceOp::AVG:
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

void check_cpu(const at::Tensor& t, const char* op) {
  if (t.device().type() != c10::DeviceType::CPU)
    fail(std::string("ccl ") + op + ": expected a CPU tensor, got one on " + t.device().str());
  if (t.layout() != c10::kStrided)
    fail(std::string("ccl ") + op + ": expected a dense (strided) tensor");
  if (t.is_complex())
    fail(std::string("ccl ") + op + ": complex tensors are not supported");
}

void check_one(const std::vector<at::Tensor>& ts, const char* op) {
  if (ts.size() != 1)
    fail(std::string("ccl ") + op + ": expects exactly one tensor per call, got " +
         std::to_string(ts.size()));
  check_cpu(ts[0], op);
}

void check_same(const at::Tensor& a, const at::Tensor& ref, const char* op, const char* what) {
  check_cpu(a, op);
  if (a.scalar_type() != ref.scalar_type())
    fail(std::string("ccl ") + op + ": " + what + " has dtype " + c10::toString(a.scalar_type()) +
         ", expected " + c10::toString(ref.scalar_type()));
}

// A contiguous tensor holding `t`'s values: `t` itself when possible.
at::Tensor dense(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

// Copies `src` into `dst` unless they are the same storage.
void write_back(const at::Tensor& dst, const at::Tensor& src) {
  if (!dst.is_same(src)) dst.copy_(src);
}

// ----------------------------------------------------------- the backend ---

class ProcessGroupCCL : public c10d::Backend {
 public:
  ProcessGroupCCL(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, ms timeout)
      : c10d::Backend(rank, size), timeout_(timeout) {
    ccl::init();
    // oneCCL's key-value store: rank 0 creates it, the others reach it at the
    // address rank 0 published through the c10d store.
    const std::string key = "ipex_train/ccl_kvs_address";
    if (rank == 0) {
      kvs_ = ccl::create_main_kvs();
      auto addr = kvs_->get_address();
      store->set(key, std::vector<uint8_t>(addr.begin(), addr.end()));
    } else {
      auto v = store->get(key);
      ccl::kvs::address_type addr{};
      if (v.size() != addr.size()) fail("ccl: malformed oneCCL KVS address in the store");
      std::copy(v.begin(), v.end(), addr.begin());
      kvs_ = ccl::create_kvs(addr);
    }
    comm_ = std::make_unique<ccl::communicator>(ccl::create_communicator(size, rank, kvs_));
    // All-to-all on one host by direct reads of the peers' buffers (see
    // local_exchange.h); IPEX_TRAIN_CCL_LOCAL=0 keeps everything on oneCCL.
    const char* env = std::getenv("IPEX_TRAIN_CCL_LOCAL");
    const bool want = !(env && std::string(env) == "0");
    ccl_local::KeyValue kv{
        [store](const std::string& k, const std::string& v) {
          store->set(k, std::vector<uint8_t>(v.begin(), v.end()));
        },
        [store](const std::string& k) {
          auto v = store->get(k);
          return std::string(v.begin(), v.end());
        }};
    local_ = std::make_unique<ccl_local::LocalExchange>(rank, size, kv, want);
    chans_.resize(size);
    worker_ = std::thread([this] { work_loop(); });
    watchdog_ = std::thread([this] { watch_loop(); });
  }

  ~ProcessGroupCCL() override {
    // Drain the queue while the watchdog still watches, so a hung op aborts
    // the group instead of hanging this destructor.
    {
      std::unique_lock<std::mutex> g(m_);
      stop_ = true;
      cv_.notify_all();
      cv_.wait(g, [this] { return worker_exited_ || aborted_.load(); });
      watch_stop_ = true;
    }
    cv_.notify_all();
    watchdog_.join();
    if (worker_exited_) {
      worker_.join();
    } else {
      // The worker may be stuck inside oneCCL forever: leave it and leak the
      // communicator rather than hang or free memory it still uses.
      worker_.detach();
      (void)comm_.release();
      (void)local_.release();
      new std::shared_ptr<ccl::kvs>(std::move(kvs_));
    }
  }

  const std::string getBackendName() const override { return "ccl"; }
  void setTimeout(ms timeout) override { timeout_ = timeout; }
  void setSequenceNumberForGroup() override {}
  uint64_t getSequenceNumberForGroup() override { return seq_.load(); }
  bool aborted() const { return aborted_.load(); }
  // "local" when all-to-all, all-gather and broadcast move bytes by direct
  // reads between the ranks of this host, else "oneccl (why)".
  std::string transfer_path() const {
    return local_->enabled() ? "local" : "oneccl (" + local_->reason() + ")";
  }

  // Fails the running and all queued works with `why`; later calls fail fast.
  void abort_with(const std::string& why) {
    std::deque<Task> q;
    c10::intrusive_ptr<WorkCCL> cur;
    std::vector<c10::intrusive_ptr<WorkCCL>> p2p;
    {
      std::lock_guard<std::mutex> g(m_);
      if (!aborted_.exchange(true)) reason_ = why;
      g_any_aborted.store(true);
      q.swap(queue_);
      cur = current_;
      for (auto& f : inflight_) p2p.push_back(f.work);
    }
    cv_.notify_all();
    auto err = std::make_exception_ptr(c10::DistBackendError(
        {__func__, __FILE__, uint32_t(__LINE__)}, "ccl process group aborted: " + reason_));
    if (cur) cur->finish(err);
    for (auto& w : p2p) w->finish(err);
    for (auto& t : q) t.work->finish(err);
  }
  void abort() override { abort_with("abort() called"); }
  void shutdown() override {}

  // ---- collectives ----
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& ts,
                                           const c10d::AllreduceOptions& o) override {
    check_one(ts, "all_reduce");
    auto t = ts[0];
    auto op = o.reduceOp;
    bool avg;
    ccl_op(op, t.scalar_type(), "all_reduce", &avg);  // validate now, on the caller's thread
    return enqueue(OpType::ALLREDUCE, "all_reduce", ts, o.timeout, [this, t, op] {
      auto buf = dense(t);
      reduce_in_place(buf, op, "all_reduce", -1);
      write_back(t, buf);
    });
  }

  c10::intrusive_ptr<c10d::Work> allreduce_coalesced(
      std::vector<at::Tensor>& ts, const c10d::AllreduceCoalescedOptions& o) override {
    if (ts.empty()) fail("ccl all_reduce_coalesced: no tensors");
    for (auto& t : ts) check_same(t, ts[0], "all_reduce_coalesced", "a tensor");
    bool avg;
    ccl_op(o.reduceOp, ts[0].scalar_type(), "all_reduce_coalesced", &avg);
    auto op = o.reduceOp;
    auto list = ts;
    return enqueue(OpType::ALLREDUCE_COALESCED, "all_reduce_coalesced", ts, o.timeout,
                   [this, list, op] {
                     std::vector<at::Tensor> flat;
                     for (auto& t : list) flat.push_back(t.reshape(-1));
                     auto buf = at::cat(flat);
                     reduce_in_place(buf, op, "all_reduce_coalesced", -1);
                     int64_t off = 0;
                     for (auto& t : list) {
                       t.copy_(buf.narrow(0, off, t.numel()).view(t.sizes()));
                       off += t.numel();
                     }
                   });
  }

  c10::intrusive_ptr<c10d::Work> reduce(std::vector<at::Tensor>& ts,
                                        const c10d::ReduceOptions& o) override {
    check_one(ts, "reduce");
    check_root(o.rootRank, "reduce");
    bool avg;
    ccl_op(o.reduceOp, ts[0].scalar_type(), "reduce", &avg);
    auto t = ts[0];
    auto op = o.reduceOp;
    int root = int(o.rootRank);
    return enqueue(OpType::REDUCE, "reduce", ts, o.timeout, [this, t, op, root] {
      auto buf = dense(t);
      reduce_in_place(buf, op, "reduce", root);  // leaves a non-root's input as it was
      if (rank_ == root) write_back(t, buf);
    });
  }

  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& ts,
                                           const c10d::BroadcastOptions& o) override {
    check_one(ts, "broadcast");
    check_root(o.rootRank, "broadcast");
    auto t = ts[0];
    int root = int(o.rootRank);
    return enqueue(OpType::BROADCAST, "broadcast", ts, o.timeout, [this, t, root] {
      auto buf = dense(t);
      if (local_->enabled()) {  // every rank reads the root's buffer
        const size_t n = buf.nbytes();
        std::vector<size_t> off(size_, 0), send(size_, 0), recv(size_, 0);
        std::vector<void*> to(size_, nullptr);
        if (rank_ == root) {
          for (int j = 0; j < size_; ++j) send[j] = j == root ? 0 : n;
        } else {
          recv[root] = n;
          to[root] = buf.data_ptr();
        }
        local_call([&] { local_->exchange("broadcast", buf.data_ptr(), off.data(), send.data(),
                                          to.data(), recv.data(), aborted_check()); });
      } else if (buf.nbytes() > 0) {
        ccl::broadcast(buf.data_ptr(), buf.nbytes(), ccl::datatype::uint8, root, *comm_).wait();
      }
      write_back(t, buf);
    });
  }

  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& outs,
                                           std::vector<at::Tensor>& ins,
                                           const c10d::AllgatherOptions& o) override {
    check_one(ins, "all_gather");
    if (outs.size() != 1 || int(outs[0].size()) != size_)
      fail("ccl all_gather: expected one list of " + std::to_string(size_) + " output tensors");
    auto in = ins[0];
    auto list = outs[0];
    for (auto& t : list) {
      check_same(t, in, "all_gather", "an output tensor");
      if (t.numel() != in.numel()) fail("ccl all_gather: output tensors must match the input's size");
    }
    return enqueue(OpType::ALLGATHER, "all_gather", list, o.timeout, [this, in, list] {
      auto src = dense(in);
      bool direct = local_->enabled();
      for (auto& t : list) direct = direct && t.is_contiguous();
      if (direct) {  // straight into the outputs
        std::vector<void*> to;
        for (auto& t : list) to.push_back(t.data_ptr());
        gather_local("all_gather", src, to);
        return;
      }
      auto buf = at::empty({int64_t(size_) * src.numel()}, src.options());
      gather_bytes(src, buf);
      for (int r = 0; r < size_; ++r)
        list[r].copy_(buf.narrow(0, r * src.numel(), src.numel()).view(list[r].sizes()));
    });
  }

  c10::intrusive_ptr<c10d::Work> _allgather_base(at::Tensor& out, at::Tensor& in,
                                                 const c10d::AllgatherOptions& o) override {
    check_cpu(in, "all_gather_into_tensor");
    check_same(out, in, "all_gather_into_tensor", "the output");
    if (out.numel() != in.numel() * size_)
      fail("ccl all_gather_into_tensor: output has " + std::to_string(out.numel()) +
           " elements, expected world_size * input = " + std::to_string(in.numel() * size_));
    return enqueue(OpType::_ALLGATHER_BASE, "all_gather_into_tensor", {out}, o.timeout,
                   [this, out, in] {
                     auto buf = dense(out);
                     gather_bytes(dense(in), buf);
                     write_back(out, buf);
                   });
  }

  c10::intrusive_ptr<c10d::Work> allgather_into_tensor_coalesced(
      std::vector<at::Tensor>& outs, std::vector<at::Tensor>& ins,
      const c10d::AllgatherOptions& o) override {
    if (outs.size() != ins.size()) fail("ccl all_gather_into_tensor_coalesced: list sizes differ");
    for (size_t i = 0; i < ins.size(); ++i) {
      check_same(outs[i], ins[i], "all_gather_into_tensor_coalesced", "an output");
      if (outs[i].numel() != ins[i].numel() * size_)
        fail("ccl all_gather_into_tensor_coalesced: output " + std::to_string(i) + " has the wrong size");
    }
    return enqueue(OpType::COALESCED, "all_gather_into_tensor_coalesced", outs, o.timeout,
                   [this, outs, ins] {
                     for (size_t i = 0; i < ins.size(); ++i) {
                       auto buf = dense(outs[i]);
                       gather_bytes(dense(ins[i]), buf);
                       write_back(outs[i], buf);
                     }
                   });
  }

  c10::intrusive_ptr<c10d::Work> reduce_scatter(std::vector<at::Tensor>& outs,
                                                std::vector<std::vector<at::Tensor>>& ins,
                                                const c10d::ReduceScatterOptions& o) override {
    check_one(outs, "reduce_scatter");
    if (ins.size() != 1 || int(ins[0].size()) != size_)
      fail("ccl reduce_scatter: expected one list of " + std::to_string(size_) + " input tensors");
    auto out = outs[0];
    auto list = ins[0];
    for (auto& t : list) {
      check_same(t, out, "reduce_scatter", "an input tensor");
      if (t.numel() != out.numel()) fail("ccl reduce_scatter: input tensors must match the output's size");
    }
    bool avg;
    ccl_op(o.reduceOp, out.scalar_type(), "reduce_scatter", &avg);
    auto op = o.reduceOp;
    return enqueue(OpType::REDUCE_SCATTER, "reduce_scatter", outs, o.timeout, [this, out, list, op] {
      std::vector<at::Tensor> flat;
      for (auto& t : list) flat.push_back(t.reshape(-1));
      auto buf = dense(out);
      scatter_reduce(at::cat(flat), buf, op, "reduce_scatter");
      write_back(out, buf);
    });
  }

  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(at::Tensor& out, at::Tensor& in,
                                                      const c10d::ReduceScatterOptions& o) override {
    check_cpu(in, "reduce_scatter_tensor");
    check_same(out, in, "reduce_scatter_tensor", "the output");
    if (in.numel() != out.numel() * size_)
      fail("ccl reduce_scatter_tensor: input has " + std::to_string(in.numel()) +
           " elements, expected world_size * output = " + std::to_string(out.numel() * size_));
    bool avg;
    ccl_op(o.reduceOp, out.scalar_type(), "reduce_scatter_tensor", &avg);
    auto op = o.reduceOp;
    return enqueue(OpType::_REDUCE_SCATTER_BASE, "reduce_scatter_tensor", {out}, o.timeout,
                   [this, out, in, op] {
                     auto buf = dense(out);
                     scatter_reduce(dense(in).reshape(-1), buf, op, "reduce_scatter_tensor");
                     write_back(out, buf);
                   });
  }

  c10::intrusive_ptr<c10d::Work> reduce_scatter_tensor_coalesced(
      std::vector<at::Tensor>& outs, std::vector<at::Tensor>& ins,
      const c10d::ReduceScatterOptions& o) override {
    if (outs.size() != ins.size()) fail("ccl reduce_scatter_tensor_coalesced: list sizes differ");
    bool avg;
    for (size_t i = 0; i < ins.size(); ++i) {
      check_same(outs[i], ins[i], "reduce_scatter_tensor_coalesced", "an output");
      if (ins[i].numel() != outs[i].numel() * size_)
        fail("ccl reduce_scatter_tensor_coalesced: input " + std::to_string(i) + " has the wrong size");
      ccl_op(o.reduceOp, ins[i].scalar_type(), "reduce_scatter_tensor_coalesced", &avg);
    }
    auto op = o.reduceOp;
    return enqueue(OpType::COALESCED, "reduce_scatter_tensor_coalesced", outs, o.timeout,
                   [this, outs, ins, op] {
                     for (size_t i = 0; i < ins.size(); ++i) {
                       auto buf = dense(outs[i]);
                       scatter_reduce(dense(ins[i]).reshape(-1), buf, op, "reduce_scatter_tensor");
                       write_back(outs[i], buf);
                     }
                   });
  }

  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& out, at::Tensor& in,
                                               std::vector<int64_t>& out_splits,
                                               std::vector<int64_t>& in_splits,
                                               const c10d::AllToAllOptions& o) override {
    const char* op = "all_to_all_single";
    check_cpu(in, op);
    check_same(out, in, op, "the output");
    auto send = split_bytes(in, in_splits, "input");
    auto recv = split_bytes(out, out_splits, "output");
    // Ranks on one host: direct reads (alltoallv_bytes). Otherwise, with no
    // split sizes (even blocks on every rank: torch's contract, so every rank
    // takes this branch alike), oneCCL's alltoall (MPI_Ialltoall over the MPI
    // transport, tuned in ipex_train/distributed/_env.py) replaces alltoallv:
    // 1 MiB took 0.52 ms instead of 0.77 here.
    const bool even = in_splits.empty() && out_splits.empty();
    return enqueue(OpType::ALLTOALL_BASE, op, {out}, o.timeout, [this, out, in, send, recv, even] {
      auto buf = dense(out);
      auto src = dense(in);
      // In place (output = input, as torch does not forbid): peers must read
      // the input while this rank overwrites it, so they get a copy.
      if (src.nbytes() && buf.nbytes() && at::get_overlap_status(src, buf) != at::MemOverlapStatus::No)
        src = src.clone();
      if (even && buf.nbytes() > 0 && !local_->enabled()) {
        ccl::alltoall(src.data_ptr(), buf.data_ptr(), send[0], ccl::datatype::uint8, *comm_).wait();
      } else {
        alltoallv_bytes("all_to_all_single", src, send, buf, recv);
      }
      write_back(out, buf);
    });
  }

  c10::intrusive_ptr<c10d::Work> alltoall(std::vector<at::Tensor>& outs,
                                          std::vector<at::Tensor>& ins,
                                          const c10d::AllToAllOptions& o) override {
    const char* op = "all_to_all";
    if (int(outs.size()) != size_ || int(ins.size()) != size_)
      fail("ccl all_to_all: expected " + std::to_string(size_) + " input and output tensors");
    std::vector<size_t> send, recv;
    for (int r = 0; r < size_; ++r) {
      check_same(ins[r], ins[0], op, "an input");
      check_same(outs[r], ins[0], op, "an output");
      send.push_back(ins[r].nbytes());
      recv.push_back(outs[r].nbytes());
    }
    return enqueue(OpType::ALLTOALL, op, outs, o.timeout, [this, outs, ins, send, recv] {
      std::vector<at::Tensor> flat;
      for (auto& t : ins) flat.push_back(t.reshape(-1));
      auto sbuf = at::cat(flat);
      int64_t total = 0;
      for (auto& t : outs) total += t.numel();
      auto rbuf = at::empty({total}, sbuf.options());
      alltoallv_bytes("all_to_all", sbuf, send, rbuf, recv);
      int64_t off = 0;
      for (auto& t : outs) {
        t.copy_(rbuf.narrow(0, off, t.numel()).view(t.sizes()));
        off += t.numel();
      }
    });
  }

  // gather and scatter ride on all-to-all-v with zero counts to non-roots.

  c10::intrusive_ptr<c10d::Work> gather(std::vector<std::vector<at::Tensor>>& outs,
                                        std::vector<at::Tensor>& ins,
                                        const c10d::GatherOptions& o) override {
    check_one(ins, "gather");
    check_root(o.rootRank, "gather");
    int root = int(o.rootRank);
    auto in = ins[0];
    std::vector<at::Tensor> list;
    if (rank_ == root) {
      if (outs.size() != 1 || int(outs[0].size()) != size_)
        fail("ccl gather: the root needs one list of " + std::to_string(size_) + " outputs");
      list = outs[0];
      for (auto& t : list) {
        check_same(t, in, "gather", "an output tensor");
        if (t.numel() != in.numel()) fail("ccl gather: output tensors must match the input's size");
      }
    } else if (!outs.empty() && !outs[0].empty()) {
      fail("ccl gather: only the root rank passes output tensors");
    }
    return enqueue(OpType::GATHER, "gather", list, o.timeout, [this, in, list, root] {
      auto src = dense(in);
      std::vector<size_t> send(size_, 0), recv(size_, 0);
      send[root] = src.nbytes();
      at::Tensor buf = at::empty({0}, src.options());
      if (rank_ == root) {
        for (auto& c : recv) c = src.nbytes();
        buf = at::empty({int64_t(size_) * src.numel()}, src.options());
      }
      alltoallv_bytes("gather", src, send, buf, recv);
      for (int r = 0; r < int(list.size()); ++r)
        list[r].copy_(buf.narrow(0, r * src.numel(), src.numel()).view(list[r].sizes()));
    });
  }

  c10::intrusive_ptr<c10d::Work> scatter(std::vector<at::Tensor>& outs,
                                         std::vector<std::vector<at::Tensor>>& ins,
                                         const c10d::ScatterOptions& o) override {
    check_one(outs, "scatter");
    check_root(o.rootRank, "scatter");
    int root = int(o.rootRank);
    auto out = outs[0];
    std::vector<at::Tensor> list;
    if (rank_ == root) {
      if (ins.size() != 1 || int(ins[0].size()) != size_)
        fail("ccl scatter: the root needs one list of " + std::to_string(size_) + " inputs");
      list = ins[0];
      for (auto& t : list) {
        check_same(t, out, "scatter", "an input tensor");
        if (t.numel() != out.numel()) fail("ccl scatter: input tensors must match the output's size");
      }
    } else if (!ins.empty() && !ins[0].empty()) {
      fail("ccl scatter: only the root rank passes input tensors");
    }
    return enqueue(OpType::SCATTER, "scatter", outs, o.timeout, [this, out, list, root] {
      std::vector<size_t> send(size_, 0), recv(size_, 0);
      recv[root] = out.nbytes();
      at::Tensor sbuf = at::empty({0}, out.options());
      if (rank_ == root) {
        std::vector<at::Tensor> flat;
        for (auto& t : list) flat.push_back(t.reshape(-1));
        sbuf = at::cat(flat);
        for (auto& c : send) c = out.nbytes();
      }
      auto buf = dense(out);
      alltoallv_bytes("scatter", sbuf, send, buf, recv);
      write_back(out, buf);
    });
  }

  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions& o) override {
    return enqueue(OpType::BARRIER, "barrier", {}, o.timeout, [this] { ccl::barrier(*comm_).wait(); });
  }

  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& ts, int dst, int tag) override {
    check_one(ts, "send");
    check_peer(dst, "send");
    auto buf = dense(ts[0]);
    return enqueue_p2p(OpType::SEND, "send", ts, [this, buf, dst, tag] {
      return start_send(dst, tag, buf);
    });
  }

  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& ts, int src, int tag) override {
    check_one(ts, "recv");
    check_peer(src, "recv");
    auto t = ts[0];
    auto buf = dense(t);
    return enqueue_p2p(OpType::RECV, "recv", ts, [this, t, buf, src, tag] {
      return start_recv(src, tag, buf, [t, buf] { write_back(t, buf); });
    });
  }

  // Reached by recv(tensor) without src and irecv(tensor) without src. A
  // wildcard would have to read headers from every peer at once, leaving
  // receives in flight that nothing may ever complete (and that would block
  // every later collective): refused instead.
  c10::intrusive_ptr<c10d::Work> recvAnysource(std::vector<at::Tensor>&, int) override {
    fail("ccl recv: receiving from any source (src=None) is not supported by the ccl backend; "
         "pass src");
  }

 private:
  static constexpr ms kUnset = c10d::kUnsetTimeout;

  void check_root(int64_t root, const char* op) const {
    if (root < 0 || root >= size_)
      fail(std::string("ccl ") + op + ": root rank " + std::to_string(root) + " out of range [0, " +
           std::to_string(size_) + ")");
  }
  void check_peer(int peer, const char* op) const {
    if (peer < 0 || peer >= size_ || peer == rank_)
      fail(std::string("ccl ") + op + ": peer rank " + std::to_string(peer) +
           " is not another rank of this group of " + std::to_string(size_));
  }

  // Per-rank byte counts of a tensor split along dim 0 (equal split when empty).
  std::vector<size_t> split_bytes(const at::Tensor& t, const std::vector<int64_t>& splits,
                                  const char* what) const {
    const int64_t rows = t.dim() ? t.size(0) : 1;
    const size_t row_bytes = rows ? t.nbytes() / rows : 0;
    std::vector<size_t> out(size_);
    if (splits.empty()) {
      if (rows % size_)
        fail(std::string("ccl all_to_all_single: ") + what + " dim 0 (" + std::to_string(rows) +
             ") is not divisible by the world size " + std::to_string(size_));
      for (auto& c : out) c = (rows / size_) * row_bytes;
      return out;
    }
    if (int(splits.size()) != size_)
      fail(std::string("ccl all_to_all_single: ") + what + " split sizes has " +
           std::to_string(splits.size()) + " entries, expected " + std::to_string(size_));
    int64_t sum = 0;
    for (int r = 0; r < size_; ++r) {
      if (splits[r] < 0) fail("ccl all_to_all_single: negative split size");
      sum += splits[r];
      out[r] = size_t(splits[r]) * row_bytes;
    }
    if (sum != rows)
      fail(std::string("ccl all_to_all_single: ") + what + " split sizes sum to " +
           std::to_string(sum) + " but dim 0 is " + std::to_string(rows));
    return out;
  }

  // ---- oneCCL calls (worker thread only) ----
  // All-gather of `src`'s bytes into contiguous `dst` (rank order).
  void gather_bytes(const at::Tensor& src, const at::Tensor& dst) {
    if (local_->enabled()) {
      std::vector<void*> to;
      for (int j = 0; j < size_; ++j) to.push_back(static_cast<char*>(dst.data_ptr()) + j * src.nbytes());
      gather_local("all_gather", src, to);
      return;
    }
    if (src.nbytes() == 0) return;
    std::vector<size_t> counts(size_, src.nbytes());
    ccl::allgatherv(src.data_ptr(), src.nbytes(), dst.data_ptr(), counts, ccl::datatype::uint8, *comm_)
        .wait();
  }

  // Every rank's `src` bytes to to[j] on every rank j (direct reads). A source
  // that overlaps a destination other than its own slot would be overwritten
  // while peers read it: they get a copy.
  void gather_local(const char* op, at::Tensor src, const std::vector<void*>& to) {
    const size_t n = src.nbytes();
    if (n) {
      const char* s = static_cast<const char*>(src.data_ptr());
      for (int j = 0; j < size_; ++j) {
        const char* d = static_cast<const char*>(to[j]);
        if (j != rank_ && s < d + n && d < s + n) {
          src = src.clone();
          break;
        }
      }
    }
    std::vector<size_t> off(size_, 0), len(size_, n);
    local_call([&] { local_->exchange(op, src.data_ptr(), off.data(), len.data(), to.data(), len.data(),
                                      aborted_check()); });
  }

  std::function<void()> aborted_check() {
    return [this] {
      if (aborted_.load()) throw std::runtime_error("the process group was aborted meanwhile");
    };
  }

  // Runs a local exchange; a peer that is gone aborts the group.
  template <class Fn>
  void local_call(Fn&& fn) {
    try {
      fn();
    } catch (const ccl_local::PeerLost& e) {
      abort_with(e.what());  // the group cannot go on without that rank
      throw;
    }
  }

  void alltoallv_bytes(const char* op, const at::Tensor& src, const std::vector<size_t>& send,
                       const at::Tensor& dst, const std::vector<size_t>& recv) {
    static char dummy[1];
    void* s = src.nbytes() ? src.data_ptr() : dummy;
    void* d = dst.nbytes() ? dst.data_ptr() : dummy;
    if (local_->enabled()) {
      local_call([&] { local_->alltoallv(op, s, send.data(), d, recv.data(), aborted_check()); });
      return;
    }
    // oneCCL handles zero counts; every rank calls it (whether all counts are
    // zero everywhere is not known locally).
    ccl::alltoallv(s, send, d, recv, ccl::datatype::uint8, *comm_).wait();
  }

  // In-place reduction of contiguous `buf` to all ranks (root < 0) or to
  // `root`; a non-root's `buf` is only read.
  void reduce_in_place(at::Tensor& buf, const ReduceOp& op, const char* name, int root) {
    bool avg;
    const auto red = ccl_op(op, buf.scalar_type(), name, &avg);
    at::Tensor work = is_half(buf.scalar_type()) ? buf.to(at::kFloat) : buf;
    if (work.numel() > 0) {
      const auto dt = ccl_type(work.scalar_type(), name);
      if (root < 0) {
        ccl::allreduce(work.data_ptr(), work.data_ptr(), work.numel(), dt, red, *comm_).wait();
      } else if (rank_ != root) {
        // oneCCL may use a non-root's receive buffer as scratch: give it one of
        // its own rather than copying the input (pages never written cost nothing)
        auto scratch = at::empty_like(work);
        ccl::reduce(work.data_ptr(), scratch.data_ptr(), work.numel(), dt, red, root, *comm_).wait();
        return;
      } else {
        ccl::reduce(work.data_ptr(), work.data_ptr(), work.numel(), dt, red, root, *comm_).wait();
      }
    }
    if (avg) work.div_(size_);
    if (!work.is_same(buf)) buf.copy_(work);
  }

  // Reduces `in` (world_size * out.numel() elements) and leaves this rank's
  // block in contiguous `out`.
  void scatter_reduce(const at::Tensor& in, at::Tensor& out, const ReduceOp& op, const char* name) {
    bool avg;
    const auto red = ccl_op(op, out.scalar_type(), name, &avg);
    const bool half = is_half(out.scalar_type());
    at::Tensor src = half ? in.to(at::kFloat) : in;
    at::Tensor dst = half ? at::empty(out.sizes(), out.options().dtype(at::kFloat)) : out;
    if (dst.numel() > 0)
      ccl::reduce_scatter(src.data_ptr(), dst.data_ptr(), dst.numel(),
                          ccl_type(dst.scalar_type(), name), red, *comm_)
          .wait();
    if (avg) dst.div_(size_);
    if (!dst.is_same(out)) out.copy_(dst);
  }

  // ---- queue, worker and watchdog ----
  c10::intrusive_ptr<c10d::Work> enqueue(OpType type, const char* name, std::vector<at::Tensor> outs,
                                         ms timeout, std::function<void()> fn) {
    if (timeout == kUnset) timeout = timeout_;
    auto w = c10::make_intrusive<WorkCCL>(rank_, type, std::move(outs), timeout, name);
    w->pg = this;
    {
      std::lock_guard<std::mutex> g(m_);
      if (aborted_.load()) fail(std::string("ccl ") + name + ": process group aborted earlier: " + reason_);
      queue_.push_back(Task{w, std::move(fn)});
      ++seq_;
    }
    cv_.notify_all();
    return w;
  }

  c10::intrusive_ptr<c10d::Work> enqueue_p2p(OpType type, const char* name,
                                             std::vector<at::Tensor> outs,
                                             std::function<Poll()> start) {
    auto w = c10::make_intrusive<WorkCCL>(rank_, type, std::move(outs), timeout_, name);
    w->pg = this;
    {
      std::lock_guard<std::mutex> g(m_);
      if (aborted_.load()) fail(std::string("ccl ") + name + ": process group aborted earlier: " + reason_);
      queue_.push_back(Task{w, nullptr, std::move(start)});
      ++seq_;
    }
    cv_.notify_all();
    return w;
  }

  static std::exception_ptr wrap(const std::string& name, const std::exception& e) {
    return std::make_exception_ptr(c10::DistBackendError(
        {__func__, __FILE__, uint32_t(__LINE__)}, "ccl " + name + " failed: " + e.what()));
  }

  // ---- point-to-point (worker thread only; see "point-to-point matching") ----
  Poll start_send(int dst, int64_t tag, const at::Tensor& buf) {
    if (chans_.empty()) fail("ccl send: process group aborted");
    auto r = std::make_shared<SendReq>();
    r->hdr = {tag, int64_t(buf.nbytes())};
    r->buf = buf;
    chans_[dst].sends.push_back(r);
    pump(dst);
    return [r] {
      if (r->finished && r->err) std::rethrow_exception(r->err);
      return r->finished;
    };
  }

  // Sends to `peer` one header or payload at a time, in issue order.
  void pump_sends(Channel& ch, int peer) {
    while (!ch.sends.empty()) {
      SendReq& r = *ch.sends.front();
      if (r.ev) {
        if (!r.ev->test()) return;
        r.ev.reset();
      }
      if (r.posted == 0 || (r.posted == 1 && r.hdr[1] > 0)) {
        const bool header = r.posted == 0;
        r.ev = std::make_unique<ccl::event>(
            header ? ccl::send(r.hdr.data(), sizeof(r.hdr), ccl::datatype::uint8, peer, *comm_)
                   : ccl::send(r.buf.data_ptr(), r.buf.nbytes(), ccl::datatype::uint8, peer, *comm_));
        ++r.posted;
      } else {
        r.finished = true;
        ch.sends.pop_front();
      }
    }
  }

  Poll start_recv(int src, int64_t tag, const at::Tensor& buf, std::function<void()> done) {
    if (chans_.empty()) fail("ccl recv: process group aborted");
    auto r = std::make_shared<RecvReq>(RecvReq{tag, buf, std::move(done)});
    Channel& ch = chans_[src];
    auto it = std::find_if(ch.stash.begin(), ch.stash.end(),
                           [tag](const Stashed& m) { return m.tag == tag; });
    if (it != ch.stash.end()) {
      auto bytes = std::move(it->bytes);
      ch.stash.erase(it);
      complete(*r, src, tag, bytes);
    } else {
      ch.posted.push_back(r);
      pump(src);
    }
    return [r] {
      if (r->finished && r->err) std::rethrow_exception(r->err);
      return r->finished;
    };
  }

  static std::shared_ptr<RecvReq> take_posted(Channel& ch, int64_t tag) {
    for (auto it = ch.posted.begin(); it != ch.posted.end(); ++it) {
      if ((*it)->tag == tag) {
        auto r = *it;
        ch.posted.erase(it);
        return r;
      }
    }
    return nullptr;
  }

  // Finishes `r` with the message `data` (already in r.buf when they share storage).
  static void complete(RecvReq& r, int peer, int64_t tag, const at::Tensor& data) {
    try {
      if (data.nbytes() != r.buf.nbytes())
        fail("ccl recv: the message from rank " + std::to_string(peer) + " with tag " +
             std::to_string(tag) + " has " + std::to_string(data.nbytes()) +
             " bytes, the receive tensor " + std::to_string(r.buf.nbytes()));
      if (data.nbytes() > 0 && data.data_ptr() != r.buf.data_ptr())
        std::memcpy(r.buf.data_ptr(), data.data_ptr(), data.nbytes());
      r.done();
    } catch (...) {
      r.err = std::current_exception();
    }
    r.finished = true;
  }

  // A payload from `peer` finished arriving in ch.body.
  static void landed(Channel& ch, int peer) {
    auto r = std::move(ch.body_for);
    if (!r) r = take_posted(ch, ch.body_tag);  // posted while the payload arrived
    if (r)
      complete(*r, peer, ch.body_tag, ch.body);
    else
      ch.stash.push_back(Stashed{ch.body_tag, ch.body});
    ch.body = at::Tensor();
  }

  // Moves the traffic with `peer` on as far as it goes without blocking.
  void pump(int peer) {
    Channel& ch = chans_[peer];
    try {
      pump_sends(ch, peer);
    } catch (...) {  // a failed oneCCL send fails every send queued for this peer
      auto err = std::current_exception();
      for (auto& r : ch.sends) {
        new std::shared_ptr<SendReq>(r);  // oneCCL may still use it: leaked, never freed
        r->err = err;
        r->finished = true;
      }
      ch.sends.clear();
    }
    try {
      for (;;) {
        if (ch.body_ev) {
          if (!ch.body_ev->test()) return;
          ch.body_ev.reset();
          landed(ch, peer);
        } else if (ch.hdr_ev) {
          if (!ch.hdr_ev->test()) return;
          ch.hdr_ev.reset();
          const int64_t tag = ch.hdr[0], n = ch.hdr[1];
          ch.body_tag = tag;
          ch.body_for = take_posted(ch, tag);
          const bool direct = ch.body_for && int64_t(ch.body_for->buf.nbytes()) == n;
          ch.body = direct ? ch.body_for->buf : at::empty({n}, at::kByte);
          if (n > 0)
            ch.body_ev = std::make_unique<ccl::event>(
                ccl::recv(ch.body.data_ptr(), n, ccl::datatype::uint8, peer, *comm_));
          else
            landed(ch, peer);
        } else if (!ch.posted.empty()) {
          ch.hdr_ev = std::make_unique<ccl::event>(
              ccl::recv(ch.hdr.data(), sizeof(ch.hdr), ccl::datatype::uint8, peer, *comm_));
        } else {
          return;
        }
      }
    } catch (...) {  // a failed oneCCL receive fails every recv waiting on this peer
      auto err = std::current_exception();
      (void)ch.hdr_ev.release();  // as above: leaked, oneCCL may still use them
      (void)ch.body_ev.release();
      new at::Tensor(std::move(ch.body));
      if (ch.body_for) ch.posted.push_front(std::move(ch.body_for));
      for (auto& r : ch.posted) {
        r->err = err;
        r->finished = true;
      }
      ch.posted.clear();
    }
  }

  // Tests the in-flight point-to-point ops (worker thread); `block` waits for
  // all of them (before a collective, which must not overtake them).
  void progress_p2p(bool block) {
    while (!inflight_.empty()) {
      bool any = false;
      for (size_t p = 0; p < chans_.size(); ++p) pump(int(p));
      for (size_t i = 0; i < inflight_.size();) {
        auto& f = inflight_[i];
        std::exception_ptr err;
        bool fin = false;
        try {
          fin = f.poll();
        } catch (const std::exception& e) {
          err = wrap(f.work->name(), e);
          fin = true;
        }
        if (fin) {
          auto w = f.work;
          {
            std::lock_guard<std::mutex> g(m_);
            inflight_.erase(inflight_.begin() + i);
          }
          w->finish(err);
          any = true;
        } else {
          ++i;
        }
      }
      if (!block || aborted_.load()) return;
      if (!any) std::this_thread::yield();
    }
  }

  void work_loop() {
    for (;;) {
      Task t;
      {
        std::unique_lock<std::mutex> g(m_);
        if (inflight_.empty()) {
          cv_.wait(g, [this] { return stop_ || !queue_.empty(); });
        } else if (queue_.empty()) {
          cv_.wait_for(g, std::chrono::microseconds(50));
        }
        if (queue_.empty()) {
          if (stop_ && inflight_.empty()) {  // drained
            worker_exited_ = true;
            cv_.notify_all();
            return;
          }
          g.unlock();
          progress_p2p(false);
          if (aborted_.load()) {
            // The abort failed their works; oneCCL may still own the events:
            // leak them rather than destroy them mid-operation.
            std::lock_guard<std::mutex> g2(m_);
            new std::vector<InFlight>(std::move(inflight_));
            inflight_.clear();
            new std::vector<Channel>(std::move(chans_));
            chans_.clear();
          }
          continue;
        }
        t = std::move(queue_.front());
        queue_.pop_front();
      }
      if (t.start) {  // point-to-point: start it and keep going
        std::exception_ptr err;
        try {
          auto poll = t.start();
          std::lock_guard<std::mutex> g(m_);
          inflight_.push_back(InFlight{t.work, std::move(poll), Clock::now()});
        } catch (const std::exception& e) {
          err = wrap(t.work->name(), e);
        }
        if (err) t.work->finish(err);
        progress_p2p(false);
        continue;
      }
      progress_p2p(true);
      {
        std::lock_guard<std::mutex> g(m_);
        current_ = t.work;
        started_ = Clock::now();
      }
      std::exception_ptr err;
      try {
        t.run();
      } catch (const std::exception& e) {
        err = wrap(t.work->name(), e);
      }
      {
        std::lock_guard<std::mutex> g(m_);
        current_.reset();
      }
      t.work->finish(err);
    }
  }

  void watch_loop() {
    std::unique_lock<std::mutex> g(m_);
    while (!watch_stop_) {
      cv_.wait_for(g, ms(100));
      c10::intrusive_ptr<WorkCCL> late;
      if (current_ && Clock::now() - started_ > current_->timeout()) late = current_;
      for (auto& f : inflight_)
        if (!late && Clock::now() - f.since > f.work->timeout()) late = f.work;
      if (late && !aborted_.load()) {
        auto name = late->name();
        auto tmo = late->timeout().count();
        g.unlock();
        abort_with(name + " did not finish within its timeout of " + std::to_string(tmo) +
                   " ms (a peer rank may have died)");
        g.lock();
      }
    }
  }

  ms timeout_;
  std::shared_ptr<ccl::kvs> kvs_;
  std::unique_ptr<ccl::communicator> comm_;
  std::unique_ptr<ccl_local::LocalExchange> local_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  c10::intrusive_ptr<WorkCCL> current_;
  Clock::time_point started_;
  std::vector<InFlight> inflight_;  // point-to-point ops started, not finished
  std::vector<Channel> chans_;      // receive side per peer rank (worker thread only)
  bool stop_ = false, watch_stop_ = false, worker_exited_ = false;
  std::atomic<bool> aborted_{false};
  std::string reason_;
  std::atomic<uint64_t> seq_{0};
  std::thread worker_, watchdog_;
};

bool WorkCCL::wait(ms timeout) {
  const ms limit = timeout == kNoTimeout ? timeout_ : timeout;
  {
    std::unique_lock<std::mutex> g(m_);
    if (!done_cv_.wait_for(g, limit, [this] { return done_.load(); })) {
      g.unlock();
      if (pg) pg->abort_with(name_ + " wait() timed out after " + std::to_string(limit.count()) + " ms");
      g.lock();
    }
    done_cv_.wait(g, [this] { return done_.load(); });  // abort_with finished it
  }
  if (error_) std::rethrow_exception(error_);
  return true;
}

// pybind11 holder that drops the GIL before the last reference goes (the
// backend's destructor joins threads); same layout as torch's own holder for
// Backend, which our class derives from on the Python side.
template <typename T>
class NoGilPtr {
 public:
  NoGilPtr() = default;
  explicit NoGilPtr(T* p) : p_(c10::intrusive_ptr<T>::unsafe_reclaim_from_nonowning(p)) {}
  NoGilPtr(c10::intrusive_ptr<T> p) : p_(std::move(p)) {}
  NoGilPtr(const NoGilPtr&) = default;
  NoGilPtr& operator=(const NoGilPtr&) = default;
  ~NoGilPtr() {
    if (p_) {
      pybind11::gil_scoped_release r;
      p_.reset();
    }
  }
  T* get() const { return p_.get(); }
  T& operator*() const { return *p_; }
  T* operator->() const { return p_.get(); }

 private:
  c10::intrusive_ptr<T> p_;
};

}  // namespace
}  // namespace ipex_train

PYBIND11_DECLARE_HOLDER_TYPE(T, ipex_train::NoGilPtr<T>, true)

PYBIND11_MODULE(_ccl, m) {
  namespace py = pybind11;
  using ipex_train::ProcessGroupCCL;
  m.doc() = "oneCCL process group for torch.distributed (CPU tensors)";
  py::module::import("torch.distributed");
  py::class_<ProcessGroupCCL, c10d::Backend, ipex_train::NoGilPtr<ProcessGroupCCL>>(m, "ProcessGroupCCL")
      .def(py::init([](c10d::Store& store, int rank, int size, double timeout_s) {
             auto st = c10::intrusive_ptr<c10d::Store>::reclaim_copy(&store);
             c10::intrusive_ptr<ProcessGroupCCL> pg;
             {
               py::gil_scoped_release nogil;  // blocks on the store and the peers
               pg = c10::make_intrusive<ProcessGroupCCL>(
                   st, rank, size, std::chrono::milliseconds(int64_t(timeout_s * 1000)));
             }
             return ipex_train::NoGilPtr<ProcessGroupCCL>(std::move(pg));
           }),
           py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("timeout_s"))
      .def_property_readonly("aborted", &ProcessGroupCCL::aborted)
      .def_property_readonly("transfer_path", &ProcessGroupCCL::transfer_path,
                             "\"local\" (direct reads between this host's ranks) or "
                             "\"oneccl (why not local)\"");
  m.def("any_aborted", [] { return ipex_train::g_any_aborted.load(); },
        "True once a ccl group of this process aborted (its worker may be stuck in oneCCL)");
  m.def("library_version", [] {
    auto v = ccl::get_library_version();
    return std::string(v.full);
  });
}
