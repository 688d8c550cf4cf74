// The ccl process group's execution model: one worker thread runs the ops of
// a group in submission order, and a watchdog aborts the group when an op
// overruns its timeout. Torch-free (the backend adapts its c10d::Work to Job).
//
//   Every call enqueues one task and returns at once. One thread keeps the op
//   order identical on all ranks (what oneCCL requires) and keeps a blocking
//   oneCCL call off the caller's thread. oneCCL has no timeouts: when a peer
//   dies it may block forever. So the watchdog fails the running op (and
//   everything queued after it) once it has run longer than its timeout, marks
//   the group aborted, and later calls fail fast. The worker thread that may
//   still sit inside oneCCL is detached, never joined, so an aborted group does
//   not hang the process.
//
// A collective runs to completion in `run`. A point-to-point op instead
// `start`s without blocking and hands back a Poll that returns true once the
// op is done (and throws if it failed); the worker polls every started op, so
// a rank can have sends and receives in flight at once (isend/irecv pairs that
// would deadlock if each blocked in turn). A collective waits until every
// started point-to-point op has finished: it must not overtake them.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ipex_train {
namespace ccl_queue {

using Clock = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;
using Poll = std::function<bool()>;

// A queued or running op as the queue sees it. Finished exactly once: by the
// worker (success or an error) or by the watchdog / abort (timeout).
class Job {
 public:
  virtual ~Job() = default;
  virtual const std::string& name() const = 0;
  virtual ms timeout() const = 0;
  // Returns false when someone else finished it first.
  virtual bool finish(std::exception_ptr err) = 0;
};
using JobPtr = std::shared_ptr<Job>;

// What the queue needs from its owner.
struct Hooks {
  // The exception a failed op or an aborted group reports, with this message.
  std::function<std::exception_ptr(const std::string&)> error;
  // Moves every point-to-point transfer on as far as it goes (worker thread).
  std::function<void()> progress_p2p;
  // After an abort: give up the point-to-point state (oneCCL may still use it).
  std::function<void()> drop_p2p;
};

// True once a queue (a group) of this process aborted.
bool any_aborted();

// Called at interpreter exit (before Python finalizes): from then on the
// queues' threads leak the ops they are done with instead of destroying them.
// The last reference to a tensor may need the GIL, and a thread that asks for
// it while Python finalizes is ended with pthread_exit, whose unwinding through
// a destructor calls std::terminate ("terminate called without an active
// exception", SIGABRT at a normal exit). Waits for a release in progress.
void prepare_exit();

class WorkQueue {
 public:
  explicit WorkQueue(Hooks hooks);
  // Drains the queue while the watchdog still watches, so a hung op aborts the
  // group instead of hanging here. Call stop() before the owner's members go.
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Starts the worker and the watchdog.
  void start();
  // Drains the queue, stops the watchdog; joins the worker and returns true,
  // or (the worker may be stuck inside oneCCL forever) detaches it and returns
  // false: the caller must then leak whatever the worker may still use.
  bool stop();

  // Queue a collective / a point-to-point op; throws the hooks' error when the
  // group aborted earlier.
  void submit(JobPtr job, std::function<void()> run);
  void submit_p2p(JobPtr job, std::function<Poll()> start);

  // Fails the running and all queued works with `why`; later calls fail fast.
  void abort(const std::string& why);
  bool aborted() const { return aborted_.load(); }
  uint64_t seq() const { return seq_.load(); }

 private:
  struct Task {
    JobPtr job;
    std::function<void()> run;
    std::function<Poll()> start;
  };
  struct InFlight {
    JobPtr job;
    Poll poll;
    Clock::time_point since;
  };

  void push(Task t);
  std::exception_ptr wrap(const std::string& name, const std::exception& e) const;
  void progress_p2p(bool block);
  void work_loop();
  void watch_loop();

  Hooks hooks_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  JobPtr current_;
  Clock::time_point started_;
  std::vector<InFlight> inflight_;  // point-to-point ops started, not finished
  bool stop_ = false, watch_stop_ = false, worker_exited_ = false, stopped_ = false;
  std::atomic<bool> aborted_{false};
  std::string reason_;
  std::atomic<uint64_t> seq_{0};
  std::thread worker_, watchdog_;
};

}  // namespace ccl_queue
}  // namespace ipex_train
