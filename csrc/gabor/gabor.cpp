// Host code of the fused GaborNet: boundary checks and the Python bindings.
#include "gabor/gabor.h"

#include "common/checks.h"
#include "common/registry.h"

namespace omnifast {
namespace gabor {
namespace {

void check(const at::Tensor& x, const GaborWeights& w, bool bf16, int64_t tile) {
  OMNIFAST_CHECK_CPU(x);
  OMNIFAST_CHECK_CONTIGUOUS(x);
  OMNIFAST_CHECK_FLOAT(x);
  OMNIFAST_CHECK_DIM(x, 2);
  OMNIFAST_CHECK_DIM(w.filt_w, 3);
  OMNIFAST_CHECK_DIM(w.lin_w, 3);
  OMNIFAST_CHECK_DIM(w.out_w, 2);
  const int64_t NF = w.filt_w.size(0), H = w.filt_w.size(1), D = w.filt_w.size(2);
  const int64_t NL = w.lin_w.size(0), O = w.out_w.size(0);
  TORCH_CHECK(NF == NL + 1, "filt_w must have one filter more than lin_w has linears: got ",
              w.filt_w.sizes(), " and ", w.lin_w.sizes());
  TORCH_CHECK(x.size(1) == D, "x must be [M, ", D, "], got ", x.sizes());
  auto expect = [&](const at::Tensor& p, const char* name, at::IntArrayRef shape) {
    TORCH_CHECK(p.sizes() == shape, name, " must have shape ", shape, ", got ", p.sizes());
    TORCH_CHECK(p.scalar_type() == x.scalar_type(), name, " must be ", x.scalar_type(),
                " like x, got ", p.scalar_type());
    OMNIFAST_CHECK_CPU(p);
    OMNIFAST_CHECK_CONTIGUOUS(p);
  };
  expect(w.filt_w, "filt_w", {NF, H, D});
  expect(w.filt_b, "filt_b", {NF, H});
  expect(w.mu, "mu", {NF, H, D});
  expect(w.gamma, "gamma", {NF, H});
  expect(w.lin_w, "lin_w", {NL, H, H});
  expect(w.lin_b, "lin_b", {NL, H});
  expect(w.out_w, "out_w", {O, H});
  expect(w.out_b, "out_b", {O});
  check_tile_and_mode(x, bf16, tile);
}

std::vector<at::Tensor> fwd(const at::Tensor& x, const at::Tensor& filt_w,
                            const at::Tensor& filt_b, const at::Tensor& mu,
                            const at::Tensor& gamma, const at::Tensor& lin_w,
                            const at::Tensor& lin_b, const at::Tensor& out_w,
                            const at::Tensor& out_b, bool save, bool bf16, int64_t tile) {
  GaborWeights w{filt_w, filt_b, mu, gamma, lin_w, lin_b, out_w, out_b};
  check(x, w, bf16, tile);
  return gabor_net_fwd_cpu(x, w, save, bf16, tile);
}

std::vector<at::Tensor> bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& acts,
                            const at::Tensor& filt_w, const at::Tensor& filt_b,
                            const at::Tensor& mu, const at::Tensor& gamma,
                            const at::Tensor& lin_w, const at::Tensor& lin_b,
                            const at::Tensor& out_w, const at::Tensor& out_b, bool bf16,
                            int64_t tile) {
  GaborWeights w{filt_w, filt_b, mu, gamma, lin_w, lin_b, out_w, out_b};
  check(x, w, bf16, tile);
  OMNIFAST_CHECK_CPU(dy);
  OMNIFAST_CHECK_CONTIGUOUS(dy);
  TORCH_CHECK(dy.dim() == 2 && dy.size(0) == x.size(0) && dy.size(1) == out_w.size(0) &&
                  dy.scalar_type() == x.scalar_type(),
              "dy must be [", x.size(0), ", ", out_w.size(0), "] ", x.scalar_type(), ", got ",
              dy.sizes(), " ", dy.scalar_type());
  const int64_t NL = lin_w.size(0), H = filt_w.size(1);
  if (NL > 0 && x.size(0) > 0) {
    TORCH_CHECK(acts.sizes() == at::IntArrayRef({NL, x.size(0), H}), "acts must be [", NL, ", ",
                x.size(0), ", ", H, "], got ", acts.sizes());
    TORCH_CHECK(acts.scalar_type() == x.scalar_type(), "acts must be ", x.scalar_type());
    OMNIFAST_CHECK_CPU(acts);
    OMNIFAST_CHECK_CONTIGUOUS(acts);
  }
  return gabor_net_bwd_cpu(dy, x, acts, w, bf16, tile);
}

}  // namespace
}  // namespace gabor

void bind_gabor(pybind11::module_& m) {
  using namespace pybind11::literals;
  m.def("gabor_net_fwd", &gabor::fwd,
        "Fused GaborNet on CPU inputs [M, D]: returns [y [M, O], the hidden linears' outputs "
        "[NL, M, H] or empty]",
        "x"_a, "filt_w"_a, "filt_b"_a, "mu"_a, "gamma"_a, "lin_w"_a, "lin_b"_a, "out_w"_a,
        "out_b"_a, "save"_a, "bf16"_a, "tile"_a);
  m.def("gabor_net_bwd", &gabor::bwd,
        "Backward of the fused GaborNet from x and the saved linear outputs: "
        "[dx, dfilt_w, dfilt_b, dmu, dgamma, dlin_w, dlin_b, dout_w, dout_b]",
        "dy"_a, "x"_a, "acts"_a, "filt_w"_a, "filt_b"_a, "mu"_a, "gamma"_a, "lin_w"_a, "lin_b"_a,
        "out_w"_a, "out_b"_a, "bf16"_a, "tile"_a);
}

}  // namespace omnifast
