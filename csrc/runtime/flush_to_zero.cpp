// Flush-to-zero (FTZ) and denormals-are-zero (DAZ) for every thread that runs omnifast's CPU
// math: the calling thread and each thread of the OpenMP pool that torch's intra-op
// parallelism, MKL and omnifast's kernels (at::parallel_for) share. The two bits live in each
// thread's MXCSR register, so setting them on the calling thread alone leaves the pool's other
// threads computing with subnormals (about 100x slower per operation on x86).
#include <torch/extension.h>

#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/float_mode.h"

namespace omnifast {
namespace {

bool thread_ftz() { return float_mode_bits() == kFtzDaz; }

void set_thread_ftz(bool on) { set_float_mode_bits(on ? kFtzDaz : 0u); }

// Runs `fn(thread index)` once on every thread of the OpenMP team, the calling thread included.
template <typename Fn>
void on_every_thread(Fn fn) {
#ifdef _OPENMP
  const int n = omp_get_max_threads();
#pragma omp parallel num_threads(n)
  fn(omp_get_thread_num());
#else
  fn(0);
#endif
}

bool supported() {
#ifdef OMNIFAST_HAS_MXCSR
  return true;
#else
  return false;
#endif
}

// Sets FTZ and DAZ on every thread; returns whether the calling thread had them before.
bool set_flush_to_zero(bool on) {
  const bool before = thread_ftz();
  on_every_thread([on](int) { set_thread_ftz(on); });
  set_thread_ftz(on);
  return before;
}

// FTZ and DAZ as each thread of the team sees them (index = OpenMP thread number).
std::vector<bool> flush_to_zero_per_thread() {
#ifdef _OPENMP
  std::vector<char> state(omp_get_max_threads(), 0);
#else
  std::vector<char> state(1, 0);
#endif
  on_every_thread([&state](int i) { state[i] = thread_ftz(); });
  return std::vector<bool>(state.begin(), state.end());
}

}  // namespace

void bind_runtime(pybind11::module_& m) {
  m.def("flush_to_zero_supported", &supported,
        "Whether this build can set FTZ/DAZ (x86-64 only).");
  m.def("set_flush_to_zero", &set_flush_to_zero, pybind11::arg("on"),
        "Set FTZ and DAZ on the calling thread and every OpenMP thread; returns the calling "
        "thread's previous state.");
  m.def("flush_to_zero_per_thread", &flush_to_zero_per_thread,
        "FTZ and DAZ state of each OpenMP thread.");
}

}  // namespace omnifast
