// How a process that made a ccl group ends: _exit(status) once exit() starts,
// skipping oneCCL's teardown, but telling MPI and its launcher that the rank
// finished. See exit_path.cpp and ipex_train/distributed/__init__.py.
#pragma once

namespace ipex_train {
namespace exit_path {

// At import, before MPI can start: notes the PMI-1 socket MPICH's launcher
// handed this process (PMI_FD), to tell it at exit that this rank finished.
void remember_pmi_socket();

// Registers the exit handler (glibc on_exit); always_fast: never finalize
// MPI (a thread may be stuck inside oneCCL). False if it could not be.
bool end_without_teardown(bool always_fast);

}  // namespace exit_path
}  // namespace ipex_train
