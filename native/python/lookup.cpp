// ipex_train._lookup, a Python extension module: the lookup of
// ipex_train.sparse.FusedEmbeddingBagCollection with its autograd node in C++.
//
// lookup() pools through ipex_train::embedding_bags_forward and, with grad
// mode on, hangs a LookupBackward node on the output. The node's backward
// runs ipex_train::embedding_bags_backward_update_ with
// owner.optimizer.param_groups[0]["lr"] / ["eps"] and the tables' buffers as
// they are when it runs (read under the GIL), so no Python code runs on the
// common path (no autograd.Function, no PyNode): with caches cold after the
// kernels, that glue cost 0.3-1 ms a step here.
//
// The owner is the collection (a Python object): the forward reads its _tables
// (each table's _buffers: weight, trail, state_sum), _padding,
// include_last_offset, mode, optimizer_kind and _anchor; the node holds its
// _target, whose _tables, optimizer and _psw_grads() (per-sample weight
// gradients: rare, computed in Python before the update) the backward reads.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/PyInterpreter.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <mutex>
#include <string>
#include <vector>

namespace py = pybind11;
namespace ag = torch::autograd;

namespace {

// Attribute and key names, interned once (first use is under the GIL).
struct Names {
  PyObject *tables, *buffers, *padding, *include_last, *mode, *rule, *anchor, *optimizer,
      *groups, *lr, *eps, *weight, *trail, *state_sum, *psw_grads, *target;
};

const Names& names() {
  static const Names n = [] {
    auto s = [](const char* v) { return PyUnicode_InternFromString(v); };
    return Names{s("_tables"), s("_buffers"), s("_padding"), s("include_last_offset"), s("mode"),
                 s("optimizer_kind"), s("_anchor"), s("optimizer"), s("param_groups"), s("lr"),
                 s("eps"), s("weight"), s("trail"), s("state_sum"), s("_psw_grads"),
                 s("_target")};
  }();
  return n;
}

py::object getattr_(PyObject* o, PyObject* name) {
  PyObject* r = PyObject_GetAttr(o, name);
  if (r == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(r);
}

// o[key], as Python's o[key] (KeyError and all).
py::object item(PyObject* o, PyObject* key) {
  PyObject* r = PyObject_GetItem(o, key);
  if (r == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(r);
}

at::Tensor as_tensor(PyObject* o, const char* what) {
  if (!THPVariable_Check(o))
    throw py::type_error(std::string(what) + " must be a Tensor, got " + Py_TYPE(o)->tp_name);
  return THPVariable_Unpack(o);
}

// A list or tuple's items (borrowed), or false when `seq` is neither.
bool items(PyObject* seq, std::vector<PyObject*>& out) {
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** p = PySequence_Fast_ITEMS(seq);
  out.assign(p, p + n);
  return true;
}

// The common case the Python checks of forward() would pass unchanged: a
// plain CPU tensor, contiguous, 1-D int32/int64 when it holds indices.
bool plain(PyObject* o, bool index) {
  if (!THPVariable_CheckExact(o)) return false;
  const at::Tensor& t = THPVariable_Unpack(o);
  if (!t.defined() || !t.device().is_cpu() || t.layout() != at::kStrided || !t.is_contiguous())
    return false;
  return !index || (t.dim() == 1 && (t.scalar_type() == at::kLong || t.scalar_type() == at::kInt));
}

// The tables' buffers as they are now. Under the GIL.
struct Buffers {
  std::vector<at::Tensor> weights, trails, state1;
};

Buffers read_buffers(PyObject* owner, bool with_state, const std::string& rule) {
  const Names& n = names();
  py::object tables = getattr_(owner, n.tables);
  std::vector<PyObject*> ts;
  if (!items(tables.ptr(), ts)) throw py::type_error("_tables must be a list");
  Buffers b;
  for (PyObject* t : ts) {
    py::object bufs = getattr_(t, n.buffers);
    b.weights.push_back(as_tensor(item(bufs.ptr(), n.weight).ptr(), "weight"));
    if (!with_state) continue;
    if (b.weights.back().scalar_type() == at::kBFloat16)
      b.trails.push_back(as_tensor(item(bufs.ptr(), n.trail).ptr(), "trail"));
    if (rule != "sgd")
      b.state1.push_back(as_tensor(item(bufs.ptr(), n.state_sum).ptr(), "state_sum"));
  }
  return b;
}

double as_float(PyObject* o) {  // Python's float(o)
  PyObject* f = PyNumber_Float(o);
  if (f == nullptr) throw py::error_already_set();
  const double v = PyFloat_AS_DOUBLE(f);
  Py_DECREF(f);
  return v;
}

const c10::TypedOperatorHandle<at::Tensor(at::TensorList, at::TensorList, at::TensorList,
                                          at::TensorList, at::IntArrayRef, bool, bool,
                                          std::optional<at::ScalarType>)>&
forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ipex_train::embedding_bags_forward", "")
                             .typed<at::Tensor(at::TensorList, at::TensorList, at::TensorList,
                                               at::TensorList, at::IntArrayRef, bool, bool,
                                               std::optional<at::ScalarType>)>();
  return op;
}

using UpdateSig = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                       const at::Tensor&, at::TensorList, at::TensorList, at::TensorList,
                       at::IntArrayRef, bool, bool, c10::string_view, double, double, double,
                       double, double, bool);

const c10::TypedOperatorHandle<UpdateSig>& update_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("ipex_train::embedding_bags_backward_update_", "")
                             .typed<UpdateSig>();
  return op;
}

std::vector<uint32_t> versions(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  std::vector<uint32_t> v;
  v.reserve(a.size() + b.size());
  for (const auto* l : {&a, &b})
    for (const at::Tensor& t : *l) v.push_back(t._version());
  return v;
}

// Edges: 0 the owner's anchor (never given a gradient), 1 + t per-sample weights t.
// Holds the owner's _target (tables, optimizer), not the owner: see _UpdateTarget.
struct LookupBackward final : ag::Node {
  // (under the GIL: takes a reference to `target`)
  explicit LookupBackward(PyObject* target)
      : target_((Py_INCREF(target), target), getPyInterpreter()) {}

  std::string name() const override { return "FusedEmbeddingLookupBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (ag::SavedVariable& s : psw_) s.reset_data();
    indices_.clear();
    offsets_.clear();
  }

  ag::variable_list apply(ag::variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(!done_, "fused embedding backward ran twice for one forward: the optimizer "
                        "update would be applied twice");
    done_ = true;
    TORCH_CHECK(versions(indices_, offsets_) == versions_,
                "fused embedding backward: indices or offsets were modified in place after the "
                "forward; the update would use the new values");
    std::vector<at::Tensor> psw;
    for (ag::SavedVariable& s : psw_) psw.push_back(s.unpack(getptr()).detach());
    // the gradient in the output's dtype (float32 output of bf16 tables: the
    // update reads the fp32 gradient as it is); none given reads as zeros
    at::Tensor g = grads[0].defined() ? grads[0].contiguous()
                                      : at::zeros({rows_, cols_}, at::dtype(out_type_));
    ag::variable_list out(num_outputs());
    double lr, eps;
    Buffers b;
    {
      py::gil_scoped_acquire gil;
      PyObject* target = target_.ptr(getPyInterpreter());
      const Names& n = names();
      py::object groups = getattr_(getattr_(target, n.optimizer).ptr(), n.groups);
      py::object group = item(groups.ptr(), py::int_(0).ptr());
      lr = as_float(item(group.ptr(), n.lr).ptr());
      eps = as_float(item(group.ptr(), n.eps).ptr());
      bool psw_grad = false;
      for (size_t i = 1; i < out.size(); ++i) psw_grad |= should_compute_output(i);
      if (psw_grad) {  // before the update: they read the weights
        auto wrap = [](const at::Tensor& t) {
          return py::reinterpret_steal<py::object>(THPVariable_Wrap(t));
        };
        py::list idx, off;
        for (const at::Tensor& t : indices_) idx.append(wrap(t));
        for (const at::Tensor& t : offsets_) off.append(wrap(t));
        py::object r = getattr_(target, n.psw_grads)(wrap(g), idx, off);
        std::vector<PyObject*> rs;
        if (!items(r.ptr(), rs) || rs.size() + 1 != out.size())
          throw py::type_error("_psw_grads must return one tensor per table");
        for (size_t i = 0; i < rs.size(); ++i)
          out[1 + i] = as_tensor(rs[i], "a per_sample_weights gradient");
      }
      b = read_buffers(target, /*with_state=*/true, rule_);
    }
    update_op().call(b.weights, b.trails, b.state1, {}, g, indices_, offsets_, psw, padding_,
                     include_last_, mean_, rule_, lr, eps, 0.0, 0.0, 0.0, false);
    return out;
  }

  c10::SafePyObject target_;  // the collection's _UpdateTarget
  std::vector<at::Tensor> indices_, offsets_;
  std::vector<uint32_t> versions_;
  std::vector<ag::SavedVariable> psw_;
  std::vector<int64_t> padding_;
  bool include_last_ = false, mean_ = false, done_ = false;
  std::string rule_;
  int64_t rows_ = 0, cols_ = 0;
  at::ScalarType out_type_ = at::kFloat;
};

// lookup(owner, indices, offsets, per_sample_weights, out_dtype, checked):
// the pooled [bags, sum of dims]. checked=False: returns None unless the
// arguments are the common case (lists or tuples of one plain index and one
// offsets tensor per table, no per-sample weights), which the Python side
// then checks and normalises before calling again with checked=True.
py::object lookup(py::handle owner_h, py::handle indices_h, py::handle offsets_h,
                  py::handle psw_h, py::handle out_dtype_h, bool checked) {
  HANDLE_TH_ERRORS
  PyObject* owner = owner_h.ptr();
  const Names& n = names();
  std::vector<PyObject*> ix, of, pw;
  const bool lists = items(indices_h.ptr(), ix) && items(offsets_h.ptr(), of);
  const bool has_psw = !psw_h.is_none();
  if (!checked) {
    if (!lists || has_psw || ix.size() != of.size()) return py::none();
    for (PyObject* o : ix)
      if (!plain(o, true)) return py::none();
    for (PyObject* o : of)
      if (!plain(o, false)) return py::none();
  } else if (!lists || (has_psw && !items(psw_h.ptr(), pw))) {
    throw py::type_error("lookup: indices, offsets and per_sample_weights must be lists");
  }
  Buffers b = read_buffers(owner, /*with_state=*/false, "");
  if (ix.size() != b.weights.size() || of.size() != ix.size()) {
    if (!checked) return py::none();  // forward() words the error
    throw py::value_error("lookup: one index and one offsets tensor per table are needed");
  }
  std::vector<at::Tensor> idx, off, psw;
  for (PyObject* o : ix) idx.push_back(as_tensor(o, "indices"));
  for (PyObject* o : of) off.push_back(as_tensor(o, "offsets"));
  for (PyObject* o : pw) psw.push_back(as_tensor(o, "per_sample_weights"));
  std::vector<int64_t> padding;
  {
    py::object p = getattr_(owner, n.padding);
    std::vector<PyObject*> ps;
    if (!items(p.ptr(), ps)) throw py::type_error("_padding must be a list");
    for (PyObject* o : ps) padding.push_back(PyLong_AsLongLong(o));
    if (PyErr_Occurred()) throw py::error_already_set();
  }
  const bool include_last = PyObject_IsTrue(getattr_(owner, n.include_last).ptr()) == 1;
  const bool mean =
      PyUnicode_CompareWithASCIIString(getattr_(owner, n.mode).ptr(), "mean") == 0;
  std::optional<at::ScalarType> out_dtype;
  if (!out_dtype_h.is_none()) {
    if (!THPDtype_Check(out_dtype_h.ptr())) throw py::type_error("out_dtype must be a torch.dtype");
    out_dtype = reinterpret_cast<THPDtype*>(out_dtype_h.ptr())->scalar_type;
  }
  if (!at::GradMode::is_enabled()) {
    at::Tensor out;
    {
      py::gil_scoped_release no_gil;
      out = forward_op().call(b.weights, idx, off, psw, padding, include_last, mean, out_dtype);
    }
    return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(out)));
  }
  const at::Tensor anchor = as_tensor(getattr_(owner, n.anchor).ptr(), "_anchor");
  std::string rule = py::str(getattr_(owner, n.rule));
  // made here: its reference to the update target is taken under the GIL
  auto node = c10::make_intrusive<LookupBackward>(getattr_(owner, n.target).ptr());
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = forward_op().call(b.weights, idx, off, psw, padding, include_last, mean, out_dtype);
    }
    ag::edge_list edges = ag::collect_next_edges(anchor);
    for (const at::Tensor& p : psw) edges.push_back(ag::impl::gradient_edge(p));
    node->set_next_edges(std::move(edges));
    node->versions_ = versions(idx, off);
    for (const at::Tensor& p : psw) node->psw_.emplace_back(p, /*is_output=*/false);
    node->indices_ = std::move(idx);
    node->offsets_ = std::move(off);
    node->padding_ = std::move(padding);
    node->include_last_ = include_last;
    node->mean_ = mean;
    node->rule_ = std::move(rule);
    node->rows_ = out.size(0);
    node->cols_ = out.size(1);
    node->out_type_ = out.scalar_type();
    ag::set_history(out, node);
  }
  return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(out)));
  END_HANDLE_TH_ERRORS_PYBIND
}

}  // namespace

PYBIND11_MODULE(_lookup, m) {
  m.def("lookup", &lookup, "pooled lookups of a FusedEmbeddingBagCollection (see lookup.cpp)");
}
