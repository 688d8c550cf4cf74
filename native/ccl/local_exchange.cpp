// See local_exchange.h for the protocol.
#include "local_exchange.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace ipex_train {
namespace ccl_local {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kFlagStride = 128;  // posted and done on cache lines of their own
enum { kPosted = 0, kDone = 1 };

// A rank's slot: its source address, then send offsets, send lengths and
// receive lengths, one per rank; whole cache lines.
size_t slot_stride(int size) { return ((1 + 3 * size_t(size)) * 8 + 63) / 64 * 64; }

std::string host_id() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::string boot;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::getline(f, boot);
  return std::string(host) + "/" + boot;
}

// Reads n bytes at `addr` in process `pid` into `dst`; false if it cannot.
bool read_remote(int pid, uint64_t addr, void* dst, size_t n) {
  char* d = static_cast<char*>(dst);
  while (n) {
    iovec l{d, n}, r{reinterpret_cast<void*>(addr), n};
    ssize_t got = process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    d += got;
    addr += uint64_t(got);
    n -= size_t(got);
  }
  return true;
}

std::string key(const char* what, int r = -1) {
  std::string k = std::string("ipex_train/local_exchange/") + what;
  return r < 0 ? k : k + "/" + std::to_string(r);
}

uint64_t load_acquire(const void* p) {
  return __atomic_load_n(static_cast<const uint64_t*>(p), __ATOMIC_ACQUIRE);
}
void store_release(void* p, uint64_t v) { __atomic_store_n(static_cast<uint64_t*>(p), v, __ATOMIC_RELEASE); }

}  // namespace

LocalExchange::LocalExchange(int rank, int size, const KeyValue& kv, bool want)
    : rank_(rank), size_(size), nonce_(new uint64_t(std::random_device{}() * 0x9E3779B97F4A7C15ull ^
                                                     uint64_t(getpid()) << 20 ^ std::random_device{}())),
      peers_(size) {
  // Round 1: who is where. Every rank publishes its host, pid and the address
  // of a random nonce, then probes every peer on its host by reading that
  // nonce through process_vm_readv (which fails across pid namespaces, users,
  // or under a ptrace restriction: Yama ptrace_scope >= 1 between sibling
  // processes, a seccomp filter).
  std::ostringstream me;
  me << (want ? 1 : 0) << ' ' << getpid() << ' ' << reinterpret_cast<uint64_t>(nonce_.get()) << ' '
     << *nonce_ << ' ' << host_id();
  kv.set(key("info", rank), me.str());
  std::string verdict = want ? "1" : "turned off (IPEX_TRAIN_CCL_LOCAL=0)";
  const std::string host = host_id();
  std::vector<std::string> hosts(size);
  for (int r = 0; r < size; ++r) {
    std::istringstream in(kv.get(key("info", r)));
    int wants = 0;
    in >> wants >> peers_[r].pid >> peers_[r].probe_addr >> peers_[r].nonce;
    std::getline(in >> std::ws, hosts[r]);
    if (hosts[r] == host) members_.push_back(r);
    if (r == rank) me_ = int(members_.size()) - 1;
    if (!wants && verdict == "1")
      verdict = "turned off on rank " + std::to_string(r) + " (IPEX_TRAIN_CCL_LOCAL=0)";
  }
  hosts_ = int(std::set<std::string>(hosts.begin(), hosts.end()).size());
  for (int r : members_) {
    if (verdict != "1") break;
    if (r != rank && (errno = 0, !alive(r)))
      verdict = "rank " + std::to_string(rank) + " cannot read rank " + std::to_string(r) +
                "'s memory (process_vm_readv: " +
                (errno ? std::strerror(errno) : "found another process; a pid namespace?") + ")";
  }
  if (verdict == "1" && hosts_ == size && size > 1)
    verdict = "every rank runs on a host of its own";
  // Round 2: every rank's verdict; all of them see the same set, so all agree.
  kv.set(key("probe", rank), verdict);
  for (int r = 0; r < size; ++r) {
    auto v = kv.get(key("probe", r));
    if (v != "1" && reason_.empty()) reason_ = v;
  }
  if (!reason_.empty()) return;

  // Round 3, per host: its first member creates the control segment, every
  // member maps it, the creator unlinks the name once all have (no file is
  // left behind, whatever happens later) and publishes the outcome. A host
  // with one member needs none.
  const int m = int(members_.size()), leader = members_[0];
  shm_bytes_ = size_t(m) * (kFlagStride + slot_stride(m));
  std::string name, mapped = "1";
  if (m > 1 && rank == leader) {
    std::ostringstream n;
    n << "/ipex_train_ccl_" << getpid() << '_' << std::hex << *nonce_;
    name = n.str();
    int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, off_t(shm_bytes_)) != 0) {
      mapped = std::string("shm_open/ftruncate failed: ") + std::strerror(errno);
      if (fd >= 0) close(fd);
      shm_unlink(name.c_str());
      name.clear();
    } else {
      shm_ = mmap(nullptr, shm_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      close(fd);
    }
    kv.set(key("segment", leader), name);
  } else if (m > 1) {
    name = kv.get(key("segment", leader));
    if (name.empty()) {
      mapped = "rank " + std::to_string(leader) + " could not create the shared-memory segment";
    } else {
      int fd = shm_open(name.c_str(), O_RDWR, 0600);
      if (fd >= 0) {
        shm_ = mmap(nullptr, shm_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
      }
    }
  }
  if (shm_ == MAP_FAILED) shm_ = nullptr;
  if (!shm_ && m > 1 && mapped == "1")
    mapped = "rank " + std::to_string(rank) + " could not map the segment: " + std::strerror(errno);
  kv.set(key("mapped", rank), mapped);
  if (rank == leader) {
    std::string outcome = "1";
    for (int r : members_) {
      auto v = kv.get(key("mapped", r));
      if (v != "1" && outcome == "1") outcome = v;
    }
    if (!name.empty()) shm_unlink(name.c_str());
    kv.set(key("ready", leader), outcome);
  }
  // Round 4: every host's outcome, so that all ranks agree.
  kv.set(key("done", rank), kv.get(key("ready", leader)));
  for (int r = 0; r < size; ++r) {
    auto v = kv.get(key("done", r));
    if (v != "1" && reason_.empty()) reason_ = v;
  }
  if (!reason_.empty()) {
    if (shm_) munmap(shm_, shm_bytes_);
    shm_ = nullptr;
    return;
  }
  enabled_ = true;
}

LocalExchange::~LocalExchange() {
  if (shm_) munmap(shm_, shm_bytes_);
}

bool LocalExchange::alive(int rank) const {
  uint64_t v = 0;
  return read_remote(peers_[rank].pid, peers_[rank].probe_addr, &v, 8) && v == peers_[rank].nonce;
}

void LocalExchange::wait_for(int member, int which, uint64_t seq, const char* op,
                             const std::function<void()>& check,
                             const std::function<void()>& poll) const {
  const int peer = members_[member];
  const char* flag = static_cast<const char*>(shm_) + size_t(member) * kFlagStride + which * 64;
  if (load_acquire(flag) >= seq) return;
  const auto start = Clock::now();
  auto next_check = start;
  for (uint64_t i = 1;; ++i) {
    if (load_acquire(flag) >= seq) return;
    if (i < 2048) {
      __builtin_ia32_pause();
      continue;
    }
    const auto now = Clock::now();
    if (now >= next_check) {
      check();
      if (!alive(peer))
        throw PeerLost(std::string("ccl ") + op + ": rank " + std::to_string(peer) +
                                 " (pid " + std::to_string(peers_[peer].pid) +
                                 ") exited before the operation finished");
      next_check = now + std::chrono::milliseconds(5);
    }
    if (poll) poll();
    if (now - start < std::chrono::milliseconds(2))
      sched_yield();  // a peer sharing this core gets it
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void LocalExchange::alltoallv(const char* op, const void* src, const size_t* send, void* dst,
                              const size_t* recv, const std::function<void()>& check) {
  const int m = int(members_.size());
  std::vector<size_t> send_off(m);
  std::vector<void*> to(m);
  size_t s = 0, r = 0;
  for (int j = 0; j < m; ++j) {
    send_off[j] = s;
    s += send[j];
    to[j] = static_cast<char*>(dst) + r;
    r += recv[j];
  }
  exchange(op, src, send_off.data(), send, to.data(), recv, check, {});
}

void LocalExchange::exchange(const char* op, const void* src, const size_t* send_off,
                             const size_t* send_len, void* const* to, const size_t* recv_len,
                             const std::function<void()>& check,
                             const std::function<void()>& poll) {
  if (!enabled_) throw std::logic_error("LocalExchange::exchange on a disabled exchange");
  const uint64_t seq = ++seq_;
  char* base = static_cast<char*>(shm_);
  const int m = int(members_.size()), me = me_;
  const size_t n = size_t(m), stride = slot_stride(m);
  auto slot = [&](int j) { return reinterpret_cast<uint64_t*>(base + n * kFlagStride + j * stride); };
  auto flag = [&](int j, int which) { return base + size_t(j) * kFlagStride + which * 64; };

  // my slot: [src, send_off[n], send_len[n], recv_len[n]]
  if (m > 1) {
    uint64_t* mine = slot(me);
    mine[0] = reinterpret_cast<uint64_t>(src);
    for (size_t j = 0; j < n; ++j) {
      mine[1 + j] = send_off[j];
      mine[1 + n + j] = send_len[j];
      mine[1 + 2 * n + j] = recv_len[j];
    }
    store_release(flag(me, kPosted), seq);
  }

  // messages name ranks of the group, not members
  std::string mismatch;
  auto disagree = [&](int from, int dest, uint64_t sends, uint64_t expects) {
    if (mismatch.empty())
      mismatch = std::string("ccl ") + op + ": rank " + std::to_string(members_[from]) + " sends " +
                 std::to_string(sends) + " bytes to rank " + std::to_string(members_[dest]) +
                 ", which expects " + std::to_string(expects) +
                 " (split sizes differ between the ranks)";
  };
  if (send_len[me] != recv_len[me]) {
    disagree(me, me, send_len[me], recv_len[me]);
  } else if (recv_len[me]) {
    const char* from = static_cast<const char*>(src) + send_off[me];
    if (from != to[me]) std::memmove(to[me], from, recv_len[me]);  // in place: nothing to do
  }

  std::string lost;
  for (int k = 1; k < m; ++k) {  // start at the next member: peers spread their reads
    const int j = (me + k) % m;
    wait_for(j, kPosted, seq, op, check, poll);
    const uint64_t* theirs = slot(j);
    const uint64_t for_me = theirs[1 + n + me], from_me = theirs[1 + 2 * n + me];
    if (for_me != recv_len[j]) disagree(j, me, for_me, recv_len[j]);
    if (from_me != send_len[j]) disagree(me, j, send_len[j], from_me);
    if (!mismatch.empty() || !for_me) continue;
    if (!read_remote(peers_[members_[j]].pid, theirs[0] + theirs[1 + me], to[j], for_me)) {
      lost = std::string("ccl ") + op + ": reading rank " + std::to_string(members_[j]) +
             "'s block failed (" + std::strerror(errno) + "); the rank may have exited";
      break;
    }
  }
  if (m > 1) store_release(flag(me, kDone), seq);  // on failure too: live peers must not wait
  if (!lost.empty()) throw PeerLost(lost);
  for (int k = 1; k < m; ++k) wait_for((me + k) % m, kDone, seq, op, check, poll);
  if (!mismatch.empty()) throw std::runtime_error(mismatch);
}

}  // namespace ccl_local
}  // namespace ipex_train
