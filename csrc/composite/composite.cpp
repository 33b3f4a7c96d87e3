// composite host code: boundary checks, allocation, device dispatch, Python bindings.
#include "composite/composite.h"

#include "common/checks.h"
#include "common/env.h"
#include "common/registry.h"
#include "composite/composite_ray.h"

#include <sys/mman.h>

#include <c10/core/Allocator.h>
#include <c10/util/accumulate.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#ifdef OMNIFAST_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "composite/composite_cuda.h"
#endif

namespace omnifast {
namespace composite {
namespace {

void check_same(const at::Tensor& x, const char* name, const at::Tensor& sigma) {
  TORCH_CHECK(x.scalar_type() == sigma.scalar_type(), "composite: ", name, " must have sigma's dtype ",
              sigma.scalar_type(), ", got ", x.scalar_type());
  TORCH_CHECK(x.device() == sigma.device(), "composite: ", name, " must be on sigma's device ",
              sigma.device(), ", got ", x.device());
  TORCH_CHECK(x.is_contiguous(), "composite: ", name, " must be contiguous");
}

void check_sigma(const at::Tensor& sigma) {
  OMNIFAST_CHECK_DIM(sigma, 2);
  OMNIFAST_CHECK_FLOAT(sigma);
  OMNIFAST_CHECK_CONTIGUOUS(sigma);
}

void check_values(const at::Tensor& sigma, const at::Tensor& values) {
  OMNIFAST_CHECK_DIM(values, 3);
  TORCH_CHECK(values.size(0) == sigma.size(0) && values.size(1) == sigma.size(1),
              "composite: values must be [R, K, C] = [", sigma.size(0), ", ", sigma.size(1),
              ", C], got ", values.sizes());
  check_same(values, "values", sigma);
}

void check_per_sample(const at::Tensor& sigma, const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.sizes() == sigma.sizes(), "composite: ", name, " must be [R, K] = ",
              sigma.sizes(), ", got ", x.sizes());
  check_same(x, name, sigma);
}

// Large CPU outputs (dvalues is R*K*C floats, 56 MiB for one training step) come from a small
// cache of blocks (`OutputCache`) instead of torch's allocator. glibc maps every block of more
// than 32 MiB fresh from the kernel and unmaps it on free, and the kernel zeroes each new page
// on first touch: for the 64 MiB of gradients of a training step that zeroing took about 40%
// of the backward (benchmarks/RESULTS.md). A training loop asks for the same sizes every step,
// so a block freed by the previous step is handed out again with its pages already mapped.
// Blocks are 2 MiB aligned, padded to whole 2 MiB and advised onto transparent huge pages.
// Freed blocks are kept up to kCacheBytes in all (the least recently freed go back to the
// system first); allocations and frees are reported to the profiler like torch's own.
// OMNIFAST_COMPOSITE_CACHE=0 turns the cache off (torch's allocator, as before).
constexpr size_t kHuge = size_t(2) << 20;
constexpr size_t kCacheMinBytes = size_t(4) << 20;
constexpr size_t kCacheBytes = size_t(256) << 20;

class OutputCache {
 public:
  static OutputCache& get() {
    static OutputCache* cache = new OutputCache();  // never destroyed: tensors may outlive exit
    return *cache;
  }
  static bool enabled() {
    static const bool on = omnifast::env_switch_on("OMNIFAST_COMPOSITE_CACHE");
    return on;
  }
  void* take(size_t bytes) {
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->second == bytes) {
          p = it->first;
          cached_ -= bytes;
          free_.erase(it);
          break;
        }
      }
      if (p != nullptr) in_use_ += bytes;
    }
    if (p == nullptr) {
      if (posix_memalign(&p, kHuge, bytes) != 0) return nullptr;
#ifdef MADV_HUGEPAGE
      madvise(p, bytes, MADV_HUGEPAGE);
#endif
      std::lock_guard<std::mutex> lock(mu_);
      in_use_ += bytes;
    }
    report(p, static_cast<int64_t>(bytes));
    return p;
  }
  void give(void* p, size_t bytes) {
    std::vector<void*> release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_use_ -= bytes;
      free_.emplace_back(p, bytes);  // most recently freed last
      cached_ += bytes;
      while (cached_ > kCacheBytes) {
        release.push_back(free_.front().first);
        cached_ -= free_.front().second;
        free_.erase(free_.begin());
      }
    }
    report(p, -static_cast<int64_t>(bytes));
    for (void* q : release) std::free(q);
  }
  // Bytes of the blocks kept for reuse (not in use).
  size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

 private:
  void report(void* p, int64_t delta) {
    size_t in_use, reserved;
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_use = in_use_;
      reserved = in_use_ + cached_;
    }
    c10::reportMemoryUsageToProfiler(p, delta, in_use, reserved, c10::Device(c10::DeviceType::CPU));
  }
  std::mutex mu_;
  std::vector<std::pair<void*, size_t>> free_;
  size_t cached_ = 0, in_use_ = 0;
};

// An uninitialised output tensor: from the cache above for large CPU outputs, otherwise from
// torch's allocator.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const int64_t numel = c10::multiply_integers(sizes);
  const size_t nbytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (options.device().is_cpu() && nbytes >= kCacheMinBytes && OutputCache::enabled()) {
    const size_t bytes = (nbytes + kHuge - 1) / kHuge * kHuge;
    if (void* p = OutputCache::get().take(bytes)) {
      return at::from_blob(
          p, sizes, [bytes](void* q) { OutputCache::get().give(q, bytes); }, options);
    }
  }
  at::Tensor t = at::empty(sizes, options);
#ifdef MADV_HUGEPAGE
  // Without the cache, at least ask for huge pages: with 4 KiB pages the first-touch faults
  // of a fresh 56 MB buffer cost several times more than the kernel that fills it. madvise
  // covers the 2 MiB-aligned interior; its failure changes nothing but speed.
  const uintptr_t tbytes = static_cast<uintptr_t>(t.nbytes());
  if (t.device().is_cpu() && tbytes >= 2 * kHuge) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t lo = (begin + kHuge - 1) & ~(uintptr_t(kHuge) - 1);
    const uintptr_t hi = (begin + tbytes) & ~(uintptr_t(kHuge) - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#endif
  return t;
}

}  // namespace

int64_t composite_output_cache_bytes() {
  return static_cast<int64_t>(OutputCache::get().cached());
}

namespace {

#ifdef OMNIFAST_WITH_CUDA
template <typename T>
T* ptr_or_null(const at::Tensor* t) {
  return t == nullptr ? nullptr : t->data_ptr<T>();
}

void check_cuda_status(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "omnifast composite: CUDA launch of ", what,
              " failed: ", cudaGetErrorString(err));
}
#endif

}  // namespace

std::vector<at::Tensor> composite_fwd(const at::Tensor& sigma, const at::Tensor& values,
                                      const std::optional<at::Tensor>& value_mask,
                                      int64_t value_mask_from, int64_t num_masked_near,
                                      bool need_weights) {
  check_sigma(sigma);
  check_values(sigma, values);
  if (value_mask.has_value()) check_per_sample(sigma, *value_mask, "value_mask");
  TORCH_CHECK(value_mask_from >= 0, "composite: value_mask_from must be >= 0");
  TORCH_CHECK(num_masked_near >= 0, "composite: num_masked_near must be >= 0");
  const int64_t R = sigma.size(0), K = sigma.size(1), C = values.size(2);
  at::Tensor out = empty_output({R, C}, values.options());
  at::Tensor weights = need_weights ? empty_output({R, K}, sigma.options())
                                    : at::empty({0}, sigma.options());
  if (R == 0) return {out, weights};
  if (K == 0) {
    out.zero_();
    return {out, weights};
  }
  const at::Tensor* mask = value_mask.has_value() ? &*value_mask : nullptr;
  if (sigma.is_cuda()) {
#ifdef OMNIFAST_WITH_CUDA
    const c10::cuda::CUDAGuard guard(sigma.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "composite_fwd_cuda", [&] {
      check_cuda_status(
          launch_composite_fwd<scalar_t>(sigma.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                                         ptr_or_null<scalar_t>(mask), R, K, C, value_mask_from,
                                         num_masked_near, out.data_ptr<scalar_t>(),
                                         need_weights ? weights.data_ptr<scalar_t>() : nullptr,
                                         stream),
          "composite_fwd");
    });
#else
    TORCH_CHECK(false, "omnifast._C was built without CUDA kernels; got CUDA tensors");
#endif
  } else {
    composite_fwd_cpu(sigma, values, mask, value_mask_from, num_masked_near, out,
                      need_weights ? &weights : nullptr);
  }
  return {out, weights};
}

std::vector<at::Tensor> composite_bwd(const at::Tensor& sigma, const at::Tensor& values,
                                      const std::optional<at::Tensor>& value_mask,
                                      const at::Tensor& dout,
                                      const std::optional<at::Tensor>& dweights,
                                      int64_t value_mask_from, int64_t num_masked_near,
                                      bool need_dsigma, bool need_dvalues) {
  check_sigma(sigma);
  check_values(sigma, values);
  if (value_mask.has_value()) check_per_sample(sigma, *value_mask, "value_mask");
  if (dweights.has_value()) check_per_sample(sigma, *dweights, "dweights");
  const int64_t R = sigma.size(0), K = sigma.size(1), C = values.size(2);
  TORCH_CHECK(dout.dim() == 2 && dout.size(0) == R && dout.size(1) == C,
              "composite: dout must be [R, C] = [", R, ", ", C, "], got ", dout.sizes());
  check_same(dout, "dout", sigma);
  TORCH_CHECK(value_mask_from >= 0, "composite: value_mask_from must be >= 0");
  TORCH_CHECK(num_masked_near >= 0, "composite: num_masked_near must be >= 0");
  at::Tensor dsigma = need_dsigma ? empty_output({R, K}, sigma.options())
                                  : at::empty({0}, sigma.options());
  at::Tensor dvalues = need_dvalues ? empty_output({R, K, C}, values.options())
                                    : at::empty({0}, values.options());
  if (R == 0 || K == 0 || (!need_dsigma && !need_dvalues)) return {dsigma, dvalues};
  const at::Tensor* mask = value_mask.has_value() ? &*value_mask : nullptr;
  const at::Tensor* dw = dweights.has_value() ? &*dweights : nullptr;
  if (sigma.is_cuda()) {
#ifdef OMNIFAST_WITH_CUDA
    TORCH_CHECK(!need_dsigma || K <= kCudaMaxSamples, "composite: the CUDA backward supports up to ",
                kCudaMaxSamples, " samples per ray, got K = ", K,
                "; use the 'triton' or 'torch' backend for longer rays");
    const c10::cuda::CUDAGuard guard(sigma.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "composite_bwd_cuda", [&] {
      check_cuda_status(
          launch_composite_bwd<scalar_t>(
              sigma.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(mask),
              dout.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(dw), R, K, C, value_mask_from,
              num_masked_near, need_dsigma ? dsigma.data_ptr<scalar_t>() : nullptr,
              need_dvalues ? dvalues.data_ptr<scalar_t>() : nullptr, stream),
          "composite_bwd");
    });
#else
    TORCH_CHECK(false, "omnifast._C was built without CUDA kernels; got CUDA tensors");
#endif
  } else {
    composite_bwd_cpu(sigma, values, mask, dout, dw, value_mask_from, num_masked_near,
                      need_dsigma ? &dsigma : nullptr, need_dvalues ? &dvalues : nullptr);
  }
  return {dsigma, dvalues};
}

at::Tensor composite_argmax(const at::Tensor& sigma) {
  check_sigma(sigma);
  const int64_t R = sigma.size(0), K = sigma.size(1);
  TORCH_CHECK(K > 0 || R == 0, "composite_argmax: K must be > 0 (argmax of an empty ray)");
  at::Tensor index = at::empty({R}, sigma.options().dtype(at::kLong));
  if (R == 0) return index;
  if (sigma.is_cuda()) {
#ifdef OMNIFAST_WITH_CUDA
    const c10::cuda::CUDAGuard guard(sigma.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "composite_argmax_cuda", [&] {
      check_cuda_status(launch_composite_argmax<scalar_t>(sigma.data_ptr<scalar_t>(), R, K,
                                                          index.data_ptr<int64_t>(), stream),
                        "composite_argmax");
    });
#else
    TORCH_CHECK(false, "omnifast._C was built without CUDA kernels; got CUDA tensors");
#endif
  } else {
    composite_argmax_cpu(sigma, index);
  }
  return index;
}

at::Tensor occlusion_score(const at::Tensor& sigma, const at::Tensor& depths,
                           const at::Tensor& depth_limit) {
  check_sigma(sigma);
  check_per_sample(sigma, depths, "depths");
  TORCH_CHECK(depth_limit.dim() == 1 && depth_limit.size(0) == sigma.size(0),
              "occlusion_score: depth_limit must be [R] = [", sigma.size(0), "], got ",
              depth_limit.sizes());
  check_same(depth_limit, "depth_limit", sigma);
  const int64_t R = sigma.size(0), K = sigma.size(1);
  at::Tensor score = at::empty({R}, sigma.options());
  if (R == 0) return score;
  if (K == 0) return score.zero_();
  if (sigma.is_cuda()) {
#ifdef OMNIFAST_WITH_CUDA
    const c10::cuda::CUDAGuard guard(sigma.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "occlusion_score_cuda", [&] {
      check_cuda_status(
          launch_occlusion_score<scalar_t>(sigma.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
                                           depth_limit.data_ptr<scalar_t>(), R, K,
                                           score.data_ptr<scalar_t>(), stream),
          "occlusion_score");
    });
#else
    TORCH_CHECK(false, "omnifast._C was built without CUDA kernels; got CUDA tensors");
#endif
  } else {
    occlusion_score_cpu(sigma, depths, depth_limit, score);
  }
  return score;
}

}  // namespace composite

void bind_composite(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("composite_fwd", &composite::composite_fwd, "Fused compositing forward.",
        py::arg("sigma"), py::arg("values"), py::arg("value_mask"), py::arg("value_mask_from"),
        py::arg("num_masked_near"), py::arg("need_weights"));
  m.def("composite_bwd", &composite::composite_bwd, "Fused compositing backward.",
        py::arg("sigma"), py::arg("values"), py::arg("value_mask"), py::arg("dout"),
        py::arg("dweights"), py::arg("value_mask_from"), py::arg("num_masked_near"),
        py::arg("need_dsigma"), py::arg("need_dvalues"));
  m.def("composite_argmax", &composite::composite_argmax, "Argmax of the compositing weights.",
        py::arg("sigma"));
  m.def("occlusion_score", &composite::occlusion_score,
        "Sum of the compositing weights of samples nearer than a depth limit.", py::arg("sigma"),
        py::arg("depths"), py::arg("depth_limit"));
  m.def("composite_output_cache_bytes", &composite::composite_output_cache_bytes,
        "Bytes of freed CPU output blocks the compositing ops keep for reuse.");
}

}  // namespace omnifast
