// See work_queue.h.
#include "work_queue.h"

namespace ipex_train {
namespace ccl_queue {
namespace {

// Set once any group in this process aborted (a oneCCL call may still be
// running on a detached worker thread); see ipex_train/distributed/__init__.py.
std::atomic<bool> g_any_aborted{false};

// See prepare_exit(). Every drop of an op by the worker or the watchdog goes
// through release(), under this lock, so prepare_exit() can wait for one in
// progress.
std::mutex g_release_m;
std::atomic<bool> g_exiting{false};

// Destroys `x` here, or leaks it once the process is exiting.
template <class T>
void release(T&& x) {
  std::lock_guard<std::mutex> g(g_release_m);
  if (g_exiting.load()) {
    new std::decay_t<T>(std::move(x));
    return;
  }
  std::decay_t<T> dead(std::move(x));
}

}  // namespace

bool any_aborted() { return g_any_aborted.load(); }

void prepare_exit() {
  std::lock_guard<std::mutex> g(g_release_m);
  g_exiting.store(true);
}

WorkQueue::WorkQueue(Hooks hooks) : hooks_(std::move(hooks)) {}

WorkQueue::~WorkQueue() {
  if (!stopped_) stop();
}

void WorkQueue::start() {
  worker_ = std::thread([this] { work_loop(); });
  watchdog_ = std::thread([this] { watch_loop(); });
}

bool WorkQueue::stop() {
  stopped_ = true;
  {
    std::unique_lock<std::mutex> g(m_);
    stop_ = true;
    cv_.notify_all();
    cv_.wait(g, [this] { return worker_exited_ || aborted_.load(); });
    watch_stop_ = true;
  }
  cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  if (worker_exited_) {
    if (worker_.joinable()) worker_.join();
    return true;
  }
  worker_.detach();
  return false;
}

void WorkQueue::push(Task t) {
  {
    std::lock_guard<std::mutex> g(m_);
    if (aborted_.load())
      std::rethrow_exception(hooks_.error("ccl " + t.job->name() +
                                          ": process group aborted earlier: " + reason_));
    queue_.push_back(std::move(t));
    ++seq_;
  }
  cv_.notify_all();
}

void WorkQueue::submit(JobPtr job, std::function<void()> run) {
  push(Task{std::move(job), std::move(run), nullptr});
}

void WorkQueue::submit_p2p(JobPtr job, std::function<Poll()> start) {
  push(Task{std::move(job), nullptr, std::move(start)});
}

void WorkQueue::abort(const std::string& why) {
  std::deque<Task> q;
  JobPtr cur;
  std::vector<JobPtr> p2p;
  {
    std::lock_guard<std::mutex> g(m_);
    if (!aborted_.exchange(true)) reason_ = why;
    g_any_aborted.store(true);
    q.swap(queue_);
    cur = current_;
    for (auto& f : inflight_) p2p.push_back(f.job);
  }
  cv_.notify_all();
  auto err = hooks_.error("ccl process group aborted: " + reason_);
  if (cur) cur->finish(err);
  for (auto& j : p2p) j->finish(err);
  for (auto& t : q) t.job->finish(err);
  release(std::move(q));
  release(std::move(cur));
  release(std::move(p2p));
}

std::exception_ptr WorkQueue::wrap(const std::string& name, const std::exception& e) const {
  return hooks_.error("ccl " + name + " failed: " + e.what());
}

// Tests the in-flight point-to-point ops (worker thread); `block` waits for
// all of them (before a collective, which must not overtake them).
void WorkQueue::progress_p2p(bool block) {
  while (!inflight_.empty()) {
    bool any = false;
    hooks_.progress_p2p();
    for (size_t i = 0; i < inflight_.size();) {
      auto& f = inflight_[i];
      std::exception_ptr err;
      bool fin = false;
      try {
        fin = f.poll();
      } catch (const std::exception& e) {
        err = wrap(f.job->name(), e);
        fin = true;
      }
      if (fin) {
        InFlight done;
        {
          std::lock_guard<std::mutex> g(m_);
          done = std::move(inflight_[i]);
          inflight_.erase(inflight_.begin() + i);
        }
        done.job->finish(err);
        release(std::move(done));
        any = true;
      } else {
        ++i;
      }
    }
    if (!block || aborted_.load()) return;
    if (!any) std::this_thread::yield();
  }
}

void WorkQueue::work_loop() {
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
          hooks_.drop_p2p();
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
        inflight_.push_back(InFlight{t.job, std::move(poll), Clock::now()});
      } catch (const std::exception& e) {
        err = wrap(t.job->name(), e);
      }
      if (err) t.job->finish(err);
      release(std::move(t));
      progress_p2p(false);
      continue;
    }
    progress_p2p(true);
    {
      std::lock_guard<std::mutex> g(m_);
      current_ = t.job;
      started_ = Clock::now();
    }
    std::exception_ptr err;
    try {
      t.run();
    } catch (const std::exception& e) {
      err = wrap(t.job->name(), e);
    }
    {
      std::lock_guard<std::mutex> g(m_);
      current_.reset();
    }
    t.job->finish(err);
    release(std::move(t));
  }
}

void WorkQueue::watch_loop() {
  std::unique_lock<std::mutex> g(m_);
  while (!watch_stop_) {
    cv_.wait_for(g, ms(100));
    JobPtr late;
    if (current_ && Clock::now() - started_ > current_->timeout()) late = current_;
    for (auto& f : inflight_)
      if (!late && Clock::now() - f.since > f.job->timeout()) late = f.job;
    if (late && !aborted_.load()) {
      auto name = late->name();
      auto tmo = late->timeout().count();
      g.unlock();
      abort(name + " did not finish within its timeout of " + std::to_string(tmo) +
            " ms (a peer rank may have died)");
      release(std::move(late));
      g.lock();
    }
  }
}

}  // namespace ccl_queue
}  // namespace ipex_train
