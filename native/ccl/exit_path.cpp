// The exit handler of processes that made a ccl group (exit_path.h).
//
// It runs at exit() with its status, before the C++ static destructors of
// everything loaded before it was registered (oneCCL's among them), and ends
// the process with _exit(status): oneCCL's teardown crashes under a thread
// left inside oneCCL and waits on peers that may be gone. That also skips
// the atexit hooks of MPI, and MPICH (4.1 and later) defers the PMI
// "finalize" that ends a rank's session with its launcher to such a hook.
// Hydra's proxy takes a PMI socket that closes without "finalize" for a
// crashed rank and SIGKILLs every other rank it started on that host: with
// two ranks per host, the one that exited first killed its sibling still on
// its way out (exit 9 from mpiexec, issue #13). So the handler does what
// MPICH's hook would: once MPI is finalized (by oneCCL at
// destroy_process_group, by mpi4py, or here), it sends PMI-1's "finalize"
// over the socket hydra handed the process (PMI_FD) and waits for the ack.
#include "exit_path.h"

#include <dlfcn.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "work_queue.h"

namespace ipex_train {
namespace exit_path {
namespace {

std::atomic<bool> g_always_fast{false};

// The PMI-1 socket as found at import; compared again at exit, so a number
// that MPI closed and the process reused is never written to.
struct PmiSocket {
  int fd = -1;
  dev_t dev = 0;
  ino_t ino = 0;
};
PmiSocket g_pmi;

bool same_socket(const PmiSocket& s) {
  struct stat st;
  return s.fd >= 0 && fstat(s.fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == s.dev &&
         st.st_ino == s.ino;
}

// PMI-1 wire: "cmd=finalize\n", answered by "cmd=finalize_ack\n" (hydra then
// stops watching the socket), then MPICH shuts the socket down. At most 5 s.
void pmi_finalize() {
  if (!same_socket(g_pmi)) return;
  static const char kMsg[] = "cmd=finalize\n";
  const ssize_t len = sizeof(kMsg) - 1;
  if (send(g_pmi.fd, kMsg, len, MSG_NOSIGNAL) != len) return;
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (got.find("finalize_ack") == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now()).count();
    pollfd p{g_pmi.fd, POLLIN, 0};
    if (left <= 0 || poll(&p, 1, int(left)) <= 0) break;
    char buf[256];
    const ssize_t n = read(g_pmi.fd, buf, sizeof(buf));
    if (n <= 0) break;
    got.append(buf, size_t(n));
  }
  shutdown(g_pmi.fd, SHUT_RDWR);
  close(g_pmi.fd);
}

// An MPI function of the libmpi already loaded, if any: global symbols
// first, else libmpi.so.12 by its SONAME (mpi4py may load it RTLD_LOCAL).
void* mpi_symbol(const char* name) {
  if (void* f = dlsym(RTLD_DEFAULT, name)) return f;
  void* lib = dlopen("libmpi.so.12", RTLD_LAZY | RTLD_NOLOAD);
  return lib ? dlsym(lib, name) : nullptr;
}

// MPI_Initialized / MPI_Finalized (no MPI loaded: false).
bool mpi_query(const char* name) {
  auto fn = reinterpret_cast<int (*)(int*)>(mpi_symbol(name));
  int flag = 0;
  return fn && fn(&flag) == 0 && flag;
}

void exit_handler(int status, void*) {
  if (mpi_query("MPI_Initialized")) {
    // a process that succeeded (status 0, no group aborted or stuck) finalizes
    // MPI if nobody did: a rank that never does counts as failed in MPICH
    if (status == 0 && !g_always_fast.load() && !ccl_queue::any_aborted() &&
        !mpi_query("MPI_Finalized")) {
      auto finalize = reinterpret_cast<int (*)()>(mpi_symbol("MPI_Finalize"));
      if (finalize) finalize();
    }
    // as MPICH's own exit hook: only a rank whose MPI was finalized
    if (mpi_query("MPI_Finalized")) pmi_finalize();
  }
  std::fflush(nullptr);
  _exit(status);
}

}  // namespace

void remember_pmi_socket() {
  const char* s = std::getenv("PMI_FD");
  if (!s || !*s) return;
  char* end = nullptr;
  const long fd = std::strtol(s, &end, 10);
  if (*end || fd < 0 || fd > INT_MAX) return;
  struct stat st;
  if (fstat(int(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) return;
  g_pmi = PmiSocket{int(fd), st.st_dev, st.st_ino};
}

bool end_without_teardown(bool always_fast) {
  g_always_fast.store(always_fast);
  return on_exit(exit_handler, nullptr) == 0;
}

}  // namespace exit_path
}  // namespace ipex_train
