// All-to-all's bytes for ProcessGroupCCL (all_to_all_single, all_to_all,
// gather and scatter ride on it), by one of three paths, the same on every
// rank (LocalExchange decides it for the whole group):
//
//   every rank on this host        direct reads (local_exchange.h)
//   ranks span hosts, some share   hierarchical, below
//   otherwise (or turned off)      oneCCL's alltoallv
//
// Hierarchical: the blocks between ranks of one host move by direct reads
// among that host's ranks; the blocks between hosts go through one oneCCL
// alltoallv over the whole group in which every same-host pair has zero
// counts. The oneCCL call starts first, the direct reads run (moving oneCCL
// on whenever they wait for a peer: oneCCL progresses on the calling thread,
// CCL_WORKER_OFFLOAD=0), then it is waited for: one op, under the group's
// timeout and abort like any other.
// oneCCL takes a rank's blocks back to back, so blocks between hosts that are
// not contiguous in the caller's buffer (a host whose ranks are not
// consecutive, or a middle host of three) go through a packed scratch copy;
// with consecutive ranks per host on two hosts they never do.
#include "process_group_ccl.h"

#include <cstring>

namespace ipex_train {
namespace {

// The blocks between hosts in a buffer of blocks `len` packed in rank order.
struct Span {
  size_t begin = 0, total = 0;
  bool contiguous = true;  // no same-host byte lies between them
};

Span cross_span(const std::vector<size_t>& len, const std::vector<char>& same) {
  Span sp;
  size_t off = 0, end = 0;
  bool any = false;
  for (size_t j = 0; j < len.size(); ++j) {
    if (!same[j] && len[j]) {
      if (!any) sp.begin = off;
      any = true;
      end = off + len[j];
      sp.total += len[j];
    }
    off += len[j];
  }
  sp.contiguous = end - sp.begin == sp.total;
  return sp;
}

// Copies the blocks between hosts of `buf` (offsets `off`, lengths `len`)
// into packed `packed`, or (unpack) back out of it.
void repack(char* buf, char* packed, const std::vector<size_t>& off, const std::vector<size_t>& len,
            const std::vector<char>& same, bool unpack) {
  size_t p = 0;
  for (size_t j = 0; j < len.size(); ++j) {
    if (same[j] || !len[j]) continue;
    if (unpack)
      std::memcpy(buf + off[j], packed + p, len[j]);
    else
      std::memcpy(packed + p, buf + off[j], len[j]);
    p += len[j];
  }
}

char dummy[1];  // a valid address for empty buffers

char* bytes(const at::Tensor& t) { return t.nbytes() ? static_cast<char*>(t.data_ptr()) : dummy; }

}  // namespace

void ProcessGroupCCL::alltoallv_bytes(const char* op, const at::Tensor& src,
                                      const std::vector<size_t>& send, const at::Tensor& dst,
                                      const std::vector<size_t>& recv) {
  uint64_t others = 0;
  for (int j = 0; j < size_; ++j) others += j == rank_ ? 0 : recv[j];
  if (local_->whole()) {
    local_call([&] {
      local_->alltoallv(op, bytes(src), send.data(), bytes(dst), recv.data(), aborted_check());
    });
    direct_bytes_ += others;
  } else if (local_->enabled()) {
    alltoallv_hierarchical(op, src, send, dst, recv);
  } else {
    // oneCCL handles zero counts; every rank calls it (whether all counts are
    // zero everywhere is not known locally).
    ccl::alltoallv(bytes(src), send, bytes(dst), recv, ccl::datatype::uint8, *comm_).wait();
    oneccl_bytes_ += others;
  }
}

void ProcessGroupCCL::alltoallv_hierarchical(const char* op, const at::Tensor& src,
                                             const std::vector<size_t>& send,
                                             const at::Tensor& dst,
                                             const std::vector<size_t>& recv) {
  const std::vector<int>& members = local_->members();
  const int m = int(members.size());
  std::vector<char> same(size_, 0);
  for (int r : members) same[r] = 1;
  std::vector<size_t> soff(size_), roff(size_), xsend(size_), xrecv(size_);
  size_t so = 0, ro = 0;
  for (int j = 0; j < size_; ++j) {
    soff[j] = so;
    roff[j] = ro;
    so += send[j];
    ro += recv[j];
    xsend[j] = same[j] ? 0 : send[j];
    xrecv[j] = same[j] ? 0 : recv[j];
  }
  char* s = bytes(src);
  char* d = bytes(dst);
  const Span ss = cross_span(send, same), rs = cross_span(recv, same);
  at::Tensor spack, rpack;  // scratch for blocks between hosts that are not contiguous
  char* xs = s + ss.begin;
  char* xr = d + rs.begin;
  if (!ss.contiguous) {
    spack = at::empty({int64_t(ss.total)}, at::kByte);
    xs = static_cast<char*>(spack.data_ptr());
    repack(s, xs, soff, send, same, /*unpack=*/false);
  }
  if (!rs.contiguous) {
    rpack = at::empty({int64_t(rs.total)}, at::kByte);
    xr = static_cast<char*>(rpack.data_ptr());
  }
  auto ev = ccl::alltoallv(xs, xsend, xr, xrecv, ccl::datatype::uint8, *comm_);

  std::vector<size_t> loff(m), lsend(m), lrecv(m);
  std::vector<void*> lto(m);
  uint64_t direct = 0;
  for (int i = 0; i < m; ++i) {
    const int r = members[i];
    loff[i] = soff[r];
    lsend[i] = send[r];
    lrecv[i] = recv[r];
    lto[i] = d + roff[r];
    direct += r == rank_ ? 0 : recv[r];
  }
  try {
    local_call([&] {
      local_->exchange(op, s, loff.data(), lsend.data(), lto.data(), lrecv.data(), aborted_check(),
                       [&ev] { ev.test(); });  // oneCCL progresses on this thread
    });
  } catch (...) {
    if (aborted()) {
      // oneCCL may still write into these buffers, whenever: they outlive it
      for (const at::Tensor& t : {src, dst, spack, rpack}) (void)new at::Tensor(t);
    } else {
      ev.wait();  // sizes disagreed on this host: the group goes on
    }
    throw;
  }
  ev.wait();
  if (!rs.contiguous) repack(d, xr, roff, recv, same, /*unpack=*/true);
  direct_bytes_ += direct;
  oneccl_bytes_ += rs.total;
  ++hierarchical_ops_;
}

std::map<std::string, uint64_t> ProcessGroupCCL::transfer_stats() const {
  return {{"direct_bytes", direct_bytes_.load()},
          {"oneccl_bytes", oneccl_bytes_.load()},
          {"hierarchical_ops", hierarchical_ops_.load()}};
}

}  // namespace ipex_train
