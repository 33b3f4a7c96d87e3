// composite CUDA kernels: one thread per ray running the per-ray math of composite_ray.h (the
// same code the CPU kernels run, so the CPU tests check it). Needs only the CUDA runtime.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "composite/composite_cuda.h"
#include "composite/composite_ray.h"

namespace omnifast {
namespace composite {
namespace {

constexpr int kThreads = 128;

inline unsigned int blocks_for(int64_t R) {
  return static_cast<unsigned int>((R + kThreads - 1) / kThreads);
}

template <int CT, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    composite_fwd_kernel(const scalar_t* __restrict__ sigma, const scalar_t* __restrict__ values,
                         const scalar_t* __restrict__ mask, int64_t R, int64_t K, int64_t C,
                         int64_t mask_from, int64_t num_near, scalar_t* __restrict__ out,
                         scalar_t* __restrict__ weights) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  ray_forward<CT, scalar_t, scalar_t>(sigma + r * K, static_cast<const scalar_t*>(nullptr),
                                      values + r * K * C, mask ? mask + r * K : nullptr, K, C,
                                      mask_from, num_near, out + r * C,
                                      weights ? weights + r * K : nullptr);
}

template <int CT, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    composite_bwd_kernel(const scalar_t* __restrict__ sigma, const scalar_t* __restrict__ values,
                         const scalar_t* __restrict__ mask, const scalar_t* __restrict__ dout,
                         const scalar_t* __restrict__ dweights, int64_t R, int64_t K, int64_t C,
                         int64_t mask_from, int64_t num_near, scalar_t* __restrict__ dsigma,
                         scalar_t* __restrict__ dvalues) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  scalar_t Tbuf[kCudaMaxSamples];
  scalar_t Gbuf[kCudaMaxSamples];
  ray_backward<CT, scalar_t, scalar_t>(
      sigma + r * K, static_cast<const scalar_t*>(nullptr), values + r * K * C,
      mask ? mask + r * K : nullptr, dout + r * C, dweights ? dweights + r * K : nullptr, K, C,
      mask_from, num_near, dsigma ? dsigma + r * K : nullptr,
      dvalues ? dvalues + r * K * C : nullptr, Tbuf, Gbuf);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    composite_argmax_kernel(const scalar_t* __restrict__ sigma, int64_t R, int64_t K,
                            int64_t* __restrict__ index) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  index[r] = ray_argmax<scalar_t, scalar_t>(sigma + r * K, static_cast<const scalar_t*>(nullptr), K);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    occlusion_score_kernel(const scalar_t* __restrict__ sigma, const scalar_t* __restrict__ depths,
                           const scalar_t* __restrict__ depth_limit, int64_t R, int64_t K,
                           scalar_t* __restrict__ score) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  score[r] = ray_occlusion<scalar_t, scalar_t>(sigma + r * K, static_cast<const scalar_t*>(nullptr),
                                               depths + r * K, depth_limit[r], K);
}

template <typename Fn>
void dispatch_channels(int64_t C, Fn&& fn) {
  switch (C) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 6: fn(std::integral_constant<int, 6>{}); break;
    case 7: fn(std::integral_constant<int, 7>{}); break;
    default: fn(std::integral_constant<int, 0>{}); break;
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t launch_composite_fwd(const scalar_t* sigma, const scalar_t* values,
                                 const scalar_t* mask, int64_t R, int64_t K, int64_t C,
                                 int64_t mask_from, int64_t num_near, scalar_t* out,
                                 scalar_t* weights, cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  dispatch_channels(C, [&](auto ct) {
    constexpr int CT = decltype(ct)::value;
    composite_fwd_kernel<CT, scalar_t><<<blocks_for(R), kThreads, 0, stream>>>(
        sigma, values, mask, R, K, C, mask_from, num_near, out, weights);
  });
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_composite_bwd(const scalar_t* sigma, const scalar_t* values,
                                 const scalar_t* mask, const scalar_t* dout,
                                 const scalar_t* dweights, int64_t R, int64_t K, int64_t C,
                                 int64_t mask_from, int64_t num_near, scalar_t* dsigma,
                                 scalar_t* dvalues, cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  if (dsigma != nullptr && K > kCudaMaxSamples) return cudaErrorInvalidValue;
  dispatch_channels(C, [&](auto ct) {
    constexpr int CT = decltype(ct)::value;
    composite_bwd_kernel<CT, scalar_t><<<blocks_for(R), kThreads, 0, stream>>>(
        sigma, values, mask, dout, dweights, R, K, C, mask_from, num_near, dsigma, dvalues);
  });
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_composite_argmax(const scalar_t* sigma, int64_t R, int64_t K, int64_t* index,
                                    cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  composite_argmax_kernel<scalar_t><<<blocks_for(R), kThreads, 0, stream>>>(sigma, R, K, index);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_occlusion_score(const scalar_t* sigma, const scalar_t* depths,
                                   const scalar_t* depth_limit, int64_t R, int64_t K,
                                   scalar_t* score, cudaStream_t stream) {
  if (R == 0) return cudaSuccess;
  occlusion_score_kernel<scalar_t><<<blocks_for(R), kThreads, 0, stream>>>(sigma, depths,
                                                                           depth_limit, R, K, score);
  return cudaGetLastError();
}

#define OMNIFAST_INSTANTIATE(T)                                                                  \
  template cudaError_t launch_composite_fwd<T>(const T*, const T*, const T*, int64_t, int64_t,   \
                                               int64_t, int64_t, int64_t, T*, T*, cudaStream_t); \
  template cudaError_t launch_composite_bwd<T>(const T*, const T*, const T*, const T*, const T*,  \
                                               int64_t, int64_t, int64_t, int64_t, int64_t, T*,  \
                                               T*, cudaStream_t);                                \
  template cudaError_t launch_composite_argmax<T>(const T*, int64_t, int64_t, int64_t*,          \
                                                  cudaStream_t);                                 \
  template cudaError_t launch_occlusion_score<T>(const T*, const T*, const T*, int64_t, int64_t, \
                                                 T*, cudaStream_t);
OMNIFAST_INSTANTIATE(float)
OMNIFAST_INSTANTIATE(double)
#undef OMNIFAST_INSTANTIATE

}  // namespace composite
}  // namespace omnifast
