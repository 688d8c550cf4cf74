// Point-to-point messages of the ccl process group, matched by tag over
// oneCCL's untagged send/recv. Torch-free: buffers are raw bytes kept alive
// by their owner handle.
//
// torch.distributed matches a recv with the oldest unmatched send from its
// source that has the same tag. oneCCL's send/recv have no tag: between two
// ranks they match in issue order. So each message travels as a 16-byte
// header {tag, bytes} followed by its payload, and the receiver matches:
//
//   sender:    [tag 7 | 40 B] [40 B payload] [tag 3 | 8 B] [8 B payload] ...
//   receiver:  header -> the oldest posted recv from that peer with that tag?
//                yes: the payload lands in its buffer directly
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
//
// Used by the group's worker thread only.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include <oneapi/ccl.hpp>

#include "work_queue.h"

namespace ipex_train {
namespace ccl_p2p {

using ccl_queue::Poll;

// Contiguous bytes; `owner` keeps them alive while oneCCL may use them.
struct Bytes {
  void* data = nullptr;
  size_t size = 0;
  std::shared_ptr<void> owner;
};

class Channels {
 public:
  Channels(ccl::communicator& comm, int size);
  ~Channels();
  Channels(const Channels&) = delete;
  Channels& operator=(const Channels&) = delete;

  // Starts sending `buf` to `dst` with `tag`; the Poll returns true once sent.
  Poll start_send(int dst, int64_t tag, Bytes buf);
  // Starts receiving into `buf` from `src` with `tag`; `done` runs once the
  // message is in `buf` (it writes it back to the user's tensor).
  Poll start_recv(int src, int64_t tag, Bytes buf, std::function<void()> done);
  // Moves the traffic with every peer on as far as it goes without blocking.
  void progress();
  // After an abort: oneCCL may still use the buffers and events: leaked, and
  // later sends and receives fail.
  void drop();

 private:
  struct SendReq;
  struct RecvReq;
  struct Channel;

  static void complete(RecvReq& r, int peer, int64_t tag, const Bytes& data);
  static void landed(Channel& ch, int peer);
  void pump(int peer);
  void pump_sends(Channel& ch, int peer);

  ccl::communicator& comm_;
  std::vector<Channel> chans_;  // one per peer rank
};

}  // namespace ccl_p2p
}  // namespace ipex_train
