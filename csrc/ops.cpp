// Every operator schema of the m2n2 library, in one place.
//
// Backends attach kernels with TORCH_LIBRARY_IMPL(m2n2, CPU|CUDA, m) in csrc/cpu and
// csrc/cuda; m2n2_kernels/ops.py adds the fake (meta) kernels for torch.compile and
// the Triton kernels where CUDA C++ was not compiled. Arguments that an op writes
// are marked (a!). Ops return nothing when they write into given tensors: the
// Python API allocates outputs, which keeps one kernel per op and no hidden copies.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "build_info.h"

namespace m2n2 {
namespace {

std::string build_info_json() { return build_info::json(); }

}  // namespace
}  // namespace m2n2

TORCH_LIBRARY(m2n2, m) {
  m.def("build_info() -> str", &m2n2::build_info_json);

  // ---- split-point crossover (docs/semantics.md, "Crossover") ----
  // a, b, out: lists of tensors forming one long vector (one tensor for a plain
  // buffer). split and index_offset are global element indices; element i of the
  // list has global index index_offset + i. stream keys the noise (the child's
  // number in a batch). sums: float64 [2, 3] (as interp_sums) or None: the slerp
  // angle's sums over the whole vector, of which the lists are one piece.
  // index_offsets (instead of index_offset, which must then be 0): entry i's element 0
  // has global index index_offsets[i]; entries in any order, not adjacent (a rank's
  // shard of many parameters), their global ranges disjoint.
  m.def(
      "split_interpolate_out(Tensor[] a, Tensor[] b, Tensor(a!)[] out, int split, float w, "
      "str method, str omega, float noise_std, int seed, int stream, int index_offset, Tensor? sums=None, "
      "int[]? index_offsets=None) -> ()");
  // In place into self, which plays parent a when self_is_a, else parent b.
  m.def(
      "split_interpolate_(Tensor(a!)[] self, Tensor[] other, int split, float w, str method, "
      "str omega, float noise_std, int seed, int stream, int index_offset, bool self_is_a, "
      "Tensor? sums=None, int[]? index_offsets=None) -> ()");
  // The slerp angle's six sums over the piece a, b of a longer vector: float64 [2, 3],
  // row s = (dot, |a|^2, |b|^2) over the elements on side s of the global split. Sums
  // of pieces add up (phase 1 of a streamed or sharded slerp; phase 2 passes the
  // totals to split_interpolate as sums).
  m.def("interp_sums(Tensor[] a, Tensor[] b, int split, int index_offset, int[]? index_offsets=None) -> Tensor");
  // K children from rows ia[k], ib[k] of a P x n archive, split[k], w[k] (fp64), noise
  // keyed by (seed, k, element).
  m.def(
      "crossover_batch_out(Tensor archive, Tensor ia, Tensor ib, Tensor split, Tensor w, "
      "Tensor(a!) out, str method, str omega, float noise_std, int seed) -> ()");

  // ---- per-sample score gathering (docs/semantics.md, "Per-sample scores") ----
  // logits [B, T, V] (last dimension contiguous, any strides on B and T), target
  // [B, T] int64, mask [B, T] bool or None. kind: correct | logprob | prob; reduce over
  // the valid tokens (mask true, target != ignore_index): mean | sum | all. The score
  // of sample b goes to out[out_index[b]] (out[b] without out_index), in out's dtype.
  // Raises before writing when a valid target lies outside [0, V) or out_index
  // outside out.
  m.def(
      "sample_scores_out(Tensor logits, Tensor target, Tensor? mask, int ignore_index, str kind, "
      "str reduce, Tensor(a!) out, Tensor? out_index) -> ()");

  // ---- niche statistics (docs/semantics.md, "Niche statistics") ----
  // S [N, D] (bool/uint8 0/1, float16, bfloat16, float32, float64; rows contiguous),
  // child [D] (dtype of S) or None: counted as row N of z and fitness (attraction_mode "none"
  // only), capacity [D] float64 or None (all 1). Outputs, float32 (float64 for float64
  // S): z [D], fitness [N (+1 with a child)], attraction: [0] for attraction_mode "none", the row
  // A[parent, :] [N] for "row", all of A [N, N] for "matrix". Raises before writing any
  // output when S or child holds a non-finite score.
  m.def(
      "niche_stats_out(Tensor S, Tensor? child, Tensor? capacity, float alpha, float eps, int parent, "
      "str attraction_mode, Tensor(a!) z, Tensor(b!) fitness, Tensor(c!) attraction) -> ()");

  // ---- task-vector merges (docs/semantics.md, "Task-vector merges") ----
  // base: L tensors; models: K x L tensors, model-major (model k's position i is
  // models[k * L + i]); out: L tensors, each base[i] itself (in place) or fresh.
  // weights, density, gamma: K numbers (gamma: the fraction of largest magnitudes
  // magnitude_outliers drops, read by it only). sparsify: none | magnitude | random |
  // magnitude_outliers; consensus: none | sum | count; rescale: none | l1 | density;
  // scope: tensor | global; seed keys the random sparsification (its 64 bits).
  m.def(
      "task_merge_out(Tensor[] base, Tensor[] models, Tensor(a!)[] out, float[] weights, float[] density, "
      "float[] gamma, str sparsify, str consensus, str rescale, bool normalize, float lam, str scope, "
      "int seed) -> ()");

  // ---- DELLA (docs/semantics.md, "della"): task_merge_out's passes with mergekit's
  // della_magprune sparsification; CPU only for now (the Python API runs the torch
  // reference on other devices). epsilon: K numbers in [0, 1]; rescale: none | l1.
  m.def(
      "della_merge_out(Tensor[] base, Tensor[] models, Tensor(a!)[] out, float[] weights, float[] density, "
      "float[] epsilon, str consensus, str rescale, bool normalize, float lam, str scope, int seed) -> ()");

  // ---- PCB merging (docs/semantics.md, "PCB merging") ----
  // base, models, out as task_merge_out (models model-major, K x L). ratio: the
  // fraction of scores kept, in (0, 1]; clamp: the magnitude clamp's ratio, in
  // [0, 0.5); scope: tensor | global.
  m.def(
      "pcb_merge_out(Tensor[] base, Tensor[] models, Tensor(a!)[] out, float ratio, float lam, str scope, "
      "float clamp) -> ()");
}

// A plain CPython module, so that `import m2n2_kernels._C` loads the library and runs
// the registrations above; all functionality is reached through torch.ops.m2n2.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
