// CPU kernels of the affine pre-layer: the depth/time MLP and the 2-D affine map of (x, y), one
// pass over point tiles with the MLP's activations in the core's cache.
//
// Per tile of T points: the encoding [sin(pi 2^k z), cos(pi 2^k z) ..., t, z] is written into a
// [T, E] buffer, the hidden layers h_{k+1} = relu(h_k W_k^T + b_k) are matrix products on
// per-thread buffers (cpu_tile.h), the 5-wide output layer theta = (phi, a1, tx, a2, ty) and the
// affine map are loops over the points. Nothing per point is kept for the backward but the
// optional top K hidden activations: the backward recomputes the layers below from x and t (z is
// x[:, 2], which the map leaves unchanged), then runs the chain rule down the MLP; weight
// gradients accumulate in per-thread buffers summed at the end.
//
// bf16 mode: as in the coupling stack, the product operands (encoding, activations, gradients
// of activations, weights) are bf16 with fp32 accumulation; biases, theta, the map and every
// gradient accumulator stay fp32 (omnifast.reference.linear's "bf16" precision).
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "bijection/bijection.h"
#include "common/cpu_tile.h"

namespace omnifast {
namespace bijection {
namespace {

using namespace cpu_tile;  // NOLINT(build/namespaces)

// omnifast.reference.bijection.AFFINE_EPS: the map divides by 1 + eps (1 exactly in fp32).
constexpr double kAffineEps = 1e-8;
constexpr int64_t kTheta = 5;

template <typename S, typename G>
struct Affine {
  int64_t M, E, H, NH, nf;
  bool inverse;
  std::vector<S> freq;
  at::Tensor w0, w_hid;  // G: [H, E], [NH, H, H]
  const S* b0;
  const S* b_hid;
  const S* b_out;
  std::vector<S> w_out_s;  // w_out rounded through G, [5, H]
  at::ScalarType gtype;
  // the top `keep` hidden activations h[NH + 1 - keep .. NH], [keep, M, H] in G
  int64_t keep = 0;
  at::Tensor acts;

  int64_t first_kept() const { return NH + 1 - keep; }
};

template <typename S, typename G>
struct AffineWork {
  at::Tensor pe, z;   // G: [T, E], [NH + 1, T, H]
  at::Tensor da, db;  // G: [T, H] gradient buffers
  at::Tensor dpe;     // G: [T, E]
  at::Tensor gw;      // G: [H, max(H, E)] low-precision weight-gradient product
  std::vector<S> theta, dtheta;

  AffineWork(const Affine<S, G>& c, int64_t T) {
    auto opt = at::TensorOptions().dtype(c.gtype);
    pe = at::empty({T, c.E}, opt);
    z = at::empty({c.NH + 1, T, c.H}, opt);
    da = at::empty({T, c.H}, opt);
    db = at::empty({T, c.H}, opt);
    dpe = at::empty({T, c.E}, opt);
    gw = at::empty({c.H, std::max(c.H, c.E)}, opt);
    theta.resize(T * kTheta);
    dtheta.resize(T * kTheta);
  }
};

// Hidden activation k for the tile's rows: in the saved buffer for the top c.keep ones, else in
// the work buffer.
template <typename S, typename G>
at::Tensor hk(const Affine<S, G>& c, const AffineWork<S, G>& w, int64_t k, int64_t i0,
              int64_t n) {
  if (k >= c.first_kept()) return c.acts.select(0, k - c.first_kept()).narrow(0, i0, n);
  return w.z.select(0, k).narrow(0, 0, n);
}

// The MLP on a tile: encoding of (t, z), hidden activations, theta [n, 5]. `from_saved`: the top
// c.keep activations are already in c.acts (backward) and are read, not recomputed; otherwise
// every activation is computed and the top c.keep are written to c.acts.
template <typename S, typename G>
OMNIFAST_VECTORIZE void mlp(const Affine<S, G>& c, AffineWork<S, G>& w, const S* x, const S* t,
                            int64_t i0, int64_t n, bool from_saved) {
  const int64_t E = c.E, H = c.H, nf = c.nf;
  const int64_t last = from_saved ? c.first_kept() : c.NH + 1;  // computed: h[0, last)
  // the encoding is also the first layer's input in the backward's weight gradient
  G* pe = w.pe.template data_ptr<G>();
  for (int64_t i = 0; i < n; ++i) {
    const S zv = x[(i0 + i) * 3 + 2];
    G* row = pe + i * E;
    for (int64_t k = 0; k < nf; ++k) {
      const S a = zv * c.freq[k];
      st(row[2 * k], S(std::sin(a)));
      st(row[2 * k + 1], S(std::cos(a)));
    }
    st(row[2 * nf], t[i0 + i]);
    st(row[2 * nf + 1], zv);
  }
  if (last > 0) {
    at::Tensor h0 = hk(c, w, 0, i0, n);
    mm_nt(h0, w.pe.narrow(0, 0, n), c.w0);
    G* hp = h0.template data_ptr<G>();
    for (int64_t i = 0; i < n; ++i) bias_act_row<S, G>(hp + i * H, c.b0, H, S(0));
  }
  for (int64_t k = 0; k + 1 < last; ++k) {
    at::Tensor hout = hk(c, w, k + 1, i0, n);
    mm_nt(hout, hk(c, w, k, i0, n), c.w_hid.select(0, k));
    G* hp = hout.template data_ptr<G>();
    for (int64_t i = 0; i < n; ++i) bias_act_row<S, G>(hp + i * H, c.b_hid + k * H, H, S(0));
  }
  // theta = h_NH @ w_out^T + b_out
  const G* top = hk(c, w, c.NH, i0, n).template data_ptr<G>();
  for (int64_t i = 0; i < n; ++i) {
    const G* row = top + i * H;
    for (int64_t o = 0; o < kTheta; ++o) {
      const S* wo = c.w_out_s.data() + o * H;
      S acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < H; ++j) acc += S(ld(row[j])) * wo[j];
      w.theta[i * kTheta + o] = acc + c.b_out[o];
    }
  }
}

template <typename S, typename G>
void run_forward(const Affine<S, G>& c, const S* x, const S* t, S* y, int64_t tile) {
  const int64_t ntiles = (c.M + tile - 1) / tile;
  const S div = S(1.0 + kAffineEps);
  for_each_tile_group(ntiles, ntiles, [&](auto& claim) {
    c10::InferenceMode guard;
    AffineWork<S, G> w(c, tile);
    for (TileGroup grp; claim(grp);)
      for (int64_t ti = grp.first; ti < grp.last; ++ti) {
        const int64_t i0 = ti * tile;
        const int64_t n = std::min(tile, c.M - i0);
        mlp<S, G>(c, w, x, t, i0, n, /*from_saved=*/false);
        for (int64_t i = 0; i < n; ++i) {
          const S* th = w.theta.data() + i * kTheta;
          const S cs = std::cos(th[0]), sn = std::sin(th[0]);
          const S s1 = std::exp(th[1]), s2 = std::exp(th[3]);
          const S px = x[(i0 + i) * 3], py = x[(i0 + i) * 3 + 1];
          S nx, ny;
          if (c.inverse) {
            const S dx = (px - th[2]) / s1, dy = (py - th[4]) / s2;
            nx = cs * dx + sn * dy;
            ny = -sn * dx + cs * dy;
          } else {
            nx = s1 * (cs * px - sn * py) + th[2];
            ny = s2 * (sn * px + cs * py) + th[4];
          }
          S* out = y + (i0 + i) * 3;
          out[0] = nx / div;
          out[1] = ny / div;
          out[2] = x[(i0 + i) * 3 + 2];
        }
      }
  });
}

// Gradient accumulators (type S), one slot per tile group: [groups, ...] each.
struct AffineGrads {
  at::Tensor dw0, db0, dw_hid, db_hid, dw_out, db_out;
};

template <typename S, typename G>
void run_backward(const Affine<S, G>& c, const S* dy, const S* x, const S* t, S* dx, S* dt,
                  AffineGrads& g, int64_t tile) {
  const int64_t ntiles = (c.M + tile - 1) / tile;
  const int64_t E = c.E, H = c.H, NH = c.NH, nf = c.nf;
  const S inv_div = S(1) / S(1.0 + kAffineEps);
  for_each_tile_group(ntiles, g.dw0.size(0), [&](auto& claim) {
    c10::InferenceMode guard;
    AffineWork<S, G> w(c, tile);
    for (TileGroup grp; claim(grp);) {
      const int64_t slot = grp.index;
      at::Tensor dw0 = g.dw0[slot], dw_hid = g.dw_hid[slot];
      S* db0 = g.db0[slot].template data_ptr<S>();
      S* db_hid = g.db_hid[slot].template data_ptr<S>();
      S* dw_out = g.dw_out[slot].template data_ptr<S>();
      S* db_out = g.db_out[slot].template data_ptr<S>();
      for (int64_t ti = grp.first; ti < grp.last; ++ti) {
        const int64_t i0 = ti * tile;
        const int64_t n = std::min(tile, c.M - i0);
        mlp<S, G>(c, w, x, t, i0, n, /*from_saved=*/true);
        // through the map: dx, dy and dtheta
        for (int64_t i = 0; i < n; ++i) {
          const int64_t r = i0 + i;
          const S* th = w.theta.data() + i * kTheta;
          S* dth = w.dtheta.data() + i * kTheta;
          const S cs = std::cos(th[0]), sn = std::sin(th[0]);
          const S s1 = std::exp(th[1]), s2 = std::exp(th[3]);
          const S px = x[r * 3], py = x[r * 3 + 1];
          // the division by 1 + eps
          const S gx = dy[r * 3] * inv_div, gy = dy[r * 3 + 1] * inv_div;
          if (c.inverse) {
            const S ux = (px - th[2]) / s1, uy = (py - th[4]) / s2;
            const S nx = cs * ux + sn * uy, ny = -sn * ux + cs * uy;
            const S gux = gx * cs - gy * sn, guy = gx * sn + gy * cs;
            dth[0] = gx * ny - gy * nx;
            dth[1] = -gux * ux;
            dth[2] = -gux / s1;
            dth[3] = -guy * uy;
            dth[4] = -guy / s2;
            dx[r * 3] = gux / s1;
            dx[r * 3 + 1] = guy / s2;
          } else {
            const S rx = cs * px - sn * py, ry = sn * px + cs * py;
            dth[0] = -gx * s1 * ry + gy * s2 * rx;
            dth[1] = gx * s1 * rx;
            dth[2] = gx;
            dth[3] = gy * s2 * ry;
            dth[4] = gy;
            dx[r * 3] = gx * s1 * cs + gy * s2 * sn;
            dx[r * 3 + 1] = -gx * s1 * sn + gy * s2 * cs;
          }
          dx[r * 3 + 2] = dy[r * 3 + 2];
        }
        // output layer: dW_out, db_out, then d(pre-activation of h_NH)
        at::Tensor dA = w.da.narrow(0, 0, n), dB = w.db.narrow(0, 0, n);
        {
          const G* top = hk(c, w, NH, i0, n).template data_ptr<G>();
          G* da = dA.template data_ptr<G>();
          for (int64_t i = 0; i < n; ++i) {
            const S* dth = w.dtheta.data() + i * kTheta;
            const G* row = top + i * H;
            for (int64_t o = 0; o < kTheta; ++o) {
              db_out[o] += dth[o];
              S* gwo = dw_out + o * H;
              const S d = dth[o];
  #pragma omp simd
              for (int64_t j = 0; j < H; ++j) gwo[j] += d * S(ld(row[j]));
            }
            const S* wo = c.w_out_s.data();
            G* drow = da + i * H;
  #pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              const S gz = dth[0] * wo[j] + dth[1] * wo[H + j] + dth[2] * wo[2 * H + j] +
                           dth[3] * wo[3 * H + j] + dth[4] * wo[4 * H + j];
              st(drow[j], S(ld(row[j])) > S(0) ? gz : S(0));
            }
          }
        }
        // hidden layers, top down: h[k+1] = relu(h[k] @ W_k^T + b_k)
        for (int64_t k = NH - 1; k >= 0; --k) {
          at::Tensor hin = hk(c, w, k, i0, n);
          acc_tn(dw_hid[k], dA, hin, w.gw);
          const G* d = dA.template data_ptr<G>();
          for (int64_t i = 0; i < n; ++i) add_row<S, G>(db_hid + k * H, d + i * H, H);
          at::mm_out(dB, dA, c.w_hid.select(0, k));
          mul_act_grad<S, G>(dB.template data_ptr<G>(), hin.template data_ptr<G>(), n * H, S(0));
          std::swap(dA, dB);
        }
        // first layer: h0 = relu(pe @ w0^T + b0)
        at::Tensor pe = w.pe.narrow(0, 0, n);
        acc_tn(dw0, dA, pe, w.gw);
        {
          const G* d = dA.template data_ptr<G>();
          for (int64_t i = 0; i < n; ++i) add_row<S, G>(db0, d + i * H, H);
        }
        at::Tensor dpe = w.dpe.narrow(0, 0, n);
        at::mm_out(dpe, dA, c.w0);
        // through the encoding: dt, and dz on top of the pass-through gradient
        const G* dp = dpe.template data_ptr<G>();
        for (int64_t i = 0; i < n; ++i) {
          const int64_t r = i0 + i;
          const G* row = dp + i * E;
          const S zv = x[r * 3 + 2];
          S gz = S(ld(row[2 * nf + 1]));
          for (int64_t k = 0; k < nf; ++k) {
            const S f = c.freq[k], a = zv * f;
            gz += f * (std::cos(a) * S(ld(row[2 * k])) - std::sin(a) * S(ld(row[2 * k + 1])));
          }
          dx[r * 3 + 2] += gz;
          dt[r] = S(ld(row[2 * nf]));
        }
      }
    }
  });
}

template <typename S, typename G>
Affine<S, G> make_affine(const AffineWeights& w, int64_t n_freq, bool inverse, int64_t M,
                         const at::Tensor& acts) {
  Affine<S, G> c;
  c.M = M;
  c.H = w.w0.size(0);
  c.E = w.w0.size(1);
  c.NH = w.w_hid.size(0);
  c.nf = n_freq;
  c.inverse = inverse;
  c.freq = pe_frequencies<S>(n_freq);
  c.gtype = c10::CppTypeToScalarType<G>::value;
  c.w0 = w.w0.to(c.gtype).contiguous();
  c.w_hid = w.w_hid.to(c.gtype).contiguous();
  at::Tensor w_out_s = w.w_out.to(c.gtype).to(w.w_out.scalar_type()).contiguous();
  c.w_out_s.assign(w_out_s.data_ptr<S>(), w_out_s.data_ptr<S>() + w_out_s.numel());
  c.b0 = w.b0.data_ptr<S>();
  c.b_hid = w.b_hid.data_ptr<S>();
  c.b_out = w.b_out.data_ptr<S>();
  if (acts.defined() && acts.numel() > 0) {
    c.keep = acts.size(0);
    c.acts = acts;
  }
  return c;
}

// Calls fn(Affine<S, G>&) for x's dtype and the matmul mode.
template <typename Fn>
void with_affine(const at::Tensor& x, bool bf16, const AffineWeights& w, int64_t n_freq,
                 bool inverse, const at::Tensor& acts, Fn&& fn) {
  const int64_t M = x.size(0);
  if (x.scalar_type() == at::kDouble) {
    auto c = make_affine<double, double>(w, n_freq, inverse, M, acts);
    fn(c);
  } else if (bf16) {
    auto c = make_affine<float, at::BFloat16>(w, n_freq, inverse, M, acts);
    fn(c);
  } else {
    auto c = make_affine<float, float>(w, n_freq, inverse, M, acts);
    fn(c);
  }
}

}  // namespace

std::vector<at::Tensor> affine_fwd_cpu(const at::Tensor& x, const at::Tensor& t,
                                       const AffineWeights& w, int64_t n_freq, bool inverse,
                                       int64_t save_hidden, bool bf16, int64_t tile) {
  const int64_t M = x.size(0), H = w.w0.size(0);
  at::Tensor y = at::empty_like(x);
  const at::ScalarType gtype = bf16 ? at::kBFloat16 : x.scalar_type();
  at::Tensor acts = at::empty({save_hidden > 0 ? save_hidden : 0, save_hidden > 0 ? M : 0, H},
                              x.options().dtype(gtype));
  if (M == 0) return {y, acts};
  if (acts.numel() > 0) advise_huge_pages(acts);
  with_affine(x, bf16, w, n_freq, inverse, acts, [&](auto& c) {
    using S = std::remove_cv_t<std::remove_pointer_t<decltype(c.b0)>>;
    run_forward(c, x.data_ptr<S>(), t.data_ptr<S>(), y.data_ptr<S>(), tile);
  });
  return {y, acts};
}

std::vector<at::Tensor> affine_bwd_cpu(const at::Tensor& dy, const at::Tensor& x,
                                       const at::Tensor& t, const at::Tensor& acts,
                                       const AffineWeights& w, int64_t n_freq, bool inverse,
                                       bool bf16, int64_t tile) {
  const int64_t M = x.size(0);
  const int64_t groups = backward_tile_groups((M + tile - 1) / tile);
  auto per_group = [&](const at::Tensor& p) {
    std::vector<int64_t> sz{groups};
    for (auto s : p.sizes()) sz.push_back(s);
    return at::zeros(sz, x.options());
  };
  AffineGrads g{per_group(w.w0),    per_group(w.b0),     per_group(w.w_hid),
                per_group(w.b_hid), per_group(w.w_out), per_group(w.b_out)};
  at::Tensor dx = at::empty_like(x), dt = at::empty_like(t);
  if (M > 0) {
    with_affine(x, bf16, w, n_freq, inverse, acts, [&](auto& c) {
      using S = std::remove_cv_t<std::remove_pointer_t<decltype(c.b0)>>;
      run_backward(c, dy.data_ptr<S>(), x.data_ptr<S>(), t.data_ptr<S>(), dx.data_ptr<S>(),
                   dt.data_ptr<S>(), g, tile);
    });
  }
  return {dx,           dt,           g.dw0.sum(0),    g.db0.sum(0),
          g.dw_hid.sum(0), g.db_hid.sum(0), g.dw_out.sum(0), g.db_out.sum(0)};
}

}  // namespace bijection
}  // namespace omnifast
