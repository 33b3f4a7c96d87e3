// Helpers shared by the CPU kernels of the MLP ops (the coupling stack, the affine pre-layer,
// the GaborNet): loads and stores of the product dtype, the per-row elementwise loops around the
// matrix products, the products themselves and the huge-page advice for large saved buffers.
//
// The kernels work the same way: threads claim groups of point tiles (for_each_tile_group); per
// tile the matrix products go through ATen (MKL for fp32/fp64, oneDNN for bf16) on per-thread
// buffers that stay in the core's cache, and every elementwise step is a loop over the buffer a
// product just wrote. S is the scalar type of coordinates, biases and gradient accumulators
// (float or double), G the dtype of the product operands (S, or bf16 in the bf16 matmul mode).
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "common/tile_pool.h"

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace omnifast {
namespace cpu_tile {

// The elementwise loops below compare floats (the activations and their derivatives); GCC
// if-converts, and so vectorizes, such loops only without trapping math, which these loops never
// rely on.
#define OMNIFAST_VECTORIZE __attribute__((optimize("no-trapping-math")))

// Loads and stores of the product dtype. bf16 is converted by hand (round to nearest even,
// no NaN special case: activations are finite) so that the loops below vectorize.
OMNIFAST_VECTORIZE inline float ld(float v) { return v; }
OMNIFAST_VECTORIZE inline double ld(double v) { return v; }
OMNIFAST_VECTORIZE inline float ld(c10::BFloat16 v) {
  const uint32_t u = uint32_t(v.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
OMNIFAST_VECTORIZE inline void st(float& d, float v) { d = v; }
OMNIFAST_VECTORIZE inline void st(double& d, double v) { d = v; }
OMNIFAST_VECTORIZE inline void st(c10::BFloat16& d, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  d.x = uint16_t(u >> 16);
}

// x[j] = act(x[j] + bias[j]) for a row of n values, act(v) = v > 0 ? v : slope * v
// (slope 0: ReLU).
template <typename S, typename G>
OMNIFAST_VECTORIZE inline void bias_act_row(G* __restrict x, const S* __restrict bias, int64_t n,
                                            S slope) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const S v = S(ld(x[j])) + bias[j];
    st(x[j], v > S(0) ? v : v * slope);
  }
}

// d[j] *= act'(pre[j]) for n values; the derivative is read from the layer's output post,
// which is > 0 exactly when pre > 0.
template <typename S, typename G>
OMNIFAST_VECTORIZE inline void mul_act_grad(G* __restrict d, const G* __restrict post, int64_t n,
                                            S slope) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const S g = S(ld(d[j]));
    st(d[j], S(ld(post[j])) > S(0) ? g : g * slope);
  }
}

// acc[j] += d[j] for n values.
template <typename S, typename G>
OMNIFAST_VECTORIZE inline void add_row(S* __restrict acc, const G* __restrict d, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) acc[j] += S(ld(d[j]));
}

// out = a @ w^T (a: [n, k], w: [m, k], out: [n, m]).
inline void mm_nt(at::Tensor& out, const at::Tensor& a, const at::Tensor& w) {
  at::mm_out(out, a, w.t());
}

// acc += a^T @ b (a: [n, r], b: [n, k], acc: [r, k] contiguous, in S). When the operands are
// bf16, the product goes through tmp (at least r x k bf16 values) and is then added by a
// vectorized loop (ATen's mixed-dtype add_ took ~1 ns per element).
inline void acc_tn(at::Tensor acc, const at::Tensor& a, const at::Tensor& b,
                   const at::Tensor& tmp) {
  if (a.scalar_type() == acc.scalar_type()) {
    acc.addmm_(a.t(), b);
    return;
  }
  TORCH_CHECK(a.scalar_type() == at::kBFloat16 && acc.scalar_type() == at::kFloat &&
                  acc.is_contiguous(),
              "acc_tn: expected bf16 operands and a contiguous float32 accumulator");
  const int64_t numel = acc.size(0) * acc.size(1);
  at::Tensor t = tmp.view({-1}).narrow(0, 0, numel).view({acc.size(0), acc.size(1)});
  at::mm_out(t, a.t(), b);
  add_row<float, c10::BFloat16>(acc.data_ptr<float>(), t.data_ptr<c10::BFloat16>(), numel);
}

// Groups for a backward over ntiles tiles: one per thread would leave no room to balance, many
// cost an accumulator slot each (zeroed and summed per call); 3 per thread balance a thread that
// gets half a core against one that gets a whole one. At least 1 (for the accumulators' shape).
inline int64_t backward_tile_groups(int64_t ntiles) {
  const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
  const int64_t want = nt == 1 ? 1 : 3 * nt;
  return std::max<int64_t>(1, std::min<int64_t>(ntiles, want));
}

// Work sharing over point tiles that follows the CPU time each thread actually gets, with sums
// that do not depend on the schedule. The tiles are cut into `groups` contiguous groups; each
// thread takes the next unclaimed group from a shared counter (tile_pool.h), so a thread that
// gets less than a whole core (another process on it) takes fewer groups instead of holding the
// others up, as a static split of the tiles does. A backward accumulates each group's weight
// gradients into that group's own slot, in tile order, and the slots are summed in a fixed order
// afterwards: the result depends on the tile and thread counts, never on which thread ran which
// group.
//
// Runs body(claim) on the calling thread and on pool threads (at most min(groups, threads) in
// all, threads = ATen's intra-op count); claim(TileGroup&) fills in the next unclaimed group and
// returns false when none is left, claim.thread numbers the threads. Per-thread scratch lives in
// body.
template <typename Body>
void for_each_tile_group(int64_t ntiles, int64_t groups, const Body& body) {
  run_tile_groups(ntiles, groups, at::get_num_threads(),
                  [&body](const TileClaim& claim) { body(claim); });
}

// Asks the kernel to back the 2 MiB-aligned interior of a large fresh buffer with transparent
// huge pages (where THP is in "madvise" mode). Saved activations are written once per forward
// into new memory; with 4 KiB pages the first-touch page faults cost about as much as the writes
// save (measured: a first fill of 144 MiB took 64 ms with 4 KiB pages, 15 ms with 2 MiB pages,
// a second fill 6-8 ms). The memory still comes from ATen's allocator, so its accounting (and the
// memory profiler) sees it as usual.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t b = (p + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t e = (p + t.nbytes()) & ~(kHuge - 1);
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);  // advisory only
#else
  (void)t;
#endif
}

// pi * 2^k for k = 0..n_freq-1 (omnifast.reference.bijection.pe_frequencies).
template <typename S>
std::vector<S> pe_frequencies(int64_t n_freq) {
  std::vector<S> f;
  for (int64_t k = 0; k < n_freq; ++k) f.push_back(S(M_PI * std::ldexp(1.0, int(k))));
  return f;
}

}  // namespace cpu_tile
}  // namespace omnifast
