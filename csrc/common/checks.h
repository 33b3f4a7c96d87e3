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

namespace omnifast {

// The tiled CPU kernels' common arguments: a positive tile size, and float32 inputs for the bf16
// mode (`x` is the tensor whose dtype decides).
inline void check_tile_and_mode(const at::Tensor& x, bool bf16, int64_t tile) {
  TORCH_CHECK(tile > 0, "tile must be positive, got ", tile);
  TORCH_CHECK(!bf16 || x.scalar_type() == at::kFloat, "bf16 mode needs float32 inputs, got ",
              x.scalar_type());
}

// How many of an MLP's NH + 1 hidden activations a forward keeps for its backward.
inline void check_save_hidden(int64_t save_hidden, int64_t NH) {
  TORCH_CHECK(save_hidden >= 0 && save_hidden <= NH + 1, "save_hidden must be in [0, ", NH + 1,
              "], got ", save_hidden);
}

}  // namespace omnifast

#ifdef OMNIFAST_WITH_CUDA
#define OMNIFAST_CUDA_CHECK_LAUNCH()                                                   \
  do {                                                                                 \
    cudaError_t err_ = cudaGetLastError();                                             \
    TORCH_CHECK(err_ == cudaSuccess, "omnifast CUDA launch failed: ", cudaGetErrorString(err_)); \
  } while (0)
#endif
