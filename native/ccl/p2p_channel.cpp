// See p2p_channel.h for the protocol.
#include "p2p_channel.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace ipex_train {
namespace ccl_p2p {

struct Channels::SendReq {
  std::array<int64_t, 2> hdr;   // {tag, bytes}
  Bytes buf;                    // payload
  int posted = 0;               // 0: nothing, 1: header, 2: payload in flight
  std::unique_ptr<ccl::event> ev;
  bool finished = false;
  std::exception_ptr err;
};

struct Channels::RecvReq {
  int64_t tag;
  Bytes buf;                    // destination
  std::function<void()> done;   // writes `buf` back to the user's tensor
  bool finished = false;
  std::exception_ptr err;
};

// The traffic with one peer.
struct Channels::Channel {
  struct Stashed {
    int64_t tag;
    Bytes bytes;
  };
  std::deque<std::shared_ptr<SendReq>> sends;   // to the peer, in issue order
  std::deque<std::shared_ptr<RecvReq>> posted;  // receives waiting, in post order
  std::deque<Stashed> stash;                    // arrived before their recv, in order
  std::array<int64_t, 2> hdr{};                 // {tag, bytes} being received
  std::unique_ptr<ccl::event> hdr_ev, body_ev;  // header / payload in flight
  std::shared_ptr<RecvReq> body_for;            // the payload's recv (null: stash)
  Bytes body;
  int64_t body_tag = 0;
};

namespace {

template <class Req>
Poll poll_of(std::shared_ptr<Req> r) {
  return [r] {
    if (r->finished && r->err) std::rethrow_exception(r->err);
    return r->finished;
  };
}

template <class Req>
std::shared_ptr<Req> take_posted(std::deque<std::shared_ptr<Req>>& posted, int64_t tag) {
  for (auto it = posted.begin(); it != posted.end(); ++it) {
    if ((*it)->tag == tag) {
      auto r = *it;
      posted.erase(it);
      return r;
    }
  }
  return nullptr;
}

// n fresh bytes owned by the returned handle (a stash).
Bytes fresh_bytes(int64_t n) {
  std::shared_ptr<char> p(new char[n > 0 ? n : 1], std::default_delete<char[]>());
  return Bytes{p.get(), size_t(n), p};
}

}  // namespace

Channels::Channels(ccl::communicator& comm, int size) : comm_(comm), chans_(size) {}

Channels::~Channels() = default;

void Channels::drop() {
  new std::vector<Channel>(std::move(chans_));
  chans_.clear();
}

Poll Channels::start_send(int dst, int64_t tag, Bytes buf) {
  if (chans_.empty()) throw std::runtime_error("ccl send: process group aborted");
  auto r = std::make_shared<SendReq>();
  r->hdr = {tag, int64_t(buf.size)};
  r->buf = std::move(buf);
  chans_[dst].sends.push_back(r);
  pump(dst);
  return poll_of(r);
}

// Sends to `peer` one header or payload at a time, in issue order.
void Channels::pump_sends(Channel& ch, int peer) {
  while (!ch.sends.empty()) {
    SendReq& r = *ch.sends.front();
    if (r.ev) {
      if (!r.ev->test()) return;
      r.ev.reset();
    }
    if (r.posted == 0 || (r.posted == 1 && r.hdr[1] > 0)) {
      const bool header = r.posted == 0;
      r.ev = std::make_unique<ccl::event>(
          header ? ccl::send(r.hdr.data(), sizeof(r.hdr), ccl::datatype::uint8, peer, comm_)
                 : ccl::send(r.buf.data, r.buf.size, ccl::datatype::uint8, peer, comm_));
      ++r.posted;
    } else {
      r.finished = true;
      ch.sends.pop_front();
    }
  }
}

Poll Channels::start_recv(int src, int64_t tag, Bytes buf, std::function<void()> done) {
  if (chans_.empty()) throw std::runtime_error("ccl recv: process group aborted");
  auto r = std::make_shared<RecvReq>(RecvReq{tag, std::move(buf), std::move(done)});
  Channel& ch = chans_[src];
  auto it = std::find_if(ch.stash.begin(), ch.stash.end(),
                         [tag](const Channel::Stashed& m) { return m.tag == tag; });
  if (it != ch.stash.end()) {
    auto bytes = std::move(it->bytes);
    ch.stash.erase(it);
    complete(*r, src, tag, bytes);
  } else {
    ch.posted.push_back(r);
    pump(src);
  }
  return poll_of(r);
}

// Finishes `r` with the message `data` (already in r.buf when they share memory).
void Channels::complete(RecvReq& r, int peer, int64_t tag, const Bytes& data) {
  try {
    if (data.size != r.buf.size)
      throw std::runtime_error("ccl recv: the message from rank " + std::to_string(peer) +
                               " with tag " + std::to_string(tag) + " has " +
                               std::to_string(data.size) + " bytes, the receive tensor " +
                               std::to_string(r.buf.size));
    if (data.size > 0 && data.data != r.buf.data) std::memcpy(r.buf.data, data.data, data.size);
    r.done();
  } catch (...) {
    r.err = std::current_exception();
  }
  r.finished = true;
}

// A payload from `peer` finished arriving in ch.body.
void Channels::landed(Channel& ch, int peer) {
  auto r = std::move(ch.body_for);
  if (!r) r = take_posted(ch.posted, ch.body_tag);  // posted while the payload arrived
  if (r)
    complete(*r, peer, ch.body_tag, ch.body);
  else
    ch.stash.push_back(Channel::Stashed{ch.body_tag, ch.body});
  ch.body = Bytes();
}

void Channels::progress() {
  for (size_t p = 0; p < chans_.size(); ++p) pump(int(p));
}

// Moves the traffic with `peer` on as far as it goes without blocking.
void Channels::pump(int peer) {
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
        ch.body_for = take_posted(ch.posted, tag);
        const bool direct = ch.body_for && int64_t(ch.body_for->buf.size) == n;
        ch.body = direct ? ch.body_for->buf : fresh_bytes(n);
        if (n > 0)
          ch.body_ev = std::make_unique<ccl::event>(
              ccl::recv(ch.body.data, n, ccl::datatype::uint8, peer, comm_));
        else
          landed(ch, peer);
      } else if (!ch.posted.empty()) {
        ch.hdr_ev = std::make_unique<ccl::event>(
            ccl::recv(ch.hdr.data(), sizeof(ch.hdr), ccl::datatype::uint8, peer, comm_));
      } else {
        return;
      }
    }
  } catch (...) {  // a failed oneCCL receive fails every recv waiting on this peer
    auto err = std::current_exception();
    (void)ch.hdr_ev.release();  // as above: leaked, oneCCL may still use them
    (void)ch.body_ev.release();
    new Bytes(std::move(ch.body));
    if (ch.body_for) ch.posted.push_front(std::move(ch.body_for));
    for (auto& r : ch.posted) {
      r->err = err;
      r->finished = true;
    }
    ch.posted.clear();
  }
}

}  // namespace ccl_p2p
}  // namespace ipex_train
