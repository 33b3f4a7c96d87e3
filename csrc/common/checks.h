// Boundary checks shared by every op's host code.
#pragma once

#include <torch/extension.h>

#define OMNIFAST_CHECK_CPU(x) \
  TORCH_CHECK(!(x).is_cuda(), #x " must be a CPU tensor, got a tensor on ", (x).device())
#define OMNIFAST_CHECK_CUDA(x) \
  TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor, got a tensor on ", (x).device())
#define OMNIFAST_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define OMNIFAST_CHECK_FLOAT(x)                                                    \
  TORCH_CHECK((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kDouble, \
              #x " must be float32 or float64, got ", (x).scalar_type())
#define OMNIFAST_CHECK_DIM(x, d) \
  TORCH_CHECK((x).dim() == (d), #x " must have ", (d), " dimensions, got shape ", (x).sizes())

#ifdef OMNIFAST_WITH_CUDA
#define OMNIFAST_CUDA_CHECK_LAUNCH()                                                   \
  do {                                                                                 \
    cudaError_t err_ = cudaGetLastError();                                             \
    TORCH_CHECK(err_ == cudaSuccess, "omnifast CUDA launch failed: ", cudaGetErrorString(err_)); \
  } while (0)
#endif
