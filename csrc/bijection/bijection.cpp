// Host code of the fused coupling stack: boundary checks and the Python bindings.
#include "bijection/bijection.h"

#include "common/checks.h"
#include "common/registry.h"

namespace omnifast {
namespace bijection {
namespace {

void check_weights(const StackWeights& w, const at::Tensor& x, const std::vector<int64_t>& coords,
                   int64_t n_freq) {
  OMNIFAST_CHECK_DIM(w.proj_w, 3);
  const int64_t L = w.proj_w.size(0), P = w.proj_w.size(1), E = w.proj_w.size(2);
  OMNIFAST_CHECK_DIM(w.w_in_h, 3);
  const int64_t H = w.w_in_h.size(1);
  OMNIFAST_CHECK_DIM(w.w_hid, 4);
  const int64_t NH = w.w_hid.size(0);
  TORCH_CHECK(n_freq >= 0 && E == 2 + 4 * n_freq, "proj_w must be [L, P, 2 + 4 * n_freq] = [",
              L, ", ", P, ", ", 2 + 4 * n_freq, "], got ", w.proj_w.sizes());
  TORCH_CHECK(static_cast<int64_t>(coords.size()) == L, "coords must have ", L,
              " entries, got ", coords.size());
  for (auto c : coords) TORCH_CHECK(c >= 0 && c < 3, "coords must be in {0, 1, 2}, got ", c);
  auto expect = [&](const at::Tensor& t, const char* name, at::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must be ", x.scalar_type(),
                " like x, got ", t.scalar_type());
    OMNIFAST_CHECK_CPU(t);
    OMNIFAST_CHECK_CONTIGUOUS(t);
  };
  OMNIFAST_CHECK_DIM(w.frame_bias, 3);
  expect(w.frame_bias, "frame_bias", {w.frame_bias.size(0), L, H});
  expect(w.proj_w, "proj_w", {L, P, E});
  expect(w.proj_b, "proj_b", {L, P});
  expect(w.w_in_h, "w_in_h", {L, H, P});
  expect(w.w_hid, "w_hid", {NH, L, H, H});
  expect(w.b_hid, "b_hid", {NH, L, H});
  expect(w.w_out, "w_out", {L, 2, H});
  expect(w.b_out, "b_out", {L, 2});
}

void check_points(const at::Tensor& x, const char* name, const at::Tensor& frame_idx,
                  int64_t num_frames) {
  OMNIFAST_CHECK_CPU(x);
  OMNIFAST_CHECK_CONTIGUOUS(x);
  OMNIFAST_CHECK_FLOAT(x);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, name, " must be [M, 3], got ", x.sizes());
  OMNIFAST_CHECK_CPU(frame_idx);
  OMNIFAST_CHECK_CONTIGUOUS(frame_idx);
  TORCH_CHECK(frame_idx.scalar_type() == at::kLong, "frame_idx must be int64, got ",
              frame_idx.scalar_type());
  TORCH_CHECK(frame_idx.dim() == 1 && frame_idx.size(0) == x.size(0),
              "frame_idx must be [M] = [", x.size(0), "], got ", frame_idx.sizes());
  if (frame_idx.numel() > 0) {
    const int64_t lo = frame_idx.min().item<int64_t>(), hi = frame_idx.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < num_frames, "frame_idx values must be in [0, ", num_frames,
                "), got [", lo, ", ", hi, "]");
  }
}

StackWeights pack(const at::Tensor& frame_bias, const at::Tensor& proj_w,
                  const at::Tensor& proj_b, const at::Tensor& w_in_h, const at::Tensor& w_hid,
                  const at::Tensor& b_hid, const at::Tensor& w_out, const at::Tensor& b_out) {
  return StackWeights{frame_bias, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out};
}

std::vector<at::Tensor> fwd(const at::Tensor& x, const at::Tensor& frame_idx,
                            const at::Tensor& frame_bias, const at::Tensor& proj_w,
                            const at::Tensor& proj_b, const at::Tensor& w_in_h,
                            const at::Tensor& w_hid, const at::Tensor& b_hid,
                            const at::Tensor& w_out, const at::Tensor& b_out,
                            std::vector<int64_t> coords, int64_t n_freq, bool inverse,
                            bool save_inputs, int64_t save_hidden, bool bf16, int64_t tile) {
  auto w = pack(frame_bias, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out);
  check_points(x, "x", frame_idx, frame_bias.dim() > 0 ? frame_bias.size(0) : 0);
  check_weights(w, x, coords, n_freq);
  check_tile_and_mode(x, bf16, tile);
  check_save_hidden(save_hidden, w_hid.size(0));
  return coupling_stack_fwd_cpu(x, frame_idx, w, coords, n_freq, inverse, save_inputs,
                                save_hidden, bf16, tile);
}

std::vector<at::Tensor> bwd(const at::Tensor& dy, const at::Tensor& saved,
                            const at::Tensor& acts, const at::Tensor& frame_idx,
                            const at::Tensor& frame_bias, const at::Tensor& proj_w,
                            const at::Tensor& proj_b, const at::Tensor& w_in_h,
                            const at::Tensor& w_hid, const at::Tensor& b_hid,
                            const at::Tensor& w_out, const at::Tensor& b_out,
                            std::vector<int64_t> coords, int64_t n_freq, bool inverse, bool bf16,
                            int64_t tile) {
  auto w = pack(frame_bias, proj_w, proj_b, w_in_h, w_hid, b_hid, w_out, b_out);
  check_points(dy, "dy", frame_idx, frame_bias.dim() > 0 ? frame_bias.size(0) : 0);
  check_weights(w, dy, coords, n_freq);
  const int64_t L = proj_w.size(0);
  TORCH_CHECK(saved.sizes() == at::IntArrayRef({L, dy.size(0), 3}), "saved must be [", L, ", ",
              dy.size(0), ", 3], got ", saved.sizes());
  TORCH_CHECK(saved.scalar_type() == dy.scalar_type(), "saved must be ", dy.scalar_type());
  OMNIFAST_CHECK_CPU(saved);
  OMNIFAST_CHECK_CONTIGUOUS(saved);
  check_tile_and_mode(dy, bf16, tile);
  if (acts.numel() > 0) {
    const int64_t NH = w_hid.size(0), H = w_in_h.size(1);
    TORCH_CHECK(acts.dim() == 4 && acts.size(0) == L && acts.size(1) <= NH + 1 &&
                    acts.size(2) == dy.size(0) && acts.size(3) == H,
                "acts must be [", L, ", K <= ", NH + 1, ", ", dy.size(0), ", ", H, "], got ",
                acts.sizes());
    const at::ScalarType gtype = bf16 ? at::kBFloat16 : dy.scalar_type();
    TORCH_CHECK(acts.scalar_type() == gtype, "acts must be ", gtype, ", got ",
                acts.scalar_type());
    OMNIFAST_CHECK_CPU(acts);
    OMNIFAST_CHECK_CONTIGUOUS(acts);
  }
  return coupling_stack_bwd_cpu(dy, saved, acts, frame_idx, w, coords, n_freq, inverse, bf16,
                                tile);
}

void check_affine(const at::Tensor& x, const at::Tensor& t, const AffineWeights& w,
                  int64_t n_freq) {
  OMNIFAST_CHECK_CPU(x);
  OMNIFAST_CHECK_CONTIGUOUS(x);
  OMNIFAST_CHECK_FLOAT(x);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "x must be [M, 3], got ", x.sizes());
  OMNIFAST_CHECK_DIM(w.w0, 2);
  OMNIFAST_CHECK_DIM(w.w_hid, 3);
  const int64_t H = w.w0.size(0), E = w.w0.size(1), NH = w.w_hid.size(0);
  TORCH_CHECK(n_freq >= 0 && E == 2 * n_freq + 2, "w0 must be [H, 2 * n_freq + 2] = [", H, ", ",
              2 * n_freq + 2, "], got ", w.w0.sizes());
  auto expect = [&](const at::Tensor& p, const char* name, at::IntArrayRef shape) {
    TORCH_CHECK(p.sizes() == shape, name, " must have shape ", shape, ", got ", p.sizes());
    TORCH_CHECK(p.scalar_type() == x.scalar_type(), name, " must be ", x.scalar_type(),
                " like x, got ", p.scalar_type());
    OMNIFAST_CHECK_CPU(p);
    OMNIFAST_CHECK_CONTIGUOUS(p);
  };
  expect(t, "t", {x.size(0)});
  expect(w.b0, "b0", {H});
  expect(w.w_hid, "w_hid", {NH, H, H});
  expect(w.b_hid, "b_hid", {NH, H});
  expect(w.w_out, "w_out", {5, H});
  expect(w.b_out, "b_out", {5});
}

std::vector<at::Tensor> affine_fwd(const at::Tensor& x, const at::Tensor& t, const at::Tensor& w0,
                                   const at::Tensor& b0, const at::Tensor& w_hid,
                                   const at::Tensor& b_hid, const at::Tensor& w_out,
                                   const at::Tensor& b_out, int64_t n_freq, bool inverse,
                                   int64_t save_hidden, bool bf16, int64_t tile) {
  AffineWeights w{w0, b0, w_hid, b_hid, w_out, b_out};
  check_affine(x, t, w, n_freq);
  check_tile_and_mode(x, bf16, tile);
  check_save_hidden(save_hidden, w_hid.size(0));
  return affine_fwd_cpu(x, t, w, n_freq, inverse, save_hidden, bf16, tile);
}

std::vector<at::Tensor> affine_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& t,
                                   const at::Tensor& acts, const at::Tensor& w0,
                                   const at::Tensor& b0, const at::Tensor& w_hid,
                                   const at::Tensor& b_hid, const at::Tensor& w_out,
                                   const at::Tensor& b_out, int64_t n_freq, bool inverse,
                                   bool bf16, int64_t tile) {
  AffineWeights w{w0, b0, w_hid, b_hid, w_out, b_out};
  check_affine(x, t, w, n_freq);
  OMNIFAST_CHECK_CPU(dy);
  OMNIFAST_CHECK_CONTIGUOUS(dy);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "dy must be like x ", x.sizes(), " ", x.scalar_type(), ", got ", dy.sizes(), " ",
              dy.scalar_type());
  check_tile_and_mode(x, bf16, tile);
  if (acts.numel() > 0) {
    const int64_t NH = w_hid.size(0), H = w0.size(0);
    TORCH_CHECK(acts.dim() == 3 && acts.size(0) <= NH + 1 && acts.size(1) == x.size(0) &&
                    acts.size(2) == H,
                "acts must be [K <= ", NH + 1, ", ", x.size(0), ", ", H, "], got ", acts.sizes());
    const at::ScalarType gtype = bf16 ? at::kBFloat16 : x.scalar_type();
    TORCH_CHECK(acts.scalar_type() == gtype, "acts must be ", gtype, ", got ",
                acts.scalar_type());
    OMNIFAST_CHECK_CPU(acts);
    OMNIFAST_CHECK_CONTIGUOUS(acts);
  }
  return affine_bwd_cpu(dy, x, t, acts, w, n_freq, inverse, bf16, tile);
}

}  // namespace
}  // namespace bijection

void bind_bijection(pybind11::module_& m) {
  using namespace pybind11::literals;
  m.def("coupling_stack_fwd", &bijection::fwd,
        "Fused coupling stack on CPU points: returns [y [M, 3], saved inputs [L, M, 3] or empty, "
        "saved top hidden activations [L, save_hidden, M, H] or empty]",
        "x"_a, "frame_idx"_a, "frame_bias"_a, "proj_w"_a, "proj_b"_a, "w_in_h"_a, "w_hid"_a,
        "b_hid"_a, "w_out"_a, "b_out"_a, "coords"_a, "n_freq"_a, "inverse"_a, "save_inputs"_a,
        "save_hidden"_a, "bf16"_a, "tile"_a);
  m.def("coupling_stack_bwd", &bijection::bwd,
        "Backward of the fused coupling stack from the saved per-layer input coordinates (and "
        "top hidden activations, if any): "
        "[dx, dframe_bias, dproj_w, dproj_b, dw_in_h, dw_hid, db_hid, dw_out, db_out]",
        "dy"_a, "saved"_a, "acts"_a, "frame_idx"_a, "frame_bias"_a, "proj_w"_a, "proj_b"_a,
        "w_in_h"_a, "w_hid"_a, "b_hid"_a, "w_out"_a, "b_out"_a, "coords"_a, "n_freq"_a, "inverse"_a,
        "bf16"_a, "tile"_a);
  m.def("affine_fwd", &bijection::affine_fwd,
        "Fused affine pre-layer on CPU points: returns [y [M, 3], saved top hidden activations "
        "[save_hidden, M, H] or empty]",
        "x"_a, "t"_a, "w0"_a, "b0"_a, "w_hid"_a, "b_hid"_a, "w_out"_a, "b_out"_a, "n_freq"_a,
        "inverse"_a, "save_hidden"_a, "bf16"_a, "tile"_a);
  m.def("affine_bwd", &bijection::affine_bwd,
        "Backward of the fused affine pre-layer, recomputing the MLP below the saved "
        "activations from x and t: [dx, dt, dw0, db0, dw_hid, db_hid, dw_out, db_out]",
        "dy"_a, "x"_a, "t"_a, "acts"_a, "w0"_a, "b0"_a, "w_hid"_a, "b_hid"_a, "w_out"_a,
        "b_out"_a, "n_freq"_a, "inverse"_a, "bf16"_a, "tile"_a);
}

}  // namespace omnifast
