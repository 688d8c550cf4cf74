// The pybind11 module ipex_train._ccl: ProcessGroupCCL as a subclass of
// torch's Backend binding, and the process-wide abort flag.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "exit_path.h"
#include "process_group_ccl.h"

namespace ipex_train {
namespace {

// pybind11 holder that drops the GIL before the last reference goes (the
// backend's destructor joins threads); same layout as torch's own holder for
// Backend, which our class derives from on the Python side.
template <typename T>
class NoGilPtr {
 public:
  NoGilPtr() = default;
  explicit NoGilPtr(T* p) : p_(c10::intrusive_ptr<T>::unsafe_reclaim_from_nonowning(p)) {}
  NoGilPtr(c10::intrusive_ptr<T> p) : p_(std::move(p)) {}
  NoGilPtr(const NoGilPtr&) = default;
  NoGilPtr& operator=(const NoGilPtr&) = default;
  ~NoGilPtr() {
    if (p_) {
      pybind11::gil_scoped_release r;
      p_.reset();
    }
  }
  T* get() const { return p_.get(); }
  T& operator*() const { return *p_; }
  T* operator->() const { return p_.get(); }

 private:
  c10::intrusive_ptr<T> p_;
};

}  // namespace
}  // namespace ipex_train

PYBIND11_DECLARE_HOLDER_TYPE(T, ipex_train::NoGilPtr<T>, true)

PYBIND11_MODULE(_ccl, m) {
  namespace py = pybind11;
  using ipex_train::ProcessGroupCCL;
  m.doc() = "oneCCL process group for torch.distributed (CPU tensors)";
  ipex_train::exit_path::remember_pmi_socket();  // before any group can start MPI
  py::module::import("torch.distributed");
  py::class_<ProcessGroupCCL, c10d::Backend, ipex_train::NoGilPtr<ProcessGroupCCL>>(m, "ProcessGroupCCL")
      .def(py::init([](c10d::Store& store, int rank, int size, double timeout_s) {
             auto st = c10::intrusive_ptr<c10d::Store>::reclaim_copy(&store);
             c10::intrusive_ptr<ProcessGroupCCL> pg;
             {
               py::gil_scoped_release nogil;  // blocks on the store and the peers
               pg = c10::make_intrusive<ProcessGroupCCL>(
                   st, rank, size, std::chrono::milliseconds(int64_t(timeout_s * 1000)));
             }
             return ipex_train::NoGilPtr<ProcessGroupCCL>(std::move(pg));
           }),
           py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("timeout_s"))
      .def_property_readonly("aborted", &ProcessGroupCCL::aborted)
      .def_property_readonly("transfer_path", &ProcessGroupCCL::transfer_path,
                             "\"local\" (direct reads between the ranks, all on this host), "
                             "\"hierarchical (...)\" (all-to-all: direct reads on each host, "
                             "oneCCL between hosts) or \"oneccl (why not local)\"")
      .def_property_readonly("transfer_stats", &ProcessGroupCCL::transfer_stats,
                             "bytes this rank received in all-to-all, gather and scatter from "
                             "the others by path (direct_bytes, oneccl_bytes) and the count of "
                             "hierarchical ops");
  m.def("prepare_exit", [] {
        py::gil_scoped_release nogil;  // a release in progress may need the GIL
        ipex_train::ccl_queue::prepare_exit();
      },
        "From now on the groups' threads leak finished ops instead of destroying "
        "them (called at interpreter exit, before Python finalizes).");
  m.def("end_without_teardown", &ipex_train::exit_path::end_without_teardown,
        py::arg("always") = false,
        "At exit(): ends the process with _exit(status), skipping oneCCL's teardown, after "
        "MPI_Finalize when the status is 0 and nothing aborted (always=True: never "
        "MPI_Finalize) and, once MPI is finalized, PMI's finalize with the launcher; False "
        "if it could not be registered.");
  m.def("any_aborted", [] { return ipex_train::ccl_queue::any_aborted(); },
        "True once a ccl group of this process aborted (its worker may be stuck in oneCCL)");
  m.def("library_version", [] {
    auto v = ccl::get_library_version();
    return std::string(v.full);
  });
}
