// ProcessGroupCCL: a c10d::Backend over oneCCL for CPU tensors.
//
//   work_queue.h      execution model: worker thread, watchdog, abort
//   p2p_channel.h     send/recv matched by tag over oneCCL (torch-free)
//   local_exchange.h  single-host data movement by direct reads (torch-free)
//   process_group_ccl.cpp  the collectives
//   alltoall_paths.cpp  all-to-all's bytes: direct reads, oneCCL, or both
//                     (hierarchical: same host direct, between hosts oneCCL)
//   bindings.cpp      the pybind11 module ipex_train._ccl
//
// Data types
//   Data movement (broadcast, gathers, all-to-all, send/recv) moves bytes, so
//   every dtype works. Reductions run in oneCCL's typed arithmetic; bfloat16
//   and float16 are widened to float32 for the reduction (oneCCL's 16-bit
//   float reductions need AVX-512 on CPU), bool is reduced as uint8 with SUM/MAX
//   as logical or and PRODUCT/MIN as logical and, AVG is SUM then a division
//   (floating dtypes only). Anything else raises a RuntimeError naming the op.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <ATen/ATen.h>

#include <oneapi/ccl.hpp>

#include "local_exchange.h"
#include "p2p_channel.h"
#include "work_queue.h"

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ipex_train {

using ccl_queue::ms;
using Tensors = std::vector<at::Tensor>;
using WorkPtr = c10::intrusive_ptr<c10d::Work>;

// A queued or running collective as torch sees it. Finished exactly once: by
// the worker (success or a oneCCL error) or by the watchdog / abort (timeout).
class WorkCCL : public c10d::Work {
 public:
  WorkCCL(int rank, c10d::OpType type, std::vector<at::Tensor> outputs, ms timeout,
          std::string name)
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
  bool finish(std::exception_ptr err);

  const std::string& name() const { return name_; }
  ms timeout() const { return timeout_; }
  ccl_queue::WorkQueue* queue = nullptr;  // set at enqueue; outlives the work's wait()

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

class ProcessGroupCCL : public c10d::Backend {
 public:
  ProcessGroupCCL(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, ms timeout);
  ~ProcessGroupCCL() override;

  const std::string getBackendName() const override { return "ccl"; }
  void setTimeout(ms timeout) override { timeout_ = timeout; }
  void setSequenceNumberForGroup() override {}
  uint64_t getSequenceNumberForGroup() override { return queue_->seq(); }
  bool aborted() const { return queue_->aborted(); }
  // "local" when all-to-all, all-gather and broadcast move bytes by direct
  // reads between the ranks (all on this host); "hierarchical (...)" when the
  // ranks span hosts and all-to-all (with gather and scatter) reads the blocks
  // of this host's ranks directly and sends only the others through oneCCL;
  // else "oneccl (why)".
  std::string transfer_path() const;
  // Bytes this rank received in all-to-all, gather and scatter from other
  // ranks, by path ("direct_bytes", "oneccl_bytes"), and how many of those
  // ops ran hierarchically ("hierarchical_ops").
  std::map<std::string, uint64_t> transfer_stats() const;

  // Fails the running and all queued works with `why`; later calls fail fast.
  void abort_with(const std::string& why) { queue_->abort(why); }
  void abort() override { abort_with("abort() called"); }
  void shutdown() override {}

  // ---- collectives (torch.distributed's names; see process_group_ccl.cpp) ----
  WorkPtr allreduce(Tensors& ts, const c10d::AllreduceOptions& o) override;
  WorkPtr allreduce_coalesced(Tensors& ts, const c10d::AllreduceCoalescedOptions& o) override;
  WorkPtr reduce(Tensors& ts, const c10d::ReduceOptions& o) override;
  WorkPtr broadcast(Tensors& ts, const c10d::BroadcastOptions& o) override;
  WorkPtr allgather(std::vector<Tensors>& outs, Tensors& ins,
                    const c10d::AllgatherOptions& o) override;
  WorkPtr _allgather_base(at::Tensor& out, at::Tensor& in, const c10d::AllgatherOptions& o) override;
  WorkPtr allgather_into_tensor_coalesced(Tensors& outs, Tensors& ins,
                                          const c10d::AllgatherOptions& o) override;
  WorkPtr reduce_scatter(Tensors& outs, std::vector<Tensors>& ins,
                         const c10d::ReduceScatterOptions& o) override;
  WorkPtr _reduce_scatter_base(at::Tensor& out, at::Tensor& in,
                               const c10d::ReduceScatterOptions& o) override;
  WorkPtr reduce_scatter_tensor_coalesced(Tensors& outs, Tensors& ins,
                                          const c10d::ReduceScatterOptions& o) override;
  WorkPtr alltoall_base(at::Tensor& out, at::Tensor& in, std::vector<int64_t>& out_splits,
                        std::vector<int64_t>& in_splits, const c10d::AllToAllOptions& o) override;
  WorkPtr alltoall(Tensors& outs, Tensors& ins, const c10d::AllToAllOptions& o) override;
  // gather and scatter ride on all-to-all-v with zero counts to non-roots.
  WorkPtr gather(std::vector<Tensors>& outs, Tensors& ins, const c10d::GatherOptions& o) override;
  WorkPtr scatter(Tensors& outs, std::vector<Tensors>& ins, const c10d::ScatterOptions& o) override;
  WorkPtr barrier(const c10d::BarrierOptions& o) override;
  WorkPtr send(Tensors& ts, int dst, int tag) override;
  WorkPtr recv(Tensors& ts, int src, int tag) override;
  // Reached by recv(tensor) without src and irecv(tensor) without src: refused.
  WorkPtr recvAnysource(Tensors&, int) override;

 private:
  // ---- oneCCL and local-exchange calls (worker thread only) ----
  void gather_bytes(const at::Tensor& src, const at::Tensor& dst);
  void gather_local(const char* op, at::Tensor src, const std::vector<void*>& to);
  void alltoallv_bytes(const char* op, const at::Tensor& src, const std::vector<size_t>& send,
                       const at::Tensor& dst, const std::vector<size_t>& recv);
  void alltoallv_hierarchical(const char* op, const at::Tensor& src,
                              const std::vector<size_t>& send, const at::Tensor& dst,
                              const std::vector<size_t>& recv);
  void reduce_in_place(at::Tensor& buf, const c10d::ReduceOp& op, const char* name, int root);
  void scatter_reduce(const at::Tensor& in, at::Tensor& out, const c10d::ReduceOp& op,
                      const char* name);
  std::function<void()> aborted_check();
  void local_call(const std::function<void()>& fn);

  // ---- queueing ----
  c10::intrusive_ptr<c10d::Work> enqueue(c10d::OpType type, const char* name,
                                         std::vector<at::Tensor> outs, ms timeout,
                                         std::function<void()> fn);
  c10::intrusive_ptr<c10d::Work> enqueue_p2p(c10d::OpType type, const char* name,
                                             std::vector<at::Tensor> outs,
                                             std::function<ccl_queue::Poll()> start);

  ms timeout_;
  std::shared_ptr<ccl::kvs> kvs_;
  std::unique_ptr<ccl::communicator> comm_;
  std::unique_ptr<ccl_local::LocalExchange> local_;
  std::unique_ptr<ccl_p2p::Channels> p2p_;  // worker thread only
  std::unique_ptr<ccl_queue::WorkQueue> queue_;
  std::atomic<uint64_t> direct_bytes_{0}, oneccl_bytes_{0}, hierarchical_ops_{0};
};

}  // namespace ipex_train
