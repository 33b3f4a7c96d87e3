// CPU kernels of the fused coupling stack: one pass over point tiles, every layer of the stack
// applied to a tile while its activations stay in the core's cache.
//
// Per tile of T points and per layer: the positional encoding is written into a [T, E] buffer,
// the four matrix products go through ATen (MKL for fp32/fp64, oneDNN for bf16) on per-thread
// buffers, and every elementwise step (bias, frame bias, LeakyReLU, clamp, exp, coordinate
// update) is a loop over the buffer the product just wrote. Threads take contiguous ranges of
// tiles; each thread's products run single-threaded inside the parallel region.
//
// Backward recomputes a layer's activations from its saved input coordinates (3 numbers per
// point), then backpropagates through it; weight gradients accumulate in per-thread buffers
// that are summed at the end, frame-bias gradients are scattered by frame index.
//
// bf16 mode: the matrix-product operands (encoding, activations, gradients of activations,
// weights) are bf16 and the products accumulate in fp32 inside oneDNN; biases, the coordinate
// update and all gradient accumulators stay fp32. This mirrors omnifast.reference.linear's
// "bf16" precision.
#include "bijection/bijection.h"
#include "common/cpu_tile.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace omnifast {
namespace bijection {
namespace {

using namespace cpu_tile;  // NOLINT(build/namespaces)

// Phase timers of the CPU kernels, on when OMNIFAST_BIJ_PROFILE is set: per thread, the time
// spent in the matrix products of the (re)computed forward, in its elementwise work, in the
// weight-gradient and input-gradient products of the backward and in the backward's elementwise
// work; printed to stderr after every call. Off, a timer costs one predictable branch.
enum Phase { kRmm, kRel, kWmm, kXmm, kBel, kNPhase };
const char* const kPhaseName[] = {"fwd mm", "fwd elem", "dW mm", "dX mm", "bwd elem"};
constexpr int64_t kMaxProfThreads = 16;
double g_phase[kMaxProfThreads][kNPhase];
bool prof_on() {
  static const bool on = std::getenv("OMNIFAST_BIJ_PROFILE") != nullptr;
  return on;
}
struct Lap {
  int64_t tid;
  std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
  void operator()(int ph) {
    if (!prof_on() || tid >= kMaxProfThreads) return;
    const auto now = std::chrono::steady_clock::now();
    g_phase[tid][ph] += std::chrono::duration<double>(now - t).count();
    t = now;
  }
};

constexpr double kSClamp = 8.0;
constexpr double kSlope = 0.01;


// The encoding rows [u_a, u_b, sin(w u_a), cos(w u_a), sin(w u_b), cos(w u_b)] of n points.
template <typename S, typename G>
OMNIFAST_VECTORIZE void encode(const S* __restrict xc, int64_t a, int64_t b,
                               const S* __restrict freq, int64_t nf, G* __restrict pe,
                               int64_t n, int64_t E) {
  for (int64_t i = 0; i < n; ++i) {
    const S ua = xc[i * 3 + a], ub = xc[i * 3 + b];
    G* row = pe + i * E;
    st(row[0], ua);
    st(row[1], ub);
    for (int64_t k = 0; k < nf; ++k) {
      const S aa = ua * freq[k], ab = ub * freq[k];
      st(row[2 + k], S(std::sin(aa)));
      st(row[2 + nf + k], S(std::cos(aa)));
      st(row[2 + 2 * nf + k], S(std::sin(ab)));
      st(row[2 + 3 * nf + k], S(std::cos(ab)));
    }
  }
}

// Backward of the encoding: dxy[:, a] += d pe / d u_a . dpe, likewise for b.
template <typename S, typename G>
OMNIFAST_VECTORIZE void encode_grad(const G* __restrict dpe, const S* __restrict xc, int64_t a,
                                    int64_t b, const S* __restrict freq, int64_t nf,
                                    S* __restrict dxy, int64_t n, int64_t E) {
  for (int64_t i = 0; i < n; ++i) {
    const G* row = dpe + i * E;
    const S ua = xc[i * 3 + a], ub = xc[i * 3 + b];
    S ga = S(ld(row[0])), gb = S(ld(row[1]));
    for (int64_t k = 0; k < nf; ++k) {
      const S f = freq[k];
      const S aa = ua * f, ab = ub * f;
      ga += f * (std::cos(aa) * S(ld(row[2 + k])) - std::sin(aa) * S(ld(row[2 + nf + k])));
      gb += f * (std::cos(ab) * S(ld(row[2 + 2 * nf + k])) -
                 std::sin(ab) * S(ld(row[2 + 3 * nf + k])));
    }
    dxy[i * 3 + a] += ga;
    dxy[i * 3 + b] += gb;
  }
}

// (s, t) = z @ [w_s, w_t]^T + (b_s, b_t) for n rows of width H.
template <typename S, typename G>
OMNIFAST_VECTORIZE void out_layer_fwd(const G* __restrict z, const S* __restrict ws,
                                      const S* __restrict wt, S bs, S bt, S* __restrict s_out,
                                      S* __restrict t_out, int64_t n, int64_t H) {
  for (int64_t i = 0; i < n; ++i) {
    const G* row = z + i * H;
    S s = 0, t = 0;
#pragma omp simd reduction(+ : s, t)
    for (int64_t j = 0; j < H; ++j) {
      const S v = S(ld(row[j]));
      s += v * ws[j];
      t += v * wt[j];
    }
    s_out[i] = s + bs;
    t_out[i] = t + bt;
  }
}

// Output layer backward for one point: dW_out rows += (ds, dt) * z, and
// d[j] = (ds w_s[j] + dt w_t[j]) * leaky'(z[j]).
template <typename S, typename G>
OMNIFAST_VECTORIZE void out_layer_bwd_row(const G* __restrict z, const S* __restrict ws,
                                          const S* __restrict wt, S* __restrict gws,
                                          S* __restrict gwt, G* __restrict d, S ds, S dt,
                                          int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const S v = S(ld(z[j]));
    gws[j] += ds * v;
    gwt[j] += dt * v;
    const S gz = ds * ws[j] + dt * wt[j];
    st(d[j], v > S(0) ? gz : gz * S(kSlope));
  }
}

template <typename S, typename G>
struct Stack {
  // problem
  int64_t M, F, L, E, P, H, NH, nf;
  bool inverse;
  std::vector<int64_t> coords;
  std::vector<S> freq;
  const int64_t* fidx;
  // weights in the product dtype G
  at::Tensor proj_w, w_in_h, w_hid, w_out_g;
  // fp pointers (S) for biases and the output layer
  const S* proj_b;
  const S* frame_bias;
  const S* b_hid;
  const S* b_out;
  std::vector<S> w_out_s;  // w_out rounded through G, [L, 2, H]
  at::ScalarType gtype;
  // saved activations: the top `keep` hidden activations z[NH + 1 - keep .. NH] of every layer,
  // [L, keep, M, H] in G (undefined when keep == 0)
  int64_t keep = 0;
  at::Tensor acts;

  at::Tensor pw(int64_t l) const { return proj_w.select(0, l); }
  at::Tensor wi(int64_t l) const { return w_in_h.select(0, l); }
  at::Tensor wh(int64_t k, int64_t l) const { return w_hid.select(0, k).select(0, l); }
  // index of the first saved hidden activation (NH + 1 when none is saved)
  int64_t first_kept() const { return NH + 1 - keep; }
};

// Per-thread scratch for one tile.
template <typename S, typename G>
struct Work {
  at::Tensor pe, h0, z;  // G: [T, E], [T, P], [NH + 1, T, H]
  at::Tensor da, db;     // G: [T, max(H, P)] gradient buffers
  at::Tensor dpe;        // G: [T, E]
  at::Tensor gw;         // G: [max(H, P), max(H, P, E)] bf16 weight-gradient product
  std::vector<S> xc, sr, tt, dxy, dst;

  Work(const Stack<S, G>& c, int64_t T) {
    auto opt = at::TensorOptions().dtype(c.gtype);
    const int64_t W = std::max(c.H, c.P);
    pe = at::empty({T, c.E}, opt);
    h0 = at::empty({T, c.P}, opt);
    z = at::empty({c.NH + 1, T, c.H}, opt);
    da = at::empty({T, W}, opt);
    db = at::empty({T, W}, opt);
    dpe = at::empty({T, c.E}, opt);
    gw = at::empty({W, std::max(W, c.E)}, opt);
    xc.resize(T * 3);
    sr.resize(T);
    tt.resize(T);
    dxy.resize(T * 3);
    dst.resize(T * 2);
  }
  at::Tensor rows(const at::Tensor& b, int64_t n, int64_t cols) const {
    return b.view({-1}).narrow(0, 0, n * cols).view({n, cols});
  }
  at::Tensor zk(int64_t k, int64_t n, int64_t H) const { return z.select(0, k).narrow(0, 0, n); }
};

// Hidden activation k of layer l for the tile's rows: in the saved buffer for the top c.keep
// ones, else in the work buffer.
template <typename S, typename G>
at::Tensor zt(const Stack<S, G>& c, const Work<S, G>& w, int64_t l, int64_t k, int64_t i0,
              int64_t n) {
  if (k >= c.first_kept()) {
    return c.acts.select(0, l).select(0, k - c.first_kept()).narrow(0, i0, n);
  }
  return w.zk(k, n, c.H);
}

// The layer's network on a tile: from input coordinates xc (n x 3) to s_raw, t; the encoding,
// projection and hidden activations are left in the work buffers (the top c.keep activations in
// c.acts).
// `from_saved`: the top c.keep activations are already in c.acts (backward): they are read, not
// recomputed. Otherwise every activation is computed and the top c.keep are written to c.acts.
template <typename S, typename G>
void layer_net(const Stack<S, G>& c, Work<S, G>& w, int64_t l, int64_t i0, int64_t n,
               Lap* lap = nullptr, bool from_saved = false) {
  auto L_ = [&](int ph) { if (lap) (*lap)(ph); };
  const int64_t last = from_saved ? c.first_kept() : c.NH + 1;  // activations computed: [0, last)
  const int64_t s_idx = c.coords[l];
  const int64_t a = s_idx == 0 ? 1 : 0;
  const int64_t b = s_idx == 2 ? 1 : 2;
  const int64_t E = c.E, P = c.P, H = c.H, nf = c.nf;
  // positional encoding [u_a, u_b, sin(w u_a), cos(w u_a), sin(w u_b), cos(w u_b)]
  encode<S, G>(w.xc.data(), a, b, c.freq.data(), nf, w.pe.template data_ptr<G>(), n, E);
  // h0 = leaky(pe @ proj_w^T + proj_b)
  at::Tensor pe_t = w.pe.narrow(0, 0, n);
  at::Tensor h0_t = w.h0.narrow(0, 0, n);
  L_(kRel);
  mm_nt(h0_t, pe_t, c.pw(l));
  L_(kRmm);
  {
    G* h = h0_t.template data_ptr<G>();
    const S* pb = c.proj_b + l * P;
    for (int64_t i = 0; i < n; ++i) bias_act_row<S, G>(h + i * P, pb, P, S(kSlope));
  }
  // z0 = leaky(h0 @ w_in_h^T + frame_bias[frame])
  if (last > 0) {
    at::Tensor z0 = zt(c, w, l, 0, i0, n);
    L_(kRel);
    mm_nt(z0, h0_t, c.wi(l));
    L_(kRmm);
    G* zp = z0.template data_ptr<G>();
    for (int64_t i = 0; i < n; ++i) {
      const S* fb = c.frame_bias + (c.fidx[i0 + i] * c.L + l) * H;
      bias_act_row<S, G>(zp + i * H, fb, H, S(kSlope));
    }
  }
  for (int64_t k = 0; k + 1 < last; ++k) {
    at::Tensor zin = zt(c, w, l, k, i0, n);
    at::Tensor zout = zt(c, w, l, k + 1, i0, n);
    L_(kRel);
    mm_nt(zout, zin, c.wh(k, l));
    L_(kRmm);
    G* zp = zout.template data_ptr<G>();
    const S* bh = c.b_hid + (k * c.L + l) * H;
    for (int64_t i = 0; i < n; ++i) bias_act_row<S, G>(zp + i * H, bh, H, S(kSlope));
  }
  // (s, t) = z_last @ w_out^T + b_out
  const S* ws = c.w_out_s.data() + l * 2 * H;
  out_layer_fwd<S, G>(zt(c, w, l, c.NH, i0, n).template data_ptr<G>(), ws, ws + H, c.b_out[l * 2],
                      c.b_out[l * 2 + 1], w.sr.data(), w.tt.data(), n, H);
  L_(kRel);
}

template <typename S>
inline S clamp_s(S s) {
  return std::min(std::max(s, S(-kSClamp)), S(kSClamp));
}

template <typename S, typename G>
void run_forward(const Stack<S, G>& c, const S* x, S* y, S* saved, int64_t tile) {
  const int64_t ntiles = (c.M + tile - 1) / tile;
  for_each_tile_group(ntiles, ntiles, [&](auto& claim) {
    c10::InferenceMode guard;
    Work<S, G> w(c, tile);
    Lap lap{claim.thread};
    for (TileGroup grp; claim(grp);)
      for (int64_t ti = grp.first; ti < grp.last; ++ti) {
        const int64_t i0 = ti * tile;
        const int64_t n = std::min(tile, c.M - i0);
        std::copy(x + i0 * 3, x + (i0 + n) * 3, w.xc.begin());
        for (int64_t step = 0; step < c.L; ++step) {
          const int64_t l = c.inverse ? c.L - 1 - step : step;
          if (saved) std::copy(w.xc.begin(), w.xc.begin() + n * 3, saved + (l * c.M + i0) * 3);
          layer_net<S, G>(c, w, l, i0, n, &lap);
          const int64_t si = c.coords[l];
          for (int64_t i = 0; i < n; ++i) {
            const S s = clamp_s(w.sr[i]);
            S& v = w.xc[i * 3 + si];
            v = c.inverse ? v * std::exp(s) + w.tt[i] : (v - w.tt[i]) * std::exp(-s);
          }
        }
        std::copy(w.xc.begin(), w.xc.begin() + n * 3, y + i0 * 3);
      }
  });
}

// Gradient accumulators (type S), all layers, one slot per tile group.
struct Grads {
  at::Tensor dfb, dproj_w, dproj_b, dw_in_h, dw_hid, db_hid, dw_out, db_out;  // [groups, ...]
};

template <typename S, typename G>
void run_backward(const Stack<S, G>& c, const S* dy, const S* saved, S* dx, Grads& g,
                  int64_t tile) {
  const int64_t ntiles = (c.M + tile - 1) / tile;
  const int64_t L = c.L, E = c.E, P = c.P, H = c.H, NH = c.NH, nf = c.nf;
  for_each_tile_group(ntiles, g.dfb.size(0), [&](auto& claim) {
    c10::InferenceMode guard;
    Work<S, G> w(c, tile);
    Lap lap{claim.thread};
    for (TileGroup grp; claim(grp);) {
      const int64_t slot = grp.index;
      at::Tensor dproj_w = g.dproj_w[slot], dw_in_h = g.dw_in_h[slot], dw_hid = g.dw_hid[slot];
      S* dfb = g.dfb[slot].template data_ptr<S>();
      S* dproj_b = g.dproj_b[slot].template data_ptr<S>();
      S* db_hid = g.db_hid[slot].template data_ptr<S>();
      S* dw_out = g.dw_out[slot].template data_ptr<S>();
      S* db_out = g.db_out[slot].template data_ptr<S>();
      for (int64_t ti = grp.first; ti < grp.last; ++ti) {
        const int64_t i0 = ti * tile;
        const int64_t n = std::min(tile, c.M - i0);
        std::copy(dy + i0 * 3, dy + (i0 + n) * 3, w.dxy.begin());
        for (int64_t step = 0; step < L; ++step) {
          // layers in the reverse of the order they were applied
          const int64_t l = c.inverse ? step : L - 1 - step;
          const int64_t si = c.coords[l];
          const int64_t a = si == 0 ? 1 : 0;
          const int64_t b = si == 2 ? 1 : 2;
          std::copy(saved + (l * c.M + i0) * 3, saved + (l * c.M + i0 + n) * 3, w.xc.begin());
          lap(kBel);
          layer_net<S, G>(c, w, l, i0, n, &lap, /*from_saved=*/true);
          // through the coordinate update
          for (int64_t i = 0; i < n; ++i) {
            const S sraw = w.sr[i];
            const S s = clamp_s(sraw);
            const S gy = w.dxy[i * 3 + si];
            const S xs = w.xc[i * 3 + si];
            S ds, dt;
            if (c.inverse) {
              const S e = std::exp(s);
              w.dxy[i * 3 + si] = gy * e;
              dt = gy;
              ds = gy * xs * e;
            } else {
              const S e = std::exp(-s);
              const S yv = (xs - w.tt[i]) * e;
              w.dxy[i * 3 + si] = gy * e;
              dt = -gy * e;
              ds = -gy * yv;
            }
            const bool pass = sraw >= S(-kSClamp) && sraw <= S(kSClamp);
            w.dst[i * 2] = pass ? ds : S(0);
            w.dst[i * 2 + 1] = dt;
          }
          // output layer: dW_out, db_out, then d(pre-activation of z_last)
          {
            const G* zl = zt(c, w, l, NH, i0, n).template data_ptr<G>();
            const S* ws = c.w_out_s.data() + l * 2 * H;
            const S* wt = ws + H;
            S* gws = dw_out + l * 2 * H;
            S* gwt = gws + H;
            G* da = w.da.template data_ptr<G>();
            S sb = 0, tb = 0;
            for (int64_t i = 0; i < n; ++i) {
              const S ds = w.dst[i * 2], dt = w.dst[i * 2 + 1];
              sb += ds;
              tb += dt;
              out_layer_bwd_row<S, G>(zl + i * H, ws, wt, gws, gwt, da + i * H, ds, dt, H);
            }
            db_out[l * 2] += sb;
            db_out[l * 2 + 1] += tb;
          }
          // hidden layers, top down: z[k+1] = leaky(z[k] @ W_k^T + b_k)
          at::Tensor dA = w.rows(w.da, n, H), dB = w.rows(w.db, n, H);
          for (int64_t k = NH - 1; k >= 0; --k) {
            at::Tensor zin = zt(c, w, l, k, i0, n);
            lap(kBel);
            acc_tn(dw_hid[k][l], dA, zin, w.gw);
            lap(kWmm);
            {
              const G* d = dA.template data_ptr<G>();
              S* acc = db_hid + (k * L + l) * H;
              for (int64_t i = 0; i < n; ++i) add_row<S, G>(acc, d + i * H, H);
            }
            lap(kBel);
            at::mm_out(dB, dA, c.wh(k, l));
            lap(kXmm);
            G* d = dB.template data_ptr<G>();
            const G* zp = zin.template data_ptr<G>();
            mul_act_grad<S, G>(d, zp, n * H, S(kSlope));
            std::swap(dA, dB);
          }
          // first layer: z0 = leaky(h0 @ w_in_h^T + frame_bias[frame])
          at::Tensor h0_t = w.h0.narrow(0, 0, n);
          lap(kBel);
          acc_tn(dw_in_h[l], dA, h0_t, w.gw);
          lap(kWmm);
          {
            const G* d = dA.template data_ptr<G>();
            for (int64_t i = 0; i < n; ++i) {
              add_row<S, G>(dfb + (c.fidx[i0 + i] * L + l) * H, d + i * H, H);
            }
          }
          at::Tensor dHt = (dA.data_ptr() == w.da.data_ptr()) ? w.rows(w.db, n, P)
                                                               : w.rows(w.da, n, P);
          lap(kBel);
          at::mm_out(dHt, dA, c.wi(l));
          lap(kXmm);
          {
            G* d = dHt.template data_ptr<G>();
            const G* hp = h0_t.template data_ptr<G>();
            S* acc = dproj_b + l * P;
            mul_act_grad<S, G>(d, hp, n * P, S(kSlope));
            for (int64_t i = 0; i < n; ++i) add_row<S, G>(acc, d + i * P, P);
          }
          at::Tensor pe_t = w.pe.narrow(0, 0, n);
          lap(kBel);
          acc_tn(dproj_w[l], dHt, pe_t, w.gw);
          lap(kWmm);
          at::Tensor dpe = w.dpe.narrow(0, 0, n);
          at::mm_out(dpe, dHt, c.pw(l));
          lap(kXmm);
          {
            encode_grad<S, G>(dpe.template data_ptr<G>(), w.xc.data(), a, b, c.freq.data(), nf,
                              w.dxy.data(), n, E);
          }
        }
        std::copy(w.dxy.begin(), w.dxy.begin() + n * 3, dx + i0 * 3);
      }
    }
    lap(kBel);
  });
}

template <typename S, typename G>
Stack<S, G> make_stack(const at::Tensor& frame_idx, const StackWeights& w,
                       const std::vector<int64_t>& coords, int64_t n_freq, bool inverse,
                       int64_t M, std::vector<at::Tensor>& keep) {
  Stack<S, G> c;
  c.M = M;
  c.F = w.frame_bias.size(0);
  c.L = w.proj_w.size(0);
  c.P = w.proj_w.size(1);
  c.E = w.proj_w.size(2);
  c.H = w.w_in_h.size(1);
  c.NH = w.w_hid.size(0);
  c.nf = n_freq;
  c.inverse = inverse;
  c.coords = coords;
  c.freq = pe_frequencies<S>(n_freq);
  c.fidx = frame_idx.data_ptr<int64_t>();
  c.gtype = c10::CppTypeToScalarType<G>::value;
  c.proj_w = w.proj_w.to(c.gtype).contiguous();
  c.w_in_h = w.w_in_h.to(c.gtype).contiguous();
  c.w_hid = w.w_hid.to(c.gtype).contiguous();
  at::Tensor w_out_s = w.w_out.to(c.gtype).to(w.w_out.scalar_type()).contiguous();
  c.w_out_s.assign(w_out_s.data_ptr<S>(), w_out_s.data_ptr<S>() + w_out_s.numel());
  c.proj_b = w.proj_b.data_ptr<S>();
  c.frame_bias = w.frame_bias.data_ptr<S>();
  c.b_hid = w.b_hid.data_ptr<S>();
  c.b_out = w.b_out.data_ptr<S>();
  keep = {c.proj_w, c.w_in_h, c.w_hid};
  return c;
}

}  // namespace

namespace {

void print_profile(const char* what, int64_t M, double wall_s, int64_t nt) {
  std::fprintf(stderr, "coupling_stack %s M=%ld: %.1f ms\n", what, long(M), wall_s * 1e3);
  for (int64_t t = 0; t < std::min<int64_t>(nt, kMaxProfThreads); ++t) {
    std::fprintf(stderr, "  thread %ld:", long(t));
    for (int p = 0; p < kNPhase; ++p) {
      std::fprintf(stderr, " %s %.1f ms;", kPhaseName[p], g_phase[t][p] * 1e3);
    }
    std::fprintf(stderr, "\n");
  }
}

// Calls fn(Stack<S, G>&) with the stack built for x's dtype and the matmul mode.
template <typename Fn>
void with_stack(const at::Tensor& x, bool bf16, const at::Tensor& frame_idx,
                const StackWeights& w, const std::vector<int64_t>& coords, int64_t n_freq,
                bool inverse, int64_t M, const at::Tensor& acts, Fn&& fn) {
  std::vector<at::Tensor> keep_alive;
  auto go = [&](auto c) {
    if (acts.defined() && acts.numel() > 0) {
      c.keep = acts.size(1);
      c.acts = acts;
    }
    fn(c);
  };
  if (x.scalar_type() == at::kDouble) {
    go(make_stack<double, double>(frame_idx, w, coords, n_freq, inverse, M, keep_alive));
  } else if (bf16) {
    go(make_stack<float, at::BFloat16>(frame_idx, w, coords, n_freq, inverse, M, keep_alive));
  } else {
    go(make_stack<float, float>(frame_idx, w, coords, n_freq, inverse, M, keep_alive));
  }
}

}  // namespace

std::vector<at::Tensor> coupling_stack_fwd_cpu(const at::Tensor& x, const at::Tensor& frame_idx,
                                               const StackWeights& w,
                                               const std::vector<int64_t>& coords,
                                               int64_t n_freq, bool inverse, bool save_inputs,
                                               int64_t save_hidden, bool bf16, int64_t tile) {
  const int64_t M = x.size(0);
  const int64_t L = w.proj_w.size(0), H = w.w_in_h.size(1);
  at::Tensor y = at::empty_like(x);
  at::Tensor saved = save_inputs ? at::empty({L, M, 3}, x.options()) : at::empty({0}, x.options());
  const at::ScalarType gtype = bf16 ? at::kBFloat16 : x.scalar_type();
  at::Tensor acts = save_inputs && save_hidden > 0
                        ? at::empty({L, save_hidden, M, H}, x.options().dtype(gtype))
                        : at::empty({0}, x.options().dtype(gtype));
  if (M == 0) return {y, saved, acts};
  if (acts.numel() > 0) advise_huge_pages(acts);
  const auto t0 = std::chrono::steady_clock::now();
  if (prof_on()) std::memset(g_phase, 0, sizeof(g_phase));
  with_stack(x, bf16, frame_idx, w, coords, n_freq, inverse, M, acts, [&](auto& c) {
    using S = std::remove_cv_t<std::remove_pointer_t<decltype(c.proj_b)>>;
    run_forward(c, x.data_ptr<S>(), y.data_ptr<S>(), save_inputs ? saved.data_ptr<S>() : nullptr,
                tile);
  });
  if (prof_on()) {
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    print_profile(inverse ? "inverse" : "forward", M, dt.count(), at::get_num_threads());
  }
  return {y, saved, acts};
}

std::vector<at::Tensor> coupling_stack_bwd_cpu(const at::Tensor& dy, const at::Tensor& saved,
                                               const at::Tensor& acts,
                                               const at::Tensor& frame_idx,
                                               const StackWeights& w,
                                               const std::vector<int64_t>& coords,
                                               int64_t n_freq, bool inverse, bool bf16,
                                               int64_t tile) {
  const int64_t M = dy.size(0);
  const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
  const int64_t groups = backward_tile_groups((M + tile - 1) / tile);
  auto opt = dy.options();
  auto per_group = [&](const at::Tensor& t) {
    std::vector<int64_t> sz{groups};
    for (auto s : t.sizes()) sz.push_back(s);
    return at::zeros(sz, opt);
  };
  Grads g;
  g.dfb = per_group(w.frame_bias);
  g.dproj_w = per_group(w.proj_w);
  g.dproj_b = per_group(w.proj_b);
  g.dw_in_h = per_group(w.w_in_h);
  g.dw_hid = per_group(w.w_hid);
  g.db_hid = per_group(w.b_hid);
  g.dw_out = per_group(w.w_out);
  g.db_out = per_group(w.b_out);
  at::Tensor dx = at::empty_like(dy);
  const auto t0 = std::chrono::steady_clock::now();
  if (prof_on()) std::memset(g_phase, 0, sizeof(g_phase));
  if (M > 0) {
    with_stack(dy, bf16, frame_idx, w, coords, n_freq, inverse, M, acts, [&](auto& c) {
      using S = std::remove_cv_t<std::remove_pointer_t<decltype(c.proj_b)>>;
      run_backward(c, dy.data_ptr<S>(), saved.data_ptr<S>(), dx.data_ptr<S>(), g, tile);
    });
  }
  std::vector<at::Tensor> res = {dx,           g.dfb.sum(0),    g.dproj_w.sum(0),
                                 g.dproj_b.sum(0), g.dw_in_h.sum(0), g.dw_hid.sum(0),
                                 g.db_hid.sum(0), g.dw_out.sum(0),  g.db_out.sum(0)};
  if (prof_on()) {
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    print_profile(inverse ? "inverse backward" : "forward backward", M, dt.count(), nt);
  }
  return res;
}

}  // namespace bijection
}  // namespace omnifast
