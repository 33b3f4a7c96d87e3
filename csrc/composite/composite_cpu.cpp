// composite CPU kernels: rays split over OpenMP threads (at::parallel_for), the per-ray math of
// composite_ray.h, specialised for the usual channel counts.
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/env.h"
#include "composite/composite.h"
#include "composite/composite_ray.h"

namespace omnifast {
namespace composite {
namespace {

constexpr int64_t kGrainRays = 512;
// Rays whose exp(-sigma) is computed together, in one SIMD loop, before the per-ray passes.
constexpr int64_t kTileRays = 64;

// exp(-s) for 8 float32 lanes (AVX2 + FMA, the build's baseline): Cody-Waite range reduction
// x = n ln2 + r, a degree-7 polynomial for e^r (relative error about 1e-7, 1-2 ulp), and 2^n
// assembled in the exponent bits (as 2 * 2^(n-1), so that n = 128 still fits). Arguments below
// -86.9 give 0 instead of a number below 1.9e-38 (alpha rounds to 1 and the transmittance factor
// to 1e-10 either way); above ln(FLT_MAX) they give inf; NaN passes through.
inline __m256 exp_neg_avx2(__m256 s) {
  const __m256 lo = _mm256_set1_ps(-86.9f), hi = _mm256_set1_ps(88.72283f);
  const __m256 x = _mm256_sub_ps(_mm256_setzero_ps(), s);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(
      _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), _mm256_set1_ps(2.0f));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

// e[i] = exp(-s[i]) for a tile of samples.
template <typename scalar_t>
void exp_neg_tile(const scalar_t* s, scalar_t* e, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(e + i, exp_neg_avx2(_mm256_loadu_ps(s + i)));
    if (i < n) {
      alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t j = i; j < n; ++j) buf[j - i] = s[j];
      _mm256_store_ps(buf, exp_neg_avx2(_mm256_load_ps(buf)));
      for (int64_t j = i; j < n; ++j) e[j] = buf[j - i];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) e[i] = std::exp(-s[i]);
  }
}

template <typename T>
const T* cptr(const at::Tensor* t) {
  return t == nullptr ? nullptr : t->data_ptr<T>();
}
template <typename T>
T* mptr(at::Tensor* t) {
  return t == nullptr ? nullptr : t->data_ptr<T>();
}

// Calls fn(std::integral_constant<int, CT>) with CT = C for the specialised channel counts,
// 0 (runtime C) otherwise.
template <typename Fn>
void dispatch_channels(int64_t C, Fn&& fn) {
  switch (C) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 6: fn(std::integral_constant<int, 6>{}); break;
    case 7: fn(std::integral_constant<int, 7>{}); break;
    default: fn(std::integral_constant<int, 0>{}); break;
  }
}


// --------------------------------------------------------------------------- float32 ray tiles
// The float32 kernels for 1 <= C <= 8 channels and K <= kTileMaxK samples work on tiles of 8
// consecutive rays with one ray per AVX2 lane for everything that runs along the samples (exp,
// the transmittance product, the reverse recurrence of the backward), so the serial chains of
// 8 rays advance together and the per-lane arithmetic is exactly the scalar code's, in the
// same order. sigma (and dweights) are read as 8x8 blocks and transposed in registers; the
// per-sample channel work (value sums, value gradients) runs per ray on 8-lane vectors of
// channels. A tile's outputs are contiguous in memory (rays are consecutive): with streaming
// stores (`stream_output`, `stream_rows`) they are built in a small per-thread staging buffer
// and then written out once, in one sequential sweep of non-temporal stores; with plain stores
// they are written in place. Either way every output byte is written exactly once, and nothing
// is zero-filled. Whole tiles with K a multiple of 8 (every training and inference call) take
// the block kernels (`fwd_block_tile`, `bwd_block_tile`), which keep the transposed blocks in
// registers and write the value gradients from there; the general tile kernels serve the last
// partial tile, other K, and (backward only) value masks.
constexpr int kLanes = 8;
constexpr int64_t kTileMaxK = 128;
constexpr int64_t kGrainTiles = 64;

inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Lanes [0, n) set.
inline __m256i lane_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// [sum(p[0]), ..., sum(p[7])]
inline __m256 hsum8(const __m256 p[8]) {
  const __m256 t0 = _mm256_hadd_ps(p[0], p[1]), t1 = _mm256_hadd_ps(p[2], p[3]);
  const __m256 t2 = _mm256_hadd_ps(p[4], p[5]), t3 = _mm256_hadd_ps(p[6], p[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// dst[k * 8 + lane] = rows[lane][k] for k < K (the rows are K floats apart; lanes >= nr read a
// zero row). Entries for K <= k < round_up(K, 8) are zero.
inline void load_lanes(const float* rows, int64_t nr, int64_t K, const float* zeros, float* dst) {
  const float* p[kLanes];
  for (int i = 0; i < kLanes; ++i) p[i] = i < nr ? rows + i * K : zeros;
  for (int64_t kb = 0; kb < K; kb += kLanes) {
    __m256 r[kLanes];
    if (kb + kLanes <= K) {
      for (int i = 0; i < kLanes; ++i) r[i] = _mm256_loadu_ps(p[i] + kb);
    } else {
      const __m256i mk = lane_mask(K - kb);
      for (int i = 0; i < kLanes; ++i) r[i] = _mm256_maskload_ps(p[i] + kb, mk);
    }
    transpose8(r);
    for (int j = 0; j < kLanes; ++j) _mm256_storeu_ps(dst + (kb + j) * kLanes, r[j]);
  }
}

// rows[lane * K + k] = src[k * 8 + lane] for lane < nr, k < K (a contiguous [nr, K] block).
inline void store_lanes(const float* src, int64_t nr, int64_t K, float* rows) {
  for (int64_t kb = 0; kb < K; kb += kLanes) {
    __m256 r[kLanes];
    for (int j = 0; j < kLanes; ++j) r[j] = _mm256_loadu_ps(src + (kb + j) * kLanes);
    transpose8(r);
    const int64_t n = std::min<int64_t>(kLanes, K - kb);
    for (int i = 0; i < nr; ++i) {
      if (n == kLanes) {
        _mm256_storeu_ps(rows + i * K + kb, r[i]);
      } else {
        alignas(32) float tmp[kLanes];
        _mm256_store_ps(tmp, r[i]);
        for (int64_t j = 0; j < n; ++j) rows[i * K + kb + j] = tmp[j];
      }
    }
  }
}

// dst[0, n) = src[0, n): streaming stores for the 32-byte aligned body when `stream`.
inline void write_out(float* dst, const float* src, int64_t n, bool stream) {
  if (!stream) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  int64_t i = 0;
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0; ++i) dst[i] = src[i];
  for (; i + kLanes <= n; i += kLanes) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}

// Whether an output of `bytes` is written with streaming stores, which skip the
// read-for-ownership of every line (for a store-heavy kernel a third of its memory traffic)
// but leave nothing in the cache for the output's consumer.
// * stream_output: the value gradients, written per ray straight from registers. Only outputs
//   larger than the last-level cache (32 MiB here) stream: nothing of them would still be
//   cached for their consumer anyway.
// * stream_rows: the per-sample outputs (weights, dsigma: 8 MiB at the training shape), which
//   the tile kernels build per tile in an L1 buffer and then write out in one sequential sweep,
//   so that every 64-byte line is written whole by consecutive streaming stores. They stream
//   from 4 MiB: the kernels that write them read 8x as many input bytes meanwhile, so little
//   of such an output would survive in the cache either (measured: forward 3.04 -> 2.66 ms,
//   backward 4.11 -> 3.81 ms at the training shape, benchmarks/RESULTS.md). Streamed straight
//   from registers instead (8 rays' 32-byte pieces at a time, each line in two halves far
//   apart), they had measured slower than plain stores.
// OMNIFAST_COMPOSITE_STREAM=0 turns streaming off.
constexpr int64_t kStreamMinBytes = int64_t(32) << 20;
constexpr int64_t kStreamRowsMinBytes = int64_t(4) << 20;
bool stream_enabled() {
  static const bool on = omnifast::env_switch_on("OMNIFAST_COMPOSITE_STREAM");
  return on;
}
bool stream_output(int64_t bytes) { return stream_enabled() && bytes > kStreamMinBytes; }
bool stream_rows(int64_t bytes) { return stream_enabled() && bytes >= kStreamRowsMinBytes; }

bool use_tiles(const at::Tensor& sigma, int64_t K, int64_t C) {
  return sigma.scalar_type() == at::kFloat && K >= 1 && K <= kTileMaxK && C >= 1 && C <= kLanes;
}

// Per-thread scratch of the tile kernels (every access is an unaligned load or store).
struct TileScratch {
  std::vector<float> buf;
  float* ptr(int64_t offset) { return buf.data() + offset; }
  explicit TileScratch(int64_t floats) : buf(static_cast<size_t>(floats)) {}
};

struct TileParams {
  const float* s;     // sigma [R, K]
  const float* v;     // values [R, K, C]
  const float* m;     // value_mask [R, K] or nullptr
  int64_t R, K, C, mask_from, num_near;
};

// Channel lane masks: all channels, the ones the value mask applies to, the others.
struct ChannelMasks {
  __m256i all, masked, plain;
  __m256 all_ps;
  ChannelMasks(int64_t C, int64_t mask_from) {
    all = lane_mask(C);
    all_ps = _mm256_castsi256_ps(all);
    plain = lane_mask(std::min(C, mask_from));
    masked = _mm256_andnot_si256(plain, all);
  }
  // The C channels of one sample, the other lanes 0. A plain load (8 lanes, masked after the
  // load) reads up to 8 - C floats past the sample; `last` (a sample within 8 floats of the
  // tile's end, which may be the tensor's end) uses a masked load instead. Masked loads are kept off the hot path:
  // on this CPU a stream of them from memory ran at a fraction of the plain loads' bandwidth.
  __m256 load(const float* p, bool last) const {
    return last ? _mm256_maskload_ps(p, all) : _mm256_and_ps(_mm256_loadu_ps(p), all_ps);
  }
  // 1 in the channels the mask does not apply to, m in the others.
  __m256 factor(float m) const {
    return _mm256_blendv_ps(_mm256_set1_ps(1.f), _mm256_set1_ps(m), _mm256_castsi256_ps(masked));
  }
};

// out[r0 + i] = sum_k w[k * ws] v[r0 + i, k] (times the value mask in its channels) for ray i
// of the tile of rays [r0, r0 + nr), for CT = C channels (0: C at run time). Four partial sums
// (samples k mod 4) so that consecutive FMAs do not wait on each other.
template <int CT>
inline void ray_value_sum(const TileParams& p, const ChannelMasks& cm, int64_t r0, int64_t i,
                          int64_t nr, const float* w, int64_t ws, float* out) {
  const int64_t K = p.K, C = CT > 0 ? CT : p.C;
  const float* vr = p.v + (r0 + i) * K * C;
  const float* mr = p.m != nullptr ? p.m + (r0 + i) * K : nullptr;
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  const int64_t lim = (nr - i) * K * C - kLanes;  // samples with k * C > lim end the tile
  auto step = [&](int64_t k, int u) {
    __m256 wk = _mm256_broadcast_ss(w + k * ws);
    if (mr != nullptr) wk = _mm256_mul_ps(wk, cm.factor(mr[k]));
    acc[u] = _mm256_fmadd_ps(wk, cm.load(vr + k * C, k * C > lim), acc[u]);
  };
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    step(k, 0);
    step(k + 1, 1);
    step(k + 2, 2);
    step(k + 3, 3);
  }
  for (; k < K; ++k) step(k, 0);
  alignas(32) float tmp[kLanes];
  _mm256_store_ps(tmp, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (int64_t c = 0; c < C; ++c) out[(r0 + i) * C + c] = tmp[c];
}

// The transmittance sweep of a whole tile of 8 rays with K a multiple of 8, on 8x8 blocks of
// sigma transposed in registers: per sample k, on_sample(k, exp(-sigma_k), T_k) (lanes = rays),
// and per block of samples [kb, kb + 8), on_block(kb, r) with the block's weights transposed
// back (r[i] = ray i's weights of the block). The per-lane arithmetic is fwd_tile's.
template <typename OnSample, typename OnBlock>
inline void block_sweep(const TileParams& p, int64_t r0, OnSample&& on_sample,
                        OnBlock&& on_block) {
  const int64_t K = p.K;
  const __m256 one = _mm256_set1_ps(1.f), eps = _mm256_set1_ps(transmittance_eps<float>());
  const __m256 zero = _mm256_setzero_ps();
  const float* srow = p.s + r0 * K;
  __m256 T = one;
  for (int64_t kb = 0; kb < K; kb += kLanes) {
    __m256 r[kLanes];
    for (int i = 0; i < kLanes; ++i) r[i] = _mm256_loadu_ps(srow + i * K + kb);
    transpose8(r);
    for (int j = 0; j < kLanes; ++j) {
      const int64_t k = kb + j;
      const __m256 e = exp_neg_avx2(r[j]);
      const __m256 a = _mm256_mul_ps(_mm256_sub_ps(one, e), k < p.num_near ? zero : one);
      on_sample(k, e, T);
      r[j] = _mm256_mul_ps(a, T);
      T = _mm256_mul_ps(T, _mm256_add_ps(_mm256_sub_ps(one, a), eps));
    }
    transpose8(r);
    on_block(kb, r);
  }
}

// Forward of the tile of rays [r0, r0 + nr), for CT = C channels (0: C at run time).
template <int CT>
void fwd_tile(const TileParams& p, int64_t r0, int64_t nr, const ChannelMasks& cm,
              const float* zeros, float* W, float* stage, float* out, float* weights,
              bool stream) {
  const int64_t K = p.K;
  float* E = stage;  // exp(-sigma) in lanes, then the weights' rows
  load_lanes(p.s + r0 * K, nr, K, zeros, E);
  const __m256 one = _mm256_set1_ps(1.f), eps = _mm256_set1_ps(transmittance_eps<float>());
  __m256 T = one;
  for (int64_t kb = 0; kb < K; kb += kLanes) {
    for (int64_t k = kb; k < std::min(K, kb + kLanes); ++k) {
      const __m256 e = exp_neg_avx2(_mm256_loadu_ps(E + k * kLanes));
      const __m256 a = _mm256_mul_ps(_mm256_sub_ps(one, e), k < p.num_near ? _mm256_setzero_ps() : one);
      _mm256_storeu_ps(W + k * kLanes, _mm256_mul_ps(a, T));
      T = _mm256_mul_ps(T, _mm256_add_ps(_mm256_sub_ps(one, a), eps));
    }
  }
  for (int64_t i = 0; i < nr; ++i) ray_value_sum<CT>(p, cm, r0, i, nr, W + i, kLanes, out);
  if (weights != nullptr) {
    if (stream) {
      store_lanes(W, nr, K, stage);
      write_out(weights + r0 * K, stage, nr * K, stream);
    } else {
      store_lanes(W, nr, K, weights + r0 * K);
    }
  }
}

// Backward of the tile of rays [r0, r0 + nr): one pass over the tile's inputs. The forward
// recurrence runs in lanes (T, alpha, exp(-sigma) kept per sample in the scratch), then each
// ray's samples are read once for both the value gradients and dL/dw, and the reverse
// recurrence runs in lanes again.
void bwd_tile(const TileParams& p, int64_t r0, int64_t nr, const ChannelMasks& cm,
              const float* zeros, const float* go, const float* gw, float* scratch, float* ds,
              float* dv, bool stream_ds, bool stream) {
  const int64_t K = p.K, C = p.C;
  const int64_t Kp = (K + kLanes - 1) / kLanes * kLanes;
  float* E = scratch;              // [Kp][8] exp(-sigma)
  float* A = E + Kp * kLanes;      // [Kp][8] alpha
  float* Tr = A + Kp * kLanes;     // [Kp][8] transmittance
  float* W = Tr + Kp * kLanes;     // [Kp][8] weights
  float* G = W + Kp * kLanes;      // [Kp][8] dL/dw, then dsigma
  float* Grow = G + Kp * kLanes;   // [8][Kp] dL/dw per ray (row-major)
  float* dvs = Grow + Kp * kLanes; // [nr * K * C + 8] value gradients of the tile
  const __m256 one = _mm256_set1_ps(1.f), eps = _mm256_set1_ps(transmittance_eps<float>());
  const __m256 zero = _mm256_setzero_ps();

  load_lanes(p.s + r0 * K, nr, K, zeros, E);
  __m256 T = one;
  for (int64_t k = 0; k < K; ++k) {
    const __m256 e = exp_neg_avx2(_mm256_loadu_ps(E + k * kLanes));
    const __m256 a = _mm256_mul_ps(_mm256_sub_ps(one, e), k < p.num_near ? zero : one);
    _mm256_storeu_ps(E + k * kLanes, e);
    _mm256_storeu_ps(A + k * kLanes, a);
    _mm256_storeu_ps(Tr + k * kLanes, T);
    _mm256_storeu_ps(W + k * kLanes, _mm256_mul_ps(a, T));
    T = _mm256_mul_ps(T, _mm256_add_ps(_mm256_sub_ps(one, a), eps));
  }

  // Per ray: dvalues and dL/dw_k = sum_c go_c m_kc v_kc. The value gradients go to the staging
  // buffer (streaming) or straight to dvalues, in order, so each 8-lane store's spill past the C
  // channels of sample k is overwritten by the samples after it; only the samples at the tile's
  // end are written without a spill (it would land in another tile's rays or past the tensor).
  float* dvt = stream ? dvs : (dv != nullptr ? dv + r0 * K * C : nullptr);
  for (int64_t i = 0; i < nr; ++i) {
    const float* vr = p.v + (r0 + i) * K * C;
    const float* mr = p.m != nullptr ? p.m + (r0 + i) * K : nullptr;
    const __m256 g0 = _mm256_maskload_ps(go + (r0 + i) * C, cm.all);
    float* dvr = dvt + i * K * C;
    // Samples with k * C > lim are within 8 floats of the tile's end: masked loads, and (plain
    // stores straight into dvalues) stores that do not spill past the tile.
    const int64_t lim = (nr - i) * K * C - kLanes;
    for (int64_t kb = 0; kb < K; kb += kLanes) {
      __m256 prod[kLanes];
      const int64_t n = std::min<int64_t>(kLanes, K - kb);
      auto sample = [&](int64_t j) {
        const int64_t k = kb + j;
        const __m256 f = mr != nullptr ? cm.factor(mr[k]) : one;
        const __m256 g = mr != nullptr ? _mm256_mul_ps(f, g0) : g0;
        const bool tail = k * C > lim;
        prod[j] = _mm256_mul_ps(cm.load(vr + k * C, tail), g);
        if (dv != nullptr) {
          __m256 w = _mm256_broadcast_ss(W + k * kLanes + i);
          if (mr != nullptr) w = _mm256_mul_ps(w, f);
          const __m256 d = _mm256_mul_ps(w, g0);
          if (stream || !tail) {
            _mm256_storeu_ps(dvr + k * C, d);
          } else {
            alignas(32) float tmp[kLanes];
            _mm256_store_ps(tmp, d);
            for (int64_t c = 0; c < C; ++c) dvr[k * C + c] = tmp[c];
          }
        }
      };
      if (n == kLanes) {
        sample(0); sample(1); sample(2); sample(3); sample(4); sample(5); sample(6); sample(7);
      } else {
        for (int64_t j = 0; j < n; ++j) sample(j);
        for (int64_t j = n; j < kLanes; ++j) prod[j] = zero;
      }
      _mm256_storeu_ps(Grow + i * Kp + kb, hsum8(prod));
    }
  }
  if (dv != nullptr && stream) write_out(dv + r0 * K * C, dvs, nr * K * C, stream);
  if (ds == nullptr) return;

  // dL/dw in lanes, plus the weights' upstream gradient.
  for (int64_t kb = 0; kb < K; kb += kLanes) {
    __m256 r[kLanes];
    for (int i = 0; i < kLanes; ++i) r[i] = i < nr ? _mm256_loadu_ps(Grow + i * Kp + kb) : zero;
    transpose8(r);
    for (int j = 0; j < kLanes; ++j) _mm256_storeu_ps(G + (kb + j) * kLanes, r[j]);
  }
  if (gw != nullptr) {
    load_lanes(gw + r0 * K, nr, K, zeros, Grow);
    for (int64_t k = 0; k < K; ++k) {
      _mm256_storeu_ps(G + k * kLanes, _mm256_add_ps(_mm256_loadu_ps(G + k * kLanes),
                                                     _mm256_loadu_ps(Grow + k * kLanes)));
    }
  }
  __m256 U = zero;
  for (int64_t k = K - 1; k >= 0; --k) {
    const __m256 keep = k < p.num_near ? zero : one;
    const __m256 a = _mm256_loadu_ps(A + k * kLanes);
    const __m256 g = _mm256_loadu_ps(G + k * kLanes);
    const __m256 dalpha = _mm256_mul_ps(_mm256_loadu_ps(Tr + k * kLanes), _mm256_sub_ps(g, U));
    _mm256_storeu_ps(G + k * kLanes,
                     _mm256_mul_ps(_mm256_mul_ps(dalpha, _mm256_loadu_ps(E + k * kLanes)), keep));
    U = _mm256_add_ps(_mm256_mul_ps(g, a), _mm256_mul_ps(_mm256_add_ps(_mm256_sub_ps(one, a), eps), U));
  }
  if (stream_ds) {
    store_lanes(G, nr, K, Grow);
    write_out(ds + r0 * K, Grow, nr * K, true);
  } else {
    store_lanes(G, nr, K, ds + r0 * K);
  }
}

// ------------------------------------------------------------- float32 backward, whole tiles
// The backward of a full tile of 8 rays when K is a multiple of 8, there is no value mask and
// dvalues (if wanted) is 32-byte aligned: then every ray's value gradients start on a 32-byte
// boundary, and 8 samples' gradients are C whole 8-float vectors. Those are built in registers
// from the ray's 8 weights and its C upstream gradients by two fixed lane permutations
// (sample j*C+c -> weight j, channel c) and written straight to dvalues, one ray after the
// other (contiguous streaming stores, no staging copy). The forward sweep keeps exp(-sigma)
// and the transmittance per sample (alpha is recomputed from exp(-sigma)); the reverse sweep
// runs block by block from the end, with dL/dw (the upstream weight gradients already added
// per ray) transposed into lanes per block and dsigma transposed back per block. The arithmetic per lane is the
// same as bwd_tile's, in the same order (bit-identical results).

// Forward of a whole tile of 8 rays when K is a multiple of 8: the transmittance sweep runs on
// 8x8 blocks of sigma transposed in registers, and each block's weights are transposed back and
// written to a row-major scratch ([8][K], the tile's part of the weights output in its layout)
// straight from registers, so the tile's exp(-sigma) and weights never make the scratch round
// trips of fwd_tile (lanes in, then store_lanes out). The scratch is then copied to the weights
// output in one sequential sweep of streaming stores (`stream`), or the weights are written in
// place from registers. The per-lane arithmetic and the per-ray value sums are fwd_tile's, in
// the same order (bit-identical results; a test moves rays between the two).
template <int CT>
void fwd_block_tile(const TileParams& p, int64_t r0, const ChannelMasks& cm, float* Wrow,
                    float* out, float* weights, bool stream) {
  const int64_t K = p.K;
  float* wout = weights != nullptr ? weights + r0 * K : nullptr;
  float* direct = stream ? nullptr : wout;
  block_sweep(p, r0, [](int64_t, __m256, __m256) {}, [&](int64_t kb, const __m256* r) {
    for (int i = 0; i < kLanes; ++i) {
      _mm256_storeu_ps(Wrow + i * K + kb, r[i]);
      if (direct != nullptr) _mm256_storeu_ps(direct + i * K + kb, r[i]);
    }
  });
  if (stream && wout != nullptr) write_out(wout, Wrow, kLanes * K, true);
  for (int64_t i = 0; i < kLanes; ++i) {
    ray_value_sum<CT>(p, cm, r0, i, kLanes, Wrow + i * K, 1, out);
  }
}

// Lane permutations of one 8-sample block of C channels: vector q of the block holds, in lane l,
// sample (8q + l) / C, channel (8q + l) % C.
struct BlockPattern {
  alignas(32) int32_t sample[kLanes][kLanes];
  alignas(32) int32_t channel[kLanes][kLanes];
  explicit BlockPattern(int64_t C) {
    for (int q = 0; q < kLanes; ++q) {
      for (int l = 0; l < kLanes; ++l) {
        sample[q][l] = static_cast<int32_t>((kLanes * q + l) / C);
        channel[q][l] = static_cast<int32_t>((kLanes * q + l) % C);
      }
    }
  }
  __m256i sample_idx(int q) const {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(sample[q]));
  }
  __m256i channel_idx(int q) const {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(channel[q]));
  }
};

bool use_block_bwd(const TileParams& p, const float* dv) {
  return p.m == nullptr && p.K % kLanes == 0 &&
         (dv == nullptr || (reinterpret_cast<uintptr_t>(dv) & 31) == 0);
}

template <int CT>
void bwd_block_tile(const TileParams& p, int64_t r0, const ChannelMasks& cm,
                    const BlockPattern& pat, const float* go, const float* gw, float* scratch,
                    float* ds, float* dv, bool stream_ds, bool stream) {
  constexpr int64_t C = CT;
  const int64_t K = p.K;
  float* E = scratch;                // [K][8] exp(-sigma)
  float* Tr = E + K * kLanes;        // [K][8] transmittance
  float* Wrow = Tr + K * kLanes;     // [8][K] weights per ray
  float* Grow = Wrow + K * kLanes;   // [8][K] dL/dw per ray, plus the weights' gradient
  const __m256 one = _mm256_set1_ps(1.f), eps = _mm256_set1_ps(transmittance_eps<float>());
  const __m256 zero = _mm256_setzero_ps();

  block_sweep(
      p, r0,
      [&](int64_t k, __m256 e, __m256 T) {
        _mm256_storeu_ps(E + k * kLanes, e);
        _mm256_storeu_ps(Tr + k * kLanes, T);
      },
      [&](int64_t kb, const __m256* r) {
        for (int i = 0; i < kLanes; ++i) _mm256_storeu_ps(Wrow + i * K + kb, r[i]);
      });

  for (int64_t i = 0; i < kLanes; ++i) {
    const float* vr = p.v + (r0 + i) * K * C;
    const __m256 g0 = _mm256_maskload_ps(go + (r0 + i) * C, cm.all);
    __m256 gpat[C];
    for (int q = 0; q < C; ++q) gpat[q] = _mm256_permutevar8x32_ps(g0, pat.channel_idx(q));
    float* dvr = dv != nullptr ? dv + (r0 + i) * K * C : nullptr;
    const int64_t lim = (kLanes - i) * K * C - kLanes;  // loads past it end the tile: masked
    for (int64_t kb = 0; kb < K; kb += kLanes) {
      if (dvr != nullptr) {
        const __m256 w = _mm256_loadu_ps(Wrow + i * K + kb);
        for (int q = 0; q < C; ++q) {
          const __m256 d = _mm256_mul_ps(_mm256_permutevar8x32_ps(w, pat.sample_idx(q)), gpat[q]);
          if (stream) {
            _mm256_stream_ps(dvr + kb * C + q * kLanes, d);
          } else {
            _mm256_store_ps(dvr + kb * C + q * kLanes, d);
          }
        }
      }
      if (ds != nullptr) {
        __m256 prod[kLanes];
        for (int j = 0; j < kLanes; ++j) {
          const int64_t k = kb + j;
          prod[j] = _mm256_mul_ps(cm.load(vr + k * C, k * C > lim), g0);
        }
        // The weights' upstream gradient joins dL/dw here, read in the ray's order next to
        // its values (read per block in the reverse sweep, transposed, it cost ~0.5 ms of a
        // 4.6 ms backward at the training shape); the sum is the same as bwd_tile's.
        __m256 gsum = hsum8(prod);
        if (gw != nullptr) gsum = _mm256_add_ps(gsum, _mm256_loadu_ps(gw + (r0 + i) * K + kb));
        _mm256_storeu_ps(Grow + i * K + kb, gsum);
      }
    }
  }
  if (ds == nullptr) return;

  __m256 U = zero;
  float* dsr = ds + r0 * K;
  for (int64_t kb = K - kLanes; kb >= 0; kb -= kLanes) {
    __m256 g[kLanes], h[kLanes];
    for (int i = 0; i < kLanes; ++i) g[i] = _mm256_loadu_ps(Grow + i * K + kb);
    transpose8(g);
    for (int j = kLanes - 1; j >= 0; --j) {
      const int64_t k = kb + j;
      const __m256 keep = k < p.num_near ? zero : one;
      const __m256 e = _mm256_loadu_ps(E + k * kLanes);
      const __m256 a = _mm256_mul_ps(_mm256_sub_ps(one, e), keep);
      const __m256 dalpha = _mm256_mul_ps(_mm256_loadu_ps(Tr + k * kLanes), _mm256_sub_ps(g[j], U));
      h[j] = _mm256_mul_ps(_mm256_mul_ps(dalpha, e), keep);
      U = _mm256_add_ps(_mm256_mul_ps(g[j], a),
                        _mm256_mul_ps(_mm256_add_ps(_mm256_sub_ps(one, a), eps), U));
    }
    transpose8(h);
    // Streaming: staged in the weights' rows (no longer needed) and written out in one
    // sequential sweep below; otherwise in place.
    float* dst = stream_ds ? Wrow : dsr;
    for (int i = 0; i < kLanes; ++i) _mm256_storeu_ps(dst + i * K + kb, h[i]);
  }
  if (stream_ds) write_out(dsr, Wrow, kLanes * K, true);
}

// bwd_block_tile for the channel count C (1 <= C <= 8).
template <typename... Args>
void bwd_block_tile_c(int64_t C, Args&&... args) {
  switch (C) {
    case 1: bwd_block_tile<1>(std::forward<Args>(args)...); break;
    case 2: bwd_block_tile<2>(std::forward<Args>(args)...); break;
    case 3: bwd_block_tile<3>(std::forward<Args>(args)...); break;
    case 4: bwd_block_tile<4>(std::forward<Args>(args)...); break;
    case 5: bwd_block_tile<5>(std::forward<Args>(args)...); break;
    case 6: bwd_block_tile<6>(std::forward<Args>(args)...); break;
    case 7: bwd_block_tile<7>(std::forward<Args>(args)...); break;
    default: bwd_block_tile<8>(std::forward<Args>(args)...); break;
  }
}

int64_t bwd_scratch_floats(int64_t K, int64_t C) {
  const int64_t Kp = (K + kLanes - 1) / kLanes * kLanes;
  return 6 * Kp * kLanes + kLanes * K * C + kLanes;
}

}  // namespace

void composite_fwd_cpu(const at::Tensor& sigma, const at::Tensor& values,
                       const at::Tensor* value_mask, int64_t value_mask_from,
                       int64_t num_masked_near, at::Tensor& out, at::Tensor* weights) {
  const int64_t R = sigma.size(0), K = sigma.size(1), C = values.size(2);
  if (use_tiles(sigma, K, C)) {
    const TileParams p{sigma.data_ptr<float>(), values.data_ptr<float>(),
                       cptr<float>(value_mask), R, K, C, value_mask_from, num_masked_near};
    float* o = out.data_ptr<float>();
    float* w = mptr<float>(weights);
    const bool stream = stream_rows(R * K * int64_t(sizeof(float)));
    const int64_t Kp = (K + kLanes - 1) / kLanes * kLanes;
    const bool block = K % kLanes == 0;  // whole tiles take fwd_block_tile
    at::parallel_for(0, (R + kLanes - 1) / kLanes, kGrainTiles, [&](int64_t t0, int64_t t1) {
      const ChannelMasks cm(C, value_mask_from);
      TileScratch scratch(3 * Kp * kLanes);
      float* zeros = scratch.ptr(0);
      std::fill(zeros, zeros + Kp, 0.f);
      dispatch_channels(C, [&](auto ct) {
        constexpr int CT = decltype(ct)::value;
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t r0 = t * kLanes;
          if (block && R - r0 >= kLanes) {
            fwd_block_tile<CT>(p, r0, cm, scratch.ptr(Kp * kLanes), o, w, stream);
            continue;
          }
          fwd_tile<CT>(p, r0, std::min<int64_t>(kLanes, R - r0), cm, zeros,
                       scratch.ptr(Kp * kLanes), scratch.ptr(2 * Kp * kLanes), o, w, stream);
        }
      });
      if (stream) _mm_sfence();
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "composite_fwd_cpu", [&] {
    using acc_t = scalar_t;
    const scalar_t* s = sigma.data_ptr<scalar_t>();
    const scalar_t* v = values.data_ptr<scalar_t>();
    const scalar_t* m = cptr<scalar_t>(value_mask);
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* w = mptr<scalar_t>(weights);
    dispatch_channels(C, [&](auto ct) {
      constexpr int CT = decltype(ct)::value;
      at::parallel_for(0, R, kGrainRays, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> e(kTileRays * K);
        for (int64_t r0 = begin; r0 < end; r0 += kTileRays) {
          const int64_t r1 = std::min(end, r0 + kTileRays);
          exp_neg_tile(s + r0 * K, e.data(), (r1 - r0) * K);
          for (int64_t r = r0; r < r1; ++r) {
            ray_forward<CT, scalar_t, acc_t>(s + r * K, e.data() + (r - r0) * K, v + r * K * C,
                                             m ? m + r * K : nullptr, K, C, value_mask_from,
                                             num_masked_near, o + r * C, w ? w + r * K : nullptr);
          }
        }
      });
    });
  });
}

void composite_bwd_cpu(const at::Tensor& sigma, const at::Tensor& values,
                       const at::Tensor* value_mask, const at::Tensor& dout,
                       const at::Tensor* dweights, int64_t value_mask_from,
                       int64_t num_masked_near, at::Tensor* dsigma, at::Tensor* dvalues) {
  const int64_t R = sigma.size(0), K = sigma.size(1), C = values.size(2);
  if (use_tiles(sigma, K, C)) {
    const TileParams p{sigma.data_ptr<float>(), values.data_ptr<float>(),
                       cptr<float>(value_mask), R, K, C, value_mask_from, num_masked_near};
    const float* go = dout.data_ptr<float>();
    const float* gw = cptr<float>(dweights);
    float* ds = mptr<float>(dsigma);
    float* dv = mptr<float>(dvalues);
    const bool stream_ds = stream_rows(R * K * int64_t(sizeof(float)));
    const bool stream = stream_output(R * K * C * int64_t(sizeof(float)));
    const int64_t Kp = (K + kLanes - 1) / kLanes * kLanes;
    const BlockPattern pattern(C);
    at::parallel_for(0, (R + kLanes - 1) / kLanes, kGrainTiles, [&](int64_t t0, int64_t t1) {
      const ChannelMasks cm(C, value_mask_from);
      TileScratch scratch(Kp + bwd_scratch_floats(K, C));
      float* zeros = scratch.ptr(0);
      std::fill(zeros, zeros + Kp, 0.f);
      const bool block = use_block_bwd(p, dv);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kLanes;
        if (block && r0 + kLanes <= R) {
          bwd_block_tile_c(C, p, r0, cm, pattern, go, gw, scratch.ptr(Kp), ds, dv, stream_ds,
                           stream);
        } else {
          bwd_tile(p, r0, std::min<int64_t>(kLanes, R - r0), cm, zeros, go, gw, scratch.ptr(Kp),
                   ds, dv, stream_ds, stream);
        }
      }
      if (stream || stream_ds) _mm_sfence();
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "composite_bwd_cpu", [&] {
    using acc_t = scalar_t;
    const scalar_t* s = sigma.data_ptr<scalar_t>();
    const scalar_t* v = values.data_ptr<scalar_t>();
    const scalar_t* m = cptr<scalar_t>(value_mask);
    const scalar_t* go = dout.data_ptr<scalar_t>();
    const scalar_t* gw = cptr<scalar_t>(dweights);
    scalar_t* ds = mptr<scalar_t>(dsigma);
    scalar_t* dv = mptr<scalar_t>(dvalues);
    dispatch_channels(C, [&](auto ct) {
      constexpr int CT = decltype(ct)::value;
      at::parallel_for(0, R, kGrainRays, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> scratch(2 * K), e(kTileRays * K);
        acc_t* Tbuf = scratch.data();
        acc_t* Gbuf = scratch.data() + K;
        for (int64_t r0 = begin; r0 < end; r0 += kTileRays) {
          const int64_t r1 = std::min(end, r0 + kTileRays);
          exp_neg_tile(s + r0 * K, e.data(), (r1 - r0) * K);
          for (int64_t r = r0; r < r1; ++r) {
            ray_backward<CT, scalar_t, acc_t>(
                s + r * K, e.data() + (r - r0) * K, v + r * K * C, m ? m + r * K : nullptr,
                go + r * C, gw ? gw + r * K : nullptr, K, C, value_mask_from, num_masked_near,
                ds ? ds + r * K : nullptr, dv ? dv + r * K * C : nullptr, Tbuf, Gbuf);
          }
        }
      });
    });
  });
}

namespace {
// Calls fn(r, e) for every ray r, with e = exp(-sigma[r]) (K values), computed a tile of rays
// at a time; rays are split over the OpenMP threads.
template <typename scalar_t, typename Fn>
void for_each_ray_exp(const scalar_t* s, int64_t R, int64_t K, Fn&& fn) {
  at::parallel_for(0, R, kGrainRays, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> e(kTileRays * K);
    for (int64_t r0 = begin; r0 < end; r0 += kTileRays) {
      const int64_t r1 = std::min(end, r0 + kTileRays);
      exp_neg_tile(s + r0 * K, e.data(), (r1 - r0) * K);
      for (int64_t r = r0; r < r1; ++r) fn(r, e.data() + (r - r0) * K);
    }
  });
}
}  // namespace

void composite_argmax_cpu(const at::Tensor& sigma, at::Tensor& index) {
  const int64_t R = sigma.size(0), K = sigma.size(1);
  AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "composite_argmax_cpu", [&] {
    const scalar_t* s = sigma.data_ptr<scalar_t>();
    int64_t* idx = index.data_ptr<int64_t>();
    for_each_ray_exp(s, R, K, [&](int64_t r, const scalar_t* e) {
      idx[r] = ray_argmax<scalar_t, scalar_t>(s + r * K, e, K);
    });
  });
}

void occlusion_score_cpu(const at::Tensor& sigma, const at::Tensor& depths,
                         const at::Tensor& depth_limit, at::Tensor& score) {
  const int64_t R = sigma.size(0), K = sigma.size(1);
  AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "occlusion_score_cpu", [&] {
    const scalar_t* s = sigma.data_ptr<scalar_t>();
    const scalar_t* d = depths.data_ptr<scalar_t>();
    const scalar_t* lim = depth_limit.data_ptr<scalar_t>();
    scalar_t* out = score.data_ptr<scalar_t>();
    for_each_ray_exp(s, R, K, [&](int64_t r, const scalar_t* e) {
      out[r] = static_cast<scalar_t>(ray_occlusion<scalar_t, scalar_t>(s + r * K, e, d + r * K,
                                                                        lim[r], K));
    });
  });
}

}  // namespace composite
}  // namespace omnifast
