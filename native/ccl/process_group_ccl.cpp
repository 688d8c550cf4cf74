// The collectives of ProcessGroupCCL (see process_group_ccl.h), its set-up
// and tear-down, and the queueing of its works. All-to-all's byte movement
// is in alltoall_paths.cpp.
#include "process_group_ccl.h"
#include "tensor_args.h"

#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>

namespace ipex_train {
namespace {

using c10d::OpType;
using c10d::ReduceOp;

using namespace ccl_args;

constexpr ms kUnset = c10d::kUnsetTimeout;

// A tensor's bytes for the point-to-point channels, which keep it alive.
ccl_p2p::Bytes bytes_of(const at::Tensor& t) {
  return ccl_p2p::Bytes{t.data_ptr(), t.nbytes(), std::make_shared<at::Tensor>(t)};
}

// The queue's view of a WorkCCL.
class QueuedWork final : public ccl_queue::Job {
 public:
  explicit QueuedWork(c10::intrusive_ptr<WorkCCL> w) : w_(std::move(w)) {}
  const std::string& name() const override { return w_->name(); }
  ms timeout() const override { return w_->timeout(); }
  bool finish(std::exception_ptr err) override { return w_->finish(err); }

 private:
  c10::intrusive_ptr<WorkCCL> w_;
};

}  // namespace

// ---------------------------------------------------------------- WorkCCL ---

bool WorkCCL::finish(std::exception_ptr err) {
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

bool WorkCCL::wait(ms timeout) {
  const ms limit = timeout == kNoTimeout ? timeout_ : timeout;
  {
    std::unique_lock<std::mutex> g(m_);
    if (!done_cv_.wait_for(g, limit, [this] { return done_.load(); })) {
      g.unlock();
      if (queue)
        queue->abort(name_ + " wait() timed out after " + std::to_string(limit.count()) + " ms");
      g.lock();
    }
    done_cv_.wait(g, [this] { return done_.load(); });  // abort finished it
  }
  if (error_) std::rethrow_exception(error_);
  return true;
}

// ---------------------------------------------------- set-up and tear-down ---

ProcessGroupCCL::ProcessGroupCCL(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, ms timeout)
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
  p2p_ = std::make_unique<ccl_p2p::Channels>(*comm_, size);
  queue_ = std::make_unique<ccl_queue::WorkQueue>(ccl_queue::Hooks{
      [](const std::string& msg) {
        return std::make_exception_ptr(
            c10::DistBackendError({__func__, __FILE__, uint32_t(__LINE__)}, msg));
      },
      [this] { p2p_->progress(); }, [this] { p2p_->drop(); }});
  queue_->start();
}

ProcessGroupCCL::~ProcessGroupCCL() {
  if (!queue_->stop()) {
    // The worker may be stuck inside oneCCL forever: leave it and leak what it
    // may use rather than hang or free memory it still uses.
    (void)queue_.release();
    (void)p2p_.release();
    (void)comm_.release();
    (void)local_.release();
    new std::shared_ptr<ccl::kvs>(std::move(kvs_));
  }
}

std::string ProcessGroupCCL::transfer_path() const {
  if (local_->whole()) return "local";
  if (local_->enabled())
    return "hierarchical (" + std::to_string(local_->hosts()) + " hosts, " +
           std::to_string(local_->members().size()) + " ranks on this one)";
  return "oneccl (" + local_->reason() + ")";
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::enqueue(OpType type, const char* name,
                                                        std::vector<at::Tensor> outs, ms timeout,
                                                        std::function<void()> fn) {
  if (timeout == kUnset) timeout = timeout_;
  auto w = c10::make_intrusive<WorkCCL>(rank_, type, std::move(outs), timeout, name);
  w->queue = queue_.get();
  queue_->submit(std::make_shared<QueuedWork>(w), std::move(fn));
  return w;
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::enqueue_p2p(OpType type, const char* name,
                                                            std::vector<at::Tensor> outs,
    std::function<ccl_queue::Poll()> start) {
  auto w = c10::make_intrusive<WorkCCL>(rank_, type, std::move(outs), timeout_, name);
  w->queue = queue_.get();
  queue_->submit_p2p(std::make_shared<QueuedWork>(w), std::move(start));
  return w;
}

// ----------------------------------------------------------- collectives ---

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::allreduce(std::vector<at::Tensor>& ts,
                                                          const c10d::AllreduceOptions& o) {
  check_one(ts, "all_reduce");
  auto t = ts[0];
  auto op = o.reduceOp;
  check_reduce(op, t.scalar_type(), "all_reduce");  // validate now, on the caller's thread
  return enqueue(OpType::ALLREDUCE, "all_reduce", ts, o.timeout, [this, t, op] {
    auto buf = dense(t);
    reduce_in_place(buf, op, "all_reduce", -1);
    write_back(t, buf);
  });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::allreduce_coalesced(
    std::vector<at::Tensor>& ts, const c10d::AllreduceCoalescedOptions& o) {
  if (ts.empty()) fail("ccl all_reduce_coalesced: no tensors");
  for (auto& t : ts) check_same(t, ts[0], "all_reduce_coalesced", "a tensor");
  check_reduce(o.reduceOp, ts[0].scalar_type(), "all_reduce_coalesced");
  auto op = o.reduceOp;
  auto list = ts;
  return enqueue(OpType::ALLREDUCE_COALESCED, "all_reduce_coalesced", ts, o.timeout,
                 [this, list, op] {
                   auto buf = flatten(list);
                   reduce_in_place(buf, op, "all_reduce_coalesced", -1);
                   unflatten(buf, list);
                 });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::reduce(std::vector<at::Tensor>& ts,
                                                       const c10d::ReduceOptions& o) {
  check_one(ts, "reduce");
  check_root(o.rootRank, size_, "reduce");
  check_reduce(o.reduceOp, ts[0].scalar_type(), "reduce");
  auto t = ts[0];
  auto op = o.reduceOp;
  int root = int(o.rootRank);
  return enqueue(OpType::REDUCE, "reduce", ts, o.timeout, [this, t, op, root] {
    auto buf = dense(t);
    reduce_in_place(buf, op, "reduce", root);  // leaves a non-root's input as it was
    if (rank_ == root) write_back(t, buf);
  });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::broadcast(std::vector<at::Tensor>& ts,
                                                          const c10d::BroadcastOptions& o) {
  check_one(ts, "broadcast");
  check_root(o.rootRank, size_, "broadcast");
  auto t = ts[0];
  int root = int(o.rootRank);
  return enqueue(OpType::BROADCAST, "broadcast", ts, o.timeout, [this, t, root] {
    auto buf = dense(t);
    if (local_->whole()) {  // every rank reads the root's buffer
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

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::allgather(std::vector<std::vector<at::Tensor>>& outs,
                                                          std::vector<at::Tensor>& ins,
                                                          const c10d::AllgatherOptions& o) {
  check_one(ins, "all_gather");
  auto in = ins[0];
  auto list = rank_list(outs, in, size_, "all_gather", /*outputs=*/true, /*at_root=*/false);
  return enqueue(OpType::ALLGATHER, "all_gather", list, o.timeout, [this, in, list] {
    auto src = dense(in);
    bool direct = local_->whole();
    for (auto& t : list) direct = direct && t.is_contiguous();
    if (direct) {  // straight into the outputs
      std::vector<void*> to;
      for (auto& t : list) to.push_back(t.data_ptr());
      gather_local("all_gather", src, to);
      return;
    }
    auto buf = at::empty({int64_t(size_) * src.numel()}, src.options());
    gather_bytes(src, buf);
    unflatten(buf, list);
  });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::_allgather_base(at::Tensor& out, at::Tensor& in,
                                                                const c10d::AllgatherOptions& o) {
  check_cpu(in, "all_gather_into_tensor");
  check_same(out, in, "all_gather_into_tensor", "the output");
  check_world_sized(out, in, size_, "all_gather_into_tensor", "output", "input");
  return enqueue(OpType::_ALLGATHER_BASE, "all_gather_into_tensor", {out}, o.timeout,
                 [this, out, in] {
                   auto buf = dense(out);
                   gather_bytes(dense(in), buf);
                   write_back(out, buf);
                 });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::allgather_into_tensor_coalesced(
    std::vector<at::Tensor>& outs, std::vector<at::Tensor>& ins,
    const c10d::AllgatherOptions& o) {
  check_pairs(outs, ins, size_, "all_gather_into_tensor_coalesced", /*outs_big=*/true);
  return enqueue(OpType::COALESCED, "all_gather_into_tensor_coalesced", outs, o.timeout,
                 [this, outs, ins] {
                   for (size_t i = 0; i < ins.size(); ++i) {
                     auto buf = dense(outs[i]);
                     gather_bytes(dense(ins[i]), buf);
                     write_back(outs[i], buf);
                   }
                 });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::reduce_scatter(std::vector<at::Tensor>& outs,
    std::vector<std::vector<at::Tensor>>& ins,
    const c10d::ReduceScatterOptions& o) {
  check_one(outs, "reduce_scatter");
  auto out = outs[0];
  auto list = rank_list(ins, out, size_, "reduce_scatter", /*outputs=*/false, /*at_root=*/false);
  check_reduce(o.reduceOp, out.scalar_type(), "reduce_scatter");
  auto op = o.reduceOp;
  return enqueue(OpType::REDUCE_SCATTER, "reduce_scatter", outs, o.timeout, [this, out, list, op] {
    auto buf = dense(out);
    scatter_reduce(flatten(list), buf, op, "reduce_scatter");
    write_back(out, buf);
  });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::_reduce_scatter_base(at::Tensor& out, at::Tensor& in,
    const c10d::ReduceScatterOptions& o) {
  check_cpu(in, "reduce_scatter_tensor");
  check_same(out, in, "reduce_scatter_tensor", "the output");
  check_world_sized(in, out, size_, "reduce_scatter_tensor", "input", "output");
  check_reduce(o.reduceOp, out.scalar_type(), "reduce_scatter_tensor");
  auto op = o.reduceOp;
  return enqueue(OpType::_REDUCE_SCATTER_BASE, "reduce_scatter_tensor", {out}, o.timeout,
                 [this, out, in, op] {
                   auto buf = dense(out);
                   scatter_reduce(dense(in).reshape(-1), buf, op, "reduce_scatter_tensor");
                   write_back(out, buf);
                 });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::reduce_scatter_tensor_coalesced(
    std::vector<at::Tensor>& outs, std::vector<at::Tensor>& ins,
    const c10d::ReduceScatterOptions& o) {
  check_pairs(outs, ins, size_, "reduce_scatter_tensor_coalesced", /*outs_big=*/false);
  for (auto& t : ins) check_reduce(o.reduceOp, t.scalar_type(), "reduce_scatter_tensor_coalesced");
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

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::alltoall_base(at::Tensor& out, at::Tensor& in,
                                                              std::vector<int64_t>& out_splits,
                                                              std::vector<int64_t>& in_splits,
                                                              const c10d::AllToAllOptions& o) {
  const char* op = "all_to_all_single";
  check_cpu(in, op);
  check_same(out, in, op, "the output");
  auto send = split_bytes(in, in_splits, size_, "input");
  auto recv = split_bytes(out, out_splits, size_, "output");
  // Ranks on one host: direct reads; on several hosts with ranks sharing
  // one: hierarchical (both in alltoallv_bytes). Otherwise, with no
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
      oneccl_bytes_ += buf.nbytes() - send[rank_];
    } else {
      alltoallv_bytes("all_to_all_single", src, send, buf, recv);
    }
    write_back(out, buf);
  });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::alltoall(std::vector<at::Tensor>& outs,
                                                         std::vector<at::Tensor>& ins,
                                                         const c10d::AllToAllOptions& o) {
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
    auto sbuf = flatten(ins);
    int64_t total = 0;
    for (auto& t : outs) total += t.numel();
    auto rbuf = at::empty({total}, sbuf.options());
    alltoallv_bytes("all_to_all", sbuf, send, rbuf, recv);
    unflatten(rbuf, outs);
  });
}

// gather and scatter ride on all-to-all-v with zero counts to non-roots.

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::gather(std::vector<std::vector<at::Tensor>>& outs,
                                                       std::vector<at::Tensor>& ins,
                                                       const c10d::GatherOptions& o) {
  check_one(ins, "gather");
  check_root(o.rootRank, size_, "gather");
  int root = int(o.rootRank);
  auto in = ins[0];
  std::vector<at::Tensor> list;
  if (rank_ == root) {
    list = rank_list(outs, in, size_, "gather", /*outputs=*/true, /*at_root=*/true);
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
    unflatten(buf, list);
  });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::scatter(std::vector<at::Tensor>& outs,
                                                        std::vector<std::vector<at::Tensor>>& ins,
                                                        const c10d::ScatterOptions& o) {
  check_one(outs, "scatter");
  check_root(o.rootRank, size_, "scatter");
  int root = int(o.rootRank);
  auto out = outs[0];
  std::vector<at::Tensor> list;
  if (rank_ == root) {
    list = rank_list(ins, out, size_, "scatter", /*outputs=*/false, /*at_root=*/true);
  } else if (!ins.empty() && !ins[0].empty()) {
    fail("ccl scatter: only the root rank passes input tensors");
  }
  return enqueue(OpType::SCATTER, "scatter", outs, o.timeout, [this, out, list, root] {
    std::vector<size_t> send(size_, 0), recv(size_, 0);
    recv[root] = out.nbytes();
    at::Tensor sbuf = at::empty({0}, out.options());
    if (rank_ == root) {
      sbuf = flatten(list);
      for (auto& c : send) c = out.nbytes();
    }
    auto buf = dense(out);
    alltoallv_bytes("scatter", sbuf, send, buf, recv);
    write_back(out, buf);
  });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::barrier(const c10d::BarrierOptions& o) {
  return enqueue(OpType::BARRIER, "barrier", {}, o.timeout, [this] { ccl::barrier(*comm_).wait(); });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::send(std::vector<at::Tensor>& ts, int dst, int tag) {
  check_one(ts, "send");
  check_peer(dst, rank_, size_, "send");
  auto buf = dense(ts[0]);
  return enqueue_p2p(OpType::SEND, "send", ts, [this, buf, dst, tag] {
    return p2p_->start_send(dst, tag, bytes_of(buf));
  });
}

c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::recv(std::vector<at::Tensor>& ts, int src, int tag) {
  check_one(ts, "recv");
  check_peer(src, rank_, size_, "recv");
  auto t = ts[0];
  auto buf = dense(t);
  return enqueue_p2p(OpType::RECV, "recv", ts, [this, t, buf, src, tag] {
    return p2p_->start_recv(src, tag, bytes_of(buf), [t, buf] { write_back(t, buf); });
  });
}

// Reached by recv(tensor) without src and irecv(tensor) without src. A
// wildcard would have to read headers from every peer at once, leaving
// receives in flight that nothing may ever complete (and that would block
// every later collective): refused instead.
c10::intrusive_ptr<c10d::Work> ProcessGroupCCL::recvAnysource(std::vector<at::Tensor>&, int) {
  fail("ccl recv: receiving from any source (src=None) is not supported by the ccl backend; "
       "pass src");
}

// --------------------------------------------------------------- helpers ---

// ---- oneCCL calls (worker thread only) ----
// All-gather of `src`'s bytes into contiguous `dst` (rank order).
void ProcessGroupCCL::gather_bytes(const at::Tensor& src, const at::Tensor& dst) {
  if (local_->whole()) {
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
void ProcessGroupCCL::gather_local(const char* op, at::Tensor src, const std::vector<void*>& to) {
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

std::function<void()> ProcessGroupCCL::aborted_check() {
  return [this] {
    if (aborted()) throw std::runtime_error("the process group was aborted meanwhile");
  };
}

// Runs a local exchange; a peer that is gone aborts the group.
void ProcessGroupCCL::local_call(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ccl_local::PeerLost& e) {
    abort_with(e.what());  // the group cannot go on without that rank
    throw;
  }
}

// alltoallv_bytes: alltoall_paths.cpp

// In-place reduction of contiguous `buf` to all ranks (root < 0) or to
// `root`; a non-root's `buf` is only read.
void ProcessGroupCCL::reduce_in_place(at::Tensor& buf, const ReduceOp& op, const char* name, int root) {
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
void ProcessGroupCCL::scatter_reduce(const at::Tensor& in, at::Tensor& out, const ReduceOp& op, const char* name) {
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

}  // namespace ipex_train
