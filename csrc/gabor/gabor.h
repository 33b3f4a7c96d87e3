// Fused GaborNet (multiplicative filter network: OmniMotion's colour/density and latent-code
// MLP), CPU kernels.
//
// Shapes, with M points, D inputs, H hidden units, NL hidden linears (NL + 1 filters), O outputs:
//   x: [M, D]; dy: [M, O]
//   filt_w: [NL + 1, H, D]; filt_b: [NL + 1, H]; mu: [NL + 1, H, D]; gamma: [NL + 1, H]
//   lin_w: [NL, H, H]; lin_b: [NL, H]; out_w: [O, H]; out_b: [O]
//   acts: [NL, M, H], the hidden linears' outputs (with their bias), kept for the backward, which
//   recomputes the filters from x and everything else from them without a matrix product.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace omnifast {
namespace gabor {

struct GaborWeights {
  at::Tensor filt_w, filt_b, mu, gamma, lin_w, lin_b, out_w, out_b;
};

// Returns {y [M, O], acts [NL, M, H] (empty unless save)}.
std::vector<at::Tensor> gabor_net_fwd_cpu(const at::Tensor& x, const GaborWeights& w, bool save,
                                          bool bf16, int64_t tile);

// Returns {dx, dfilt_w, dfilt_b, dmu, dgamma, dlin_w, dlin_b, dout_w, dout_b}.
std::vector<at::Tensor> gabor_net_bwd_cpu(const at::Tensor& dy, const at::Tensor& x,
                                          const at::Tensor& acts, const GaborWeights& w,
                                          bool bf16, int64_t tile);

}  // namespace gabor
}  // namespace omnifast
