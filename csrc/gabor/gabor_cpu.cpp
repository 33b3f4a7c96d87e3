// CPU kernels of the fused GaborNet: one pass over point tiles, every filter, product and
// elementwise step of the network applied to a tile while its activations stay in cache.
//
// Per tile of T points and filter k, the sine argument p = x W_k^T + b_k and the envelope
// argument q = -0.5 gamma_k (|x|^2 + |mu_k|^2 - 2 x mu_k^T) are loops over the D inputs (D = 3
// for the colour network); sin and exp run through ATen's vectorized kernels on the [T, H] tile
// buffers. The hidden and output linears are matrix products on per-thread buffers
// (common/cpu_tile.h). The forward keeps the hidden linears' outputs a_k ([NL, M, H], H values
// per point and linear); the backward recomputes the filters from x and z_k = g_k a_k from them
// (elementwise, no product), then runs the chain rule down the network; the filters' weight gradients are small products with the [T, D] input,
// all weight gradients accumulate in per-thread buffers summed at the end.
//
// bf16 mode: the hidden and output products take bf16 operands (activations, gradients of
// activations, weights) with fp32 accumulation; the filters, biases and every gradient
// accumulator stay fp32, as in omnifast.reference.gabor_net_ref.
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <type_traits>

#include "common/cpu_tile.h"
#include "gabor/gabor.h"

namespace omnifast {
namespace gabor {
namespace {

using namespace cpu_tile;  // NOLINT(build/namespaces)

template <typename S, typename G>
struct Net {
  int64_t M, D, H, NL, O;
  std::vector<S> fwT, muT;  // filter weights and centres transposed, [NL + 1, D, H]
  std::vector<S> mumu;      // |mu_kj|^2, [NL + 1, H]
  const S* fb;
  const S* gamma;
  at::Tensor mu;            // S: [NL + 1, H, D]
  at::Tensor lin_w, out_w;  // G: [NL, H, H], [O, H]
  const S* lin_b;
  const S* out_b;
  at::ScalarType gtype;
};

template <typename S, typename G>
struct Work {
  at::Tensor P, Q, D2, dz;  // S: [T, H]
  at::Tensor g, a;          // S: [NL + 1, T, H] filters, [NL, T, H] linear outputs (layer k + 1)
  at::Tensor z;             // G: [NL + 1, T, H] layer outputs
  at::Tensor mm, da;        // G: [T, H] product output, gradient of a linear's output
  at::Tensor yo, dyo;       // G: [T, O]
  at::Tensor gw;            // G: [max(H, O), H] low-precision weight-gradient product
  at::Tensor dx;            // S: [T, D]
  // per-thread filter gradients: W and mu transposed [NL + 1, D, H], colsum of dL/dd2 [NL + 1, H]
  std::vector<S> gfwT, gmuT, csum;

  Work(const Net<S, G>& c, int64_t T) {
    auto so = at::TensorOptions().dtype(c10::CppTypeToScalarType<S>::value);
    auto go = at::TensorOptions().dtype(c.gtype);
    P = at::empty({T, c.H}, so);
    Q = at::empty({T, c.H}, so);
    D2 = at::empty({T, c.H}, so);
    dz = at::empty({T, c.H}, so);
    g = at::empty({c.NL + 1, T, c.H}, so);
    a = at::empty({c.NL, T, c.H}, so);
    z = at::empty({c.NL + 1, T, c.H}, go);
    mm = at::empty({T, c.H}, go);
    da = at::empty({T, c.H}, go);
    yo = at::empty({T, c.O}, go);
    dyo = at::empty({T, c.O}, go);
    gw = at::empty({std::max(c.H, c.O), c.H}, go);
    dx = at::empty({T, c.D}, so);
    gfwT.assign((c.NL + 1) * c.D * c.H, S(0));
    gmuT.assign((c.NL + 1) * c.D * c.H, S(0));
    csum.assign((c.NL + 1) * c.H, S(0));
  }
};

// P = x W_k^T + b_k, Q = -0.5 gamma_k d2 and (if d2) D2 = |x|^2 + |mu_k|^2 - 2 x mu_k^T for the
// tile's n points x [n, D].
template <typename S, typename G>
OMNIFAST_VECTORIZE void filter_args(const Net<S, G>& c, int64_t k, const S* __restrict x,
                                    int64_t n, S* __restrict P, S* __restrict Q,
                                    S* __restrict D2) {
  const int64_t H = c.H, D = c.D;
  const S* fb = c.fb + k * H;
  const S* gm = c.gamma + k * H;
  const S* mm = c.mumu.data() + k * H;
  for (int64_t i = 0; i < n; ++i) {
    const S* xi = x + i * D;
    S xx = 0;
    for (int64_t d = 0; d < D; ++d) xx += xi[d] * xi[d];
    S* p = P + i * H;
    S* q = Q + i * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      p[j] = fb[j];
      q[j] = 0;
    }
    for (int64_t d = 0; d < D; ++d) {
      const S xd = xi[d];
      const S* fw = c.fwT.data() + (k * D + d) * H;
      const S* mu = c.muT.data() + (k * D + d) * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        p[j] += xd * fw[j];
        q[j] += xd * mu[j];
      }
    }
    if (D2) {
      S* d2 = D2 + i * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const S dd = (xx + mm[j]) - S(2) * q[j];
        d2[j] = dd;
        q[j] = S(-0.5) * dd * gm[j];
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) q[j] = S(-0.5) * ((xx + mm[j]) - S(2) * q[j]) * gm[j];
    }
  }
}

// The tile's forward: g_k and a_k (S) and z_k (G) for every layer; returns z_NL.
template <typename S, typename G>
// `acts` ([NL, M, H], rows from i0, or null): with `from_saved` the linear outputs a_k are read
// from it (no product is recomputed), otherwise they are computed and, if acts is given, stored.
OMNIFAST_VECTORIZE void tile_forward(const Net<S, G>& c, Work<S, G>& w, const S* x, int64_t i0,
                                     int64_t n, S* acts, bool from_saved) {
  const int64_t H = c.H;
  at::Tensor P = w.P.narrow(0, 0, n), Q = w.Q.narrow(0, 0, n);
  for (int64_t k = 0; k <= c.NL; ++k) {
    filter_args<S, G>(c, k, x, n, P.data_ptr<S>(), Q.data_ptr<S>(), nullptr);
    at::sin_(P);
    at::exp_(Q);
    at::Tensor gk = w.g.select(0, k).narrow(0, 0, n);
    at::mul_out(gk, P, Q);
    G* zk = w.z.select(0, k).narrow(0, 0, n).template data_ptr<G>();
    const S* gp = gk.data_ptr<S>();
    if (k == 0) {
#pragma omp simd
      for (int64_t e = 0; e < n * H; ++e) st(zk[e], gp[e]);
      continue;
    }
    S* ap = w.a.select(0, k - 1).narrow(0, 0, n).template data_ptr<S>();
    S* saved = acts ? acts + ((k - 1) * c.M + i0) * H : nullptr;
    if (from_saved) {
      std::copy(saved, saved + n * H, ap);
#pragma omp simd
      for (int64_t e = 0; e < n * H; ++e) st(zk[e], gp[e] * ap[e]);
      continue;
    }
    // a_k = z_{k-1} W^T + b (the product rounded to G, as the reference's linear), z_k = g_k a_k
    at::Tensor mmt = w.mm.narrow(0, 0, n);
    mm_nt(mmt, w.z.select(0, k - 1).narrow(0, 0, n), c.lin_w.select(0, k - 1));
    const G* mp = mmt.template data_ptr<G>();
    const S* lb = c.lin_b + (k - 1) * H;
    for (int64_t i = 0; i < n; ++i) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const S av = S(ld(mp[i * H + j])) + lb[j];
        ap[i * H + j] = av;
        st(zk[i * H + j], gp[i * H + j] * av);
      }
    }
    if (saved) std::copy(ap, ap + n * H, saved);
  }
}

template <typename S, typename G>
void run_forward(const Net<S, G>& c, const S* x, S* y, S* acts, int64_t tile) {
  const int64_t ntiles = (c.M + tile - 1) / tile;
  for_each_tile_group(ntiles, ntiles, [&](auto& claim) {
    c10::InferenceMode guard;
    Work<S, G> w(c, tile);
    for (TileGroup grp; claim(grp);)
      for (int64_t ti = grp.first; ti < grp.last; ++ti) {
        const int64_t i0 = ti * tile;
        const int64_t n = std::min(tile, c.M - i0);
        tile_forward<S, G>(c, w, x + i0 * c.D, i0, n, acts, /*from_saved=*/false);
        at::Tensor yo = w.yo.narrow(0, 0, n);
        mm_nt(yo, w.z.select(0, c.NL).narrow(0, 0, n), c.out_w);
        const G* yp = yo.template data_ptr<G>();
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t o = 0; o < c.O; ++o) {
            y[(i0 + i) * c.O + o] = S(ld(yp[i * c.O + o])) + c.out_b[o];
          }
        }
      }
  });
}

struct Grads {
  at::Tensor dfw, dfb, dmu, dgamma, dlin_w, dlin_b, dout_w, dout_b;  // [groups, ...], type S
};

// Backward of filter k for the tile, given dg = dL/dg_k [n, H] (S): adds the tile's input
// gradient to w.dx and accumulates the filter's weight gradients, those of W_k and mu_k
// transposed ([D, H], in w.gfwT / w.gmuT, folded into [H, D] once per tile group) so that every
// reduction runs along a row of H values while it is in L1.
template <typename S, typename G>
OMNIFAST_VECTORIZE void filter_bwd(const Net<S, G>& c, Work<S, G>& w, int64_t k, const S* x,
                                   int64_t n, const S* dg, S* dfb, S* dgamma) {
  const int64_t H = c.H, D = c.D;
  at::Tensor P = w.P.narrow(0, 0, n), Q = w.Q.narrow(0, 0, n);
  filter_args<S, G>(c, k, x, n, P.data_ptr<S>(), Q.data_ptr<S>(), w.D2.template data_ptr<S>());
  at::cos_(P);
  at::exp_(Q);
  S* dp = P.data_ptr<S>();   // cos(p), then dL/dp
  S* dd2 = Q.data_ptr<S>();  // exp(q), then dL/dd2
  const S* d2 = w.D2.template data_ptr<S>();
  const S* g = w.g.select(0, k).template data_ptr<S>();
  const S* gm = c.gamma + k * H;
  S* cs = w.csum.data() + k * H;
  S* dx = w.dx.template data_ptr<S>();
  for (int64_t i = 0; i < n; ++i) {
    S rsum = 0;
    S* dpr = dp + i * H;
    S* ddr = dd2 + i * H;
    const S* gr = g + i * H;
    const S* dgr = dg + i * H;
    const S* d2r = d2 + i * H;
#pragma omp simd reduction(+ : rsum)
    for (int64_t j = 0; j < H; ++j) {
      const S gv = dgr[j];
      const S dq = gv * gr[j];  // d/dq of sin(p) exp(q) is the filter's value
      const S dpv = gv * dpr[j] * ddr[j];
      dpr[j] = dpv;
      dgamma[j] += dq * (S(-0.5) * d2r[j]);
      const S v = dq * S(-0.5) * gm[j];
      ddr[j] = v;
      cs[j] += v;
      dfb[j] += dpv;
      rsum += v;
    }
    // p = x W^T + b: dW += dp^T x, dx += dp W; d2 = |x|^2 + |mu|^2 - 2 x mu^T:
    // dx += 2 x rowsum(dd2) - 2 dd2 mu, dmu = 2 mu colsum(dd2) - 2 dd2^T x
    for (int64_t d = 0; d < D; ++d) {
      const S xd = x[i * D + d];
      S* afw = w.gfwT.data() + (k * D + d) * H;
      S* amu = w.gmuT.data() + (k * D + d) * H;
      const S* fw = c.fwT.data() + (k * D + d) * H;
      const S* mu = c.muT.data() + (k * D + d) * H;
      S sa = 0, sb = 0;
#pragma omp simd reduction(+ : sa, sb)
      for (int64_t j = 0; j < H; ++j) {
        afw[j] += dpr[j] * xd;
        amu[j] += ddr[j] * xd;
        sa += dpr[j] * fw[j];
        sb += ddr[j] * mu[j];
      }
      dx[i * D + d] += sa + S(2) * xd * rsum - S(2) * sb;
    }
  }
}

template <typename S, typename G>
OMNIFAST_VECTORIZE void run_backward(const Net<S, G>& c, const S* dy, const S* x, S* acts,
                                     S* dx, Grads& gr, int64_t tile) {
  const int64_t ntiles = (c.M + tile - 1) / tile;
  const int64_t H = c.H, D = c.D, O = c.O, NL = c.NL;
  for_each_tile_group(ntiles, gr.dfw.size(0), [&](auto& claim) {
    c10::InferenceMode guard;
    Work<S, G> w(c, tile);
    for (TileGroup grp; claim(grp);) {
      const int64_t slot = grp.index;
      at::Tensor dfw = gr.dfw[slot], dmu = gr.dmu[slot], dlin_w = gr.dlin_w[slot];
      at::Tensor dout_w = gr.dout_w[slot];
      S* dfb = gr.dfb[slot].template data_ptr<S>();
      S* dgamma = gr.dgamma[slot].template data_ptr<S>();
      S* dlin_b = gr.dlin_b[slot].template data_ptr<S>();
      S* dout_b = gr.dout_b[slot].template data_ptr<S>();
      std::fill(w.gfwT.begin(), w.gfwT.end(), S(0));
      std::fill(w.gmuT.begin(), w.gmuT.end(), S(0));
      std::fill(w.csum.begin(), w.csum.end(), S(0));
      for (int64_t ti = grp.first; ti < grp.last; ++ti) {
        const int64_t i0 = ti * tile;
        const int64_t n = std::min(tile, c.M - i0);
        const S* xp = x + i0 * D;
        tile_forward<S, G>(c, w, xp, i0, n, acts, /*from_saved=*/true);
        w.dx.narrow(0, 0, n).zero_();
        // output linear
        at::Tensor dyo = w.dyo.narrow(0, 0, n);
        {
          G* dp = dyo.template data_ptr<G>();
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t o = 0; o < O; ++o) {
              const S v = dy[(i0 + i) * O + o];
              st(dp[i * O + o], v);
              dout_b[o] += v;
            }
          }
        }
        acc_tn(dout_w, dyo, w.z.select(0, NL).narrow(0, 0, n), w.gw);
        at::Tensor mmt = w.mm.narrow(0, 0, n);
        at::mm_out(mmt, dyo, c.out_w);
        S* dz = w.dz.template data_ptr<S>();
        {
          const G* mp = mmt.template data_ptr<G>();
  #pragma omp simd
          for (int64_t e = 0; e < n * H; ++e) dz[e] = S(ld(mp[e]));
        }
        for (int64_t k = NL; k >= 1; --k) {
          // z_k = g_k * a_k: da = dz g_k (to the linear), dz <- dz a_k (to the filter)
          const S* g = w.g.select(0, k).template data_ptr<S>();
          const S* a = w.a.select(0, k - 1).template data_ptr<S>();
          at::Tensor da = w.da.narrow(0, 0, n);
          G* dap = da.template data_ptr<G>();
          S* lb = dlin_b + (k - 1) * H;
          for (int64_t i = 0; i < n; ++i) {
  #pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
              const int64_t e = i * H + j;
              const S v = dz[e] * g[e];
              st(dap[e], v);
              lb[j] += v;  // the bias is added after the product, in S
              dz[e] *= a[e];
            }
          }
          acc_tn(dlin_w[k - 1], da, w.z.select(0, k - 1).narrow(0, 0, n), w.gw);
          filter_bwd<S, G>(c, w, k, xp, n, dz, dfb + k * H, dgamma + k * H);
          at::mm_out(mmt, da, c.lin_w.select(0, k - 1));
          const G* mp = mmt.template data_ptr<G>();
  #pragma omp simd
          for (int64_t e = 0; e < n * H; ++e) dz[e] = S(ld(mp[e]));
        }
        filter_bwd<S, G>(c, w, 0, xp, n, dz, dfb, dgamma);
        const S* dxt = w.dx.template data_ptr<S>();
        std::copy(dxt, dxt + n * D, dx + i0 * D);
      }
      // the filters' W and mu gradients, back to [NL + 1, H, D]
      S* gfw = dfw.data_ptr<S>();
      S* gmu = dmu.data_ptr<S>();
      const S* mu = c.mu.template data_ptr<S>();
      for (int64_t k = 0; k <= NL; ++k) {
        for (int64_t j = 0; j < H; ++j) {
          for (int64_t d = 0; d < D; ++d) {
            const int64_t e = (k * H + j) * D + d, t = (k * D + d) * H + j;
            gfw[e] += w.gfwT[t];
            gmu[e] += S(2) * mu[e] * w.csum[k * H + j] - S(2) * w.gmuT[t];
          }
        }
      }
    }
  });
}

template <typename S, typename G>
Net<S, G> make_net(const GaborWeights& w, int64_t M) {
  Net<S, G> c;
  c.M = M;
  c.H = w.filt_w.size(1);
  c.D = w.filt_w.size(2);
  c.NL = w.lin_w.size(0);
  c.O = w.out_w.size(0);
  c.gtype = c10::CppTypeToScalarType<G>::value;
  c.mu = w.mu;
  at::Tensor fwT = w.filt_w.transpose(1, 2).contiguous(), muT = w.mu.transpose(1, 2).contiguous();
  c.fwT.assign(fwT.data_ptr<S>(), fwT.data_ptr<S>() + fwT.numel());
  c.muT.assign(muT.data_ptr<S>(), muT.data_ptr<S>() + muT.numel());
  at::Tensor mumu = (w.mu * w.mu).sum(-1).contiguous();
  c.mumu.assign(mumu.data_ptr<S>(), mumu.data_ptr<S>() + mumu.numel());
  c.fb = w.filt_b.data_ptr<S>();
  c.gamma = w.gamma.data_ptr<S>();
  c.lin_w = w.lin_w.to(c.gtype).contiguous();
  c.out_w = w.out_w.to(c.gtype).contiguous();
  c.lin_b = w.lin_b.data_ptr<S>();
  c.out_b = w.out_b.data_ptr<S>();
  return c;
}

template <typename Fn>
void with_net(const at::Tensor& x, bool bf16, const GaborWeights& w, Fn&& fn) {
  const int64_t M = x.size(0);
  if (x.scalar_type() == at::kDouble) {
    auto c = make_net<double, double>(w, M);
    fn(c);
  } else if (bf16) {
    auto c = make_net<float, at::BFloat16>(w, M);
    fn(c);
  } else {
    auto c = make_net<float, float>(w, M);
    fn(c);
  }
}

}  // namespace

std::vector<at::Tensor> gabor_net_fwd_cpu(const at::Tensor& x, const GaborWeights& w,
                                          bool save, bool bf16, int64_t tile) {
  const int64_t M = x.size(0), NL = w.lin_w.size(0), H = w.filt_w.size(1);
  at::Tensor y = at::empty({M, w.out_w.size(0)}, x.options());
  at::Tensor acts = save ? at::empty({NL, M, H}, x.options()) : at::empty({0}, x.options());
  if (M == 0) return {y, acts};
  if (acts.numel() > 0) advise_huge_pages(acts);
  with_net(x, bf16, w, [&](auto& c) {
    using S = std::remove_cv_t<std::remove_pointer_t<decltype(c.fb)>>;
    run_forward(c, x.data_ptr<S>(), y.data_ptr<S>(),
                acts.numel() > 0 ? acts.data_ptr<S>() : nullptr, tile);
  });
  return {y, acts};
}

std::vector<at::Tensor> gabor_net_bwd_cpu(const at::Tensor& dy, const at::Tensor& x,
                                          const at::Tensor& acts, const GaborWeights& w,
                                          bool bf16, int64_t tile) {
  const int64_t groups = backward_tile_groups((x.size(0) + tile - 1) / tile);
  auto per_group = [&](const at::Tensor& p) {
    std::vector<int64_t> sz{groups};
    for (auto s : p.sizes()) sz.push_back(s);
    return at::zeros(sz, x.options());
  };
  Grads g{per_group(w.filt_w), per_group(w.filt_b), per_group(w.mu),    per_group(w.gamma),
          per_group(w.lin_w),  per_group(w.lin_b),  per_group(w.out_w), per_group(w.out_b)};
  at::Tensor dx = at::empty_like(x);
  if (x.size(0) > 0) {
    with_net(x, bf16, w, [&](auto& c) {
      using S = std::remove_cv_t<std::remove_pointer_t<decltype(c.fb)>>;
      run_backward(c, dy.data_ptr<S>(), x.data_ptr<S>(),
                   acts.numel() > 0 ? acts.data_ptr<S>() : nullptr, dx.data_ptr<S>(), g, tile);
    });
  }
  return {dx,              g.dfw.sum(0),    g.dfb.sum(0),    g.dmu.sum(0),   g.dgamma.sum(0),
          g.dlin_w.sum(0), g.dlin_b.sum(0), g.dout_w.sum(0), g.dout_b.sum(0)};
}

}  // namespace gabor
}  // namespace omnifast
