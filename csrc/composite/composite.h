// composite: transmittance-weighted compositing along rays (OmniMotion spec 3.7-3.9).
//
// Host entry points (device-dispatched: CPU tensors run the OpenMP kernels, CUDA tensors the
// CUDA kernels of CUDA builds). Shapes: sigma [R, K], values [R, K, C], value_mask [R, K],
// depths [R, K], depth_limit [R]; every tensor contiguous, one float dtype (float32/float64).
#pragma once

#include <torch/extension.h>

#include <optional>
#include <vector>

namespace omnifast {
namespace composite {

// Returns {out [R, C], weights [R, K] (empty [0] when need_weights is false)}.
std::vector<at::Tensor> composite_fwd(const at::Tensor& sigma, const at::Tensor& values,
                                      const std::optional<at::Tensor>& value_mask,
                                      int64_t value_mask_from, int64_t num_masked_near,
                                      bool need_weights);

// Returns {dsigma [R, K] (empty when not needed), dvalues [R, K, C] (empty when not needed)}.
std::vector<at::Tensor> composite_bwd(const at::Tensor& sigma, const at::Tensor& values,
                                      const std::optional<at::Tensor>& value_mask,
                                      const at::Tensor& dout,
                                      const std::optional<at::Tensor>& dweights,
                                      int64_t value_mask_from, int64_t num_masked_near,
                                      bool need_dsigma, bool need_dvalues);

// Bytes of freed CPU output blocks kept for reuse (composite.cpp, OutputCache).
int64_t composite_output_cache_bytes();

// argmax_k of the weights, first on ties. [R] int64
at::Tensor composite_argmax(const at::Tensor& sigma);

// sum_k w_k [depths_k < depth_limit]. [R]
at::Tensor occlusion_score(const at::Tensor& sigma, const at::Tensor& depths,
                           const at::Tensor& depth_limit);

// CPU kernels (composite_cpu.cpp); arguments already checked and allocated.
void composite_fwd_cpu(const at::Tensor& sigma, const at::Tensor& values,
                       const at::Tensor* value_mask, int64_t value_mask_from,
                       int64_t num_masked_near, at::Tensor& out, at::Tensor* weights);
void composite_bwd_cpu(const at::Tensor& sigma, const at::Tensor& values,
                       const at::Tensor* value_mask, const at::Tensor& dout,
                       const at::Tensor* dweights, int64_t value_mask_from,
                       int64_t num_masked_near, at::Tensor* dsigma, at::Tensor* dvalues);
void composite_argmax_cpu(const at::Tensor& sigma, at::Tensor& index);
void occlusion_score_cpu(const at::Tensor& sigma, const at::Tensor& depths,
                         const at::Tensor& depth_limit, at::Tensor& score);

}  // namespace composite
}  // namespace omnifast
