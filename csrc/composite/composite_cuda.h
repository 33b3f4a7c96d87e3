// Raw-pointer launchers of the CUDA kernels (composite.cu). This header needs only the CUDA
// runtime, so composite.cu compiles without any torch header.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace omnifast {
namespace composite {

// mask, weights: may be nullptr.
template <typename scalar_t>
cudaError_t launch_composite_fwd(const scalar_t* sigma, const scalar_t* values,
                                 const scalar_t* mask, int64_t R, int64_t K, int64_t C,
                                 int64_t mask_from, int64_t num_near, scalar_t* out,
                                 scalar_t* weights, cudaStream_t stream);

// mask, dweights, dsigma, dvalues: may be nullptr. K <= kCudaMaxSamples when dsigma is set.
template <typename scalar_t>
cudaError_t launch_composite_bwd(const scalar_t* sigma, const scalar_t* values,
                                 const scalar_t* mask, const scalar_t* dout,
                                 const scalar_t* dweights, int64_t R, int64_t K, int64_t C,
                                 int64_t mask_from, int64_t num_near, scalar_t* dsigma,
                                 scalar_t* dvalues, cudaStream_t stream);

template <typename scalar_t>
cudaError_t launch_composite_argmax(const scalar_t* sigma, int64_t R, int64_t K, int64_t* index,
                                    cudaStream_t stream);

template <typename scalar_t>
cudaError_t launch_occlusion_score(const scalar_t* sigma, const scalar_t* depths,
                                   const scalar_t* depth_limit, int64_t R, int64_t K,
                                   scalar_t* score, cudaStream_t stream);

}  // namespace composite
}  // namespace omnifast
