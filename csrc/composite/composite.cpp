// composite host code: boundary checks, allocation, device dispatch, Python bindings.
#include "composite/composite.h"

#include "common/checks.h"
#include "common/registry.h"
#include "composite/composite_ray.h"

#include <sys/mman.h>

#include <cstdint>

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

// An uninitialised output tensor. Large CPU outputs (dvalues is R*K*C floats, 56 MB for one
// training step) are asked to live on transparent huge pages before anything touches them:
// with 4 KiB pages, the first-touch page faults of a fresh 56 MB buffer cost several times
// more than the kernel that fills it. The memory still comes from torch's allocator (and is
// accounted for there); madvise only covers the 2 MiB-aligned interior, and its failure (THP
// off, another OS) changes nothing but speed.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t nbytes = static_cast<uintptr_t>(t.nbytes());
  if (t.device().is_cpu() && nbytes >= 2 * kHuge) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t hi = (begin + nbytes) & ~(kHuge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#endif
  return t;
}

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
}

}  // namespace omnifast
