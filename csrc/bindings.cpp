// The omnifast._C module: build information plus each op's bindings.
#include <torch/extension.h>

#include "common/registry.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef OMNIFAST_SOURCE_DIGEST
#define OMNIFAST_SOURCE_DIGEST "unknown"
#endif

namespace {

bool has_cuda() {
#ifdef OMNIFAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["cuda"] = has_cuda();
#ifdef _OPENMP
  d["openmp"] = true;
  d["omp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
#endif
#ifdef __AVX512F__
  d["avx512"] = true;
#else
  d["avx512"] = false;
#endif
#ifdef __AVX2__
  d["avx2"] = true;
#else
  d["avx2"] = false;
#endif
  d["source_digest"] = OMNIFAST_SOURCE_DIGEST;
  d["compiler"] = __VERSION__;
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "omnifast fused kernels (C++/OpenMP for the CPU, CUDA when built with it)";
  m.def("has_cuda", &has_cuda, "Whether the CUDA kernels were compiled in.");
  m.def("build_info", &build_info, "Compile-time flags of this build.");
  m.def("source_digest", []() { return std::string(OMNIFAST_SOURCE_DIGEST); },
        "Digest of the csrc/ sources this module was built from.");
  omnifast::bind_composite(m);
  omnifast::bind_bijection(m);
  omnifast::bind_gabor(m);
  omnifast::bind_runtime(m);
}
