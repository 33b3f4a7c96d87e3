// Fused affine coupling stack (OmniMotion's invertible map), CPU kernels.
//
// Shapes, with L layers, M points, F frames, E = 2 + 4 * n_freq encoded inputs, P projection
// width, H hidden width and NH extra hidden layers:
//   x, dy: [M, 3]; frame_idx: [M] int64; frame_bias: [F, L, H] (= W_code c_l + b_in, hoisted)
//   proj_w: [L, P, E]; proj_b: [L, P]; w_in_h: [L, H, P] (the non-code columns of w_in)
//   w_hid: [NH, L, H, H]; b_hid: [NH, L, H]; w_out: [L, 2, H]; b_out: [L, 2]
//   saved: [L, M, 3], the input coordinates of every layer (all that the backward needs);
//   acts: [L, K, M, H], optionally, the top K hidden activations of every layer in the product
//   dtype (K = save_hidden in 0..NH + 1; the backward then recomputes only the layers below).
#pragma once

#include <torch/extension.h>

#include <vector>

namespace omnifast {
namespace bijection {

struct StackWeights {
  at::Tensor frame_bias, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out;
};

// Returns {y [M, 3], saved [L, M, 3], acts [L, save_hidden, M, H]}; saved and acts are empty
// unless save_inputs (acts also when save_hidden == 0).
std::vector<at::Tensor> coupling_stack_fwd_cpu(const at::Tensor& x, const at::Tensor& frame_idx,
                                               const StackWeights& w,
                                               const std::vector<int64_t>& coords,
                                               int64_t n_freq, bool inverse, bool save_inputs,
                                               int64_t save_hidden, bool bf16, int64_t tile);

// Returns {dx, dframe_bias, dproj_w, dproj_b, dw_in_h, dw_hid, db_hid, dw_out, db_out}.
std::vector<at::Tensor> coupling_stack_bwd_cpu(const at::Tensor& dy, const at::Tensor& saved,
                                               const at::Tensor& acts,
                                               const at::Tensor& frame_idx,
                                               const StackWeights& w,
                                               const std::vector<int64_t>& coords,
                                               int64_t n_freq, bool inverse, bool bf16,
                                               int64_t tile);

// The affine pre-layer (omnifast.reference.affine_ref), CPU kernels. With M points, E = 2 *
// n_freq + 2 encoded inputs, H hidden width and NH extra hidden layers (the MLP has NH + 2
// linears and NH + 1 hidden activations h_0..h_NH):
//   x, dy: [M, 3]; t: [M]; w0: [H, E]; b0: [H]; w_hid: [NH, H, H]; b_hid: [NH, H];
//   w_out: [5, H]; b_out: [5]
//   acts: [K, M, H], optionally, the top K hidden activations h_{NH+1-K}..h_NH in the product
//   dtype (K = save_hidden in 0..NH + 1); the backward recomputes the others from x and t.
struct AffineWeights {
  at::Tensor w0, b0, w_hid, b_hid, w_out, b_out;
};

// Returns {y [M, 3], acts [save_hidden, M, H] (empty when save_hidden == 0)}.
std::vector<at::Tensor> affine_fwd_cpu(const at::Tensor& x, const at::Tensor& t,
                                       const AffineWeights& w, int64_t n_freq, bool inverse,
                                       int64_t save_hidden, bool bf16, int64_t tile);

// Returns {dx, dt, dw0, db0, dw_hid, db_hid, dw_out, db_out}.
std::vector<at::Tensor> affine_bwd_cpu(const at::Tensor& dy, const at::Tensor& x,
                                       const at::Tensor& t, const at::Tensor& acts,
                                       const AffineWeights& w, int64_t n_freq, bool inverse,
                                       bool bf16, int64_t tile);

}  // namespace bijection
}  // namespace omnifast
