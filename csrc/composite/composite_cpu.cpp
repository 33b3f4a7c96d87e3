// composite CPU kernels: rays split over OpenMP threads (at::parallel_for), the per-ray math of
// composite_ray.h, specialised for the usual channel counts.
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <type_traits>
#include <vector>

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

}  // namespace

void composite_fwd_cpu(const at::Tensor& sigma, const at::Tensor& values,
                       const at::Tensor* value_mask, int64_t value_mask_from,
                       int64_t num_masked_near, at::Tensor& out, at::Tensor* weights) {
  const int64_t R = sigma.size(0), K = sigma.size(1), C = values.size(2);
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

void composite_argmax_cpu(const at::Tensor& sigma, at::Tensor& index) {
  const int64_t R = sigma.size(0), K = sigma.size(1);
  AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "composite_argmax_cpu", [&] {
    const scalar_t* s = sigma.data_ptr<scalar_t>();
    int64_t* idx = index.data_ptr<int64_t>();
    at::parallel_for(0, R, kGrainRays, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> e(kTileRays * K);
      for (int64_t r0 = begin; r0 < end; r0 += kTileRays) {
        const int64_t r1 = std::min(end, r0 + kTileRays);
        exp_neg_tile(s + r0 * K, e.data(), (r1 - r0) * K);
        for (int64_t r = r0; r < r1; ++r) {
          idx[r] = ray_argmax<scalar_t, scalar_t>(s + r * K, e.data() + (r - r0) * K, K);
        }
      }
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
    at::parallel_for(0, R, kGrainRays, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> e(kTileRays * K);
      for (int64_t r0 = begin; r0 < end; r0 += kTileRays) {
        const int64_t r1 = std::min(end, r0 + kTileRays);
        exp_neg_tile(s + r0 * K, e.data(), (r1 - r0) * K);
        for (int64_t r = r0; r < r1; ++r) {
          out[r] = static_cast<scalar_t>(ray_occlusion<scalar_t, scalar_t>(
              s + r * K, e.data() + (r - r0) * K, d + r * K, lim[r], K));
        }
      }
    });
  });
}

}  // namespace composite
}  // namespace omnifast
