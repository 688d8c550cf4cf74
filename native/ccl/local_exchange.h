// Single-node data movement (all-to-all, all-gather, broadcast) for the "ccl"
// process group, without oneCCL.
//
// When the ranks of a group that run on this host may read each other's
// memory (Linux cross-memory attach, process_vm_readv: same user, no ptrace
// restriction), an all-to-all needs no message passing at all: each rank
// publishes where its send buffer is and pulls its blocks straight out of the
// peers' buffers, one copy per byte. MPICH does the same underneath oneCCL's
// MPI transport, but behind handshakes and schedules that cost 1.4-1.9x more
// time here at 1-16 MiB (see benchmarks/collectives.py). When the group spans
// hosts, each host's ranks form an exchange of their own (the members), and
// the backend sends only the blocks between hosts through oneCCL.
//
// A small POSIX shared-memory segment holds, per rank, two sequence counters
// (posted: its buffer address and block offsets/sizes for operation s are
// readable; done: it has finished reading everyone's blocks of operation s)
// and that address, those offsets and sizes. An operation:
//
//   1. write my send address and all offsets and sizes, then posted = s
//   2. copy my own block; for each peer: wait posted >= s, check its sizes
//      against mine, pull my block from its buffer (process_vm_readv)
//   3. done = s, then wait until every peer's done >= s (they may still be
//      reading my send buffer; the caller may reuse it once we return)
//
// Waiting spins briefly, then yields, then sleeps, so oversubscribed ranks
// make progress; every few milliseconds it calls the caller's check (which
// throws once the group aborted, e.g. on timeout) and probes the peer it waits
// for, so a dead peer is reported at once instead of at the timeout.
//
// Torch-free on purpose: it compiles in seconds, apart from the backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ipex_train {
namespace ccl_local {

// The group's key-value store (keys are private to the group).
struct KeyValue {
  std::function<void(const std::string&, const std::string&)> set;
  std::function<std::string(const std::string&)> get;  // blocks until the key exists
};

// A peer exited (or its memory became unreadable) during an operation: the
// group cannot go on. Other failures (sizes that disagree) leave it usable.
struct PeerLost : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class LocalExchange {
 public:
  // Collective: every rank of the group constructs it, at the same point.
  // `want` false (the user turned it off) makes it disabled everywhere, and
  // so does a host whose ranks cannot read each other, and a group whose
  // hosts hold one rank each. Never throws for an unusable host: enabled()
  // is then false on all ranks and reason() says why.
  LocalExchange(int rank, int size, const KeyValue& kv, bool want);
  ~LocalExchange();
  LocalExchange(const LocalExchange&) = delete;
  LocalExchange& operator=(const LocalExchange&) = delete;

  // Direct reads work between the members (this host's ranks of the group).
  bool enabled() const { return enabled_; }
  // ... and the members are the whole group (every rank on this host).
  bool whole() const { return enabled_ && int(members_.size()) == size_; }
  const std::string& reason() const { return reason_; }
  // The group's ranks on this host, ascending; exchange() indexes them 0..m-1.
  const std::vector<int>& members() const { return members_; }
  int hosts() const { return hosts_; }

  // Among the members (every array is indexed by member, 0..m-1), each
  // member j offers the bytes at `src` to the others: send_len[i] bytes at
  // src + send_off[i] are for member i (offsets may repeat: all-gather sends
  // one buffer to all). Member i receives recv_len[j] bytes from member j at
  // to[j]; its own block is copied (memmove; nothing if it is in place).
  // Every member must call it, in the same order as its other operations of
  // this group. Throws std::runtime_error naming `op` when the sizes of two
  // ranks disagree (after the others finished, so no rank is left waiting),
  // PeerLost when a peer exits, and whatever `check` throws (it is called
  // every few ms while waiting). `poll`, if given, is called on every round
  // of waiting after the first spins (the backend moves oneCCL's part of a
  // hierarchical all-to-all on meanwhile).
  void exchange(const char* op, const void* src, const size_t* send_off, const size_t* send_len,
                void* const* to, const size_t* recv_len, const std::function<void()>& check,
                const std::function<void()>& poll = {});

  // All-to-all of bytes among the members: `send[j]` bytes for member j lie
  // packed in member order at `src`; `recv[j]` bytes from member j are
  // written packed in member order at `dst`.
  void alltoallv(const char* op, const void* src, const size_t* send, void* dst,
                 const size_t* recv, const std::function<void()>& check);

 private:
  struct Peer {
    int pid = 0;
    uint64_t probe_addr = 0;  // address of the peer's nonce, for liveness probes
    uint64_t nonce = 0;
  };
  bool alive(int rank) const;
  void wait_for(int member, int which, uint64_t seq, const char* op,
                const std::function<void()>& check, const std::function<void()>& poll) const;

  int rank_, size_;
  int me_ = 0;     // my index among the members
  int hosts_ = 1;  // distinct hosts in the group
  std::vector<int> members_;
  bool enabled_ = false;
  std::string reason_;
  std::unique_ptr<uint64_t> nonce_;  // read by the peers' probes
  std::vector<Peer> peers_;  // by rank of the group
  void* shm_ = nullptr;
  size_t shm_bytes_ = 0;
  uint64_t seq_ = 0;
};

}  // namespace ccl_local
}  // namespace ipex_train
