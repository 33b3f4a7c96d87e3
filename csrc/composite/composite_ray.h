// Per-ray compositing math shared by the C++ CPU kernels and the CUDA kernels.
//
// One ray has K samples with density sigma_k and C value channels v_kc:
//   e_k     = exp(-sigma_k)
//   alpha_k = (1 - e_k) * keep_k           (keep_k = 0 for the first `num_near` samples,
//                                           spec 3.2; a product, so NaN still propagates)
//   f_k     = (1 - alpha_k) + 1e-10        (OmniMotion's factor, kept exactly)
//   T_0 = 1, T_{k+1} = T_k * f_k           (exclusive transmittance, a running product)
//   w_k     = alpha_k * T_k
//   out_c   = sum_k w_k * m_kc * v_kc      (m_kc = value_mask_k for c >= mask_from, else 1)
//
// Backward, with g_k = dL/dw_k + sum_c dL/dout_c * m_kc * v_kc:
//   dv_kc     = w_k * m_kc * dout_c
//   U_{K-1}   = 0,  U_{k-1} = g_k * alpha_k + f_k * U_k
//   dL/dalpha_k = T_k * (g_k - U_k)
//   dsigma_k  = dL/dalpha_k * e_k * keep_k
// U_k = sum_{j>k} g_j alpha_j prod_{k<i<j} f_i is the derivative of the loss through the
// transmittance of sample k with the factor T_k pulled out, so no division by f_k (which can be
// 1e-10) or by T (which can underflow to 0) is ever needed.
//
// Transmittance is carried as a running product in the accumulation type, like the reference's
// cumprod; it is never clamped and no ray is cut short, so NaN and Inf propagate exactly as in
// the reference.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define OMNIFAST_HD __host__ __device__ __forceinline__
#define OMNIFAST_UNROLL _Pragma("unroll")
#else
#define OMNIFAST_HD inline __attribute__((always_inline))
#define OMNIFAST_UNROLL _Pragma("GCC unroll 16")
#endif

namespace omnifast {
namespace composite {

// Most samples per ray the CUDA backward keeps in per-thread arrays.
constexpr int kCudaMaxSamples = 128;

template <typename acc_t>
OMNIFAST_HD acc_t transmittance_eps() {
  return static_cast<acc_t>(1e-10);
}

template <typename acc_t>
OMNIFAST_HD acc_t exp_neg(acc_t s) {
#ifdef __CUDA_ARCH__
  return exp(-s);
#else
  return std::exp(-s);
#endif
}

// exp(-sigma_k): precomputed (e_pre, the CPU kernels compute a whole tile with SIMD first) or
// computed here (e_pre == nullptr).
template <typename scalar_t, typename acc_t>
OMNIFAST_HD acc_t sample_e(const scalar_t* sigma, const acc_t* e_pre, int64_t k) {
  return e_pre != nullptr ? e_pre[k] : exp_neg<acc_t>(static_cast<acc_t>(sigma[k]));
}

// Forward of one ray. CT > 0: compile-time channel count (accumulators in registers);
// CT == 0: runtime C, accumulated in `out` directly.
// mask: per-sample value mask or nullptr. weights: output or nullptr.
template <int CT, typename scalar_t, typename acc_t>
OMNIFAST_HD void ray_forward(const scalar_t* sigma, const acc_t* e_pre, const scalar_t* values,
                             const scalar_t* mask, int64_t K, int64_t C_rt, int64_t mask_from, int64_t num_near,
                             scalar_t* out, scalar_t* weights) {
  const int64_t C = CT > 0 ? CT : C_rt;
  acc_t acc[CT > 0 ? CT : 1];
  if constexpr (CT > 0) {
OMNIFAST_UNROLL
    for (int c = 0; c < CT; ++c) acc[c] = acc_t(0);
  } else {
    for (int64_t c = 0; c < C; ++c) out[c] = scalar_t(0);
  }
  acc_t T = acc_t(1);
  for (int64_t k = 0; k < K; ++k) {
    const acc_t e = sample_e<scalar_t, acc_t>(sigma, e_pre, k);
    const acc_t a = (acc_t(1) - e) * (k < num_near ? acc_t(0) : acc_t(1));
    const acc_t w = a * T;
    T *= (acc_t(1) - a) + transmittance_eps<acc_t>();
    if (weights != nullptr) weights[k] = static_cast<scalar_t>(w);
    const acc_t wm = mask != nullptr ? w * static_cast<acc_t>(mask[k]) : w;
    const scalar_t* vk = values + k * C;
    if constexpr (CT > 0) {
OMNIFAST_UNROLL
      for (int c = 0; c < CT; ++c) {
        acc[c] += (c >= mask_from ? wm : w) * static_cast<acc_t>(vk[c]);
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        out[c] = static_cast<scalar_t>(static_cast<acc_t>(out[c]) +
                                       (c >= mask_from ? wm : w) * static_cast<acc_t>(vk[c]));
      }
    }
  }
  if constexpr (CT > 0) {
OMNIFAST_UNROLL
    for (int c = 0; c < CT; ++c) out[c] = static_cast<scalar_t>(acc[c]);
  }
}

// Backward of one ray. dweights, dvalues, dsigma may be nullptr (not needed / not requested).
// Tbuf, Gbuf: scratch of K accumulators each (only used when dsigma != nullptr). dsigma itself
// holds exp(-sigma_k) between the two passes when e_pre is nullptr.
template <int CT, typename scalar_t, typename acc_t>
OMNIFAST_HD void ray_backward(const scalar_t* sigma, const acc_t* e_pre, const scalar_t* values,
                              const scalar_t* mask,
                              const scalar_t* dout, const scalar_t* dweights, int64_t K,
                              int64_t C_rt, int64_t mask_from, int64_t num_near,
                              scalar_t* dsigma, scalar_t* dvalues, acc_t* Tbuf, acc_t* Gbuf) {
  const int64_t C = CT > 0 ? CT : C_rt;
  acc_t go[CT > 0 ? CT : 1];
  if constexpr (CT > 0) {
OMNIFAST_UNROLL
    for (int c = 0; c < CT; ++c) go[c] = static_cast<acc_t>(dout[c]);
  }
  // Pass 1 (front to back): transmittance, dL/dw_k, the value gradients.
  acc_t T = acc_t(1);
  for (int64_t k = 0; k < K; ++k) {
    const acc_t e = sample_e<scalar_t, acc_t>(sigma, e_pre, k);
    const acc_t a = (acc_t(1) - e) * (k < num_near ? acc_t(0) : acc_t(1));
    const acc_t w = a * T;
    const acc_t mk = mask != nullptr ? static_cast<acc_t>(mask[k]) : acc_t(1);
    const scalar_t* vk = values + k * C;
    acc_t g_plain = acc_t(0), g_masked = acc_t(0);
    if constexpr (CT > 0) {
OMNIFAST_UNROLL
      for (int c = 0; c < CT; ++c) {
        const acc_t p = go[c] * static_cast<acc_t>(vk[c]);
        if (c >= mask_from) g_masked += p; else g_plain += p;
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const acc_t p = static_cast<acc_t>(dout[c]) * static_cast<acc_t>(vk[c]);
        if (c >= mask_from) g_masked += p; else g_plain += p;
      }
    }
    if (dvalues != nullptr) {
      scalar_t* dvk = dvalues + k * C;
      const acc_t wm = w * mk;
      if constexpr (CT > 0) {
OMNIFAST_UNROLL
        for (int c = 0; c < CT; ++c) dvk[c] = static_cast<scalar_t>((c >= mask_from ? wm : w) * go[c]);
      } else {
        for (int64_t c = 0; c < C; ++c) {
          dvk[c] = static_cast<scalar_t>((c >= mask_from ? wm : w) * static_cast<acc_t>(dout[c]));
        }
      }
    }
    if (dsigma != nullptr) {
      acc_t g = g_plain + mk * g_masked;
      if (dweights != nullptr) g += static_cast<acc_t>(dweights[k]);
      Tbuf[k] = T;
      Gbuf[k] = g;
      if (e_pre == nullptr) dsigma[k] = static_cast<scalar_t>(e);
    }
    T *= (acc_t(1) - a) + transmittance_eps<acc_t>();
  }
  if (dsigma == nullptr) return;
  // Pass 2 (back to front): the transmittance part of the sigma gradient.
  acc_t U = acc_t(0);
  for (int64_t k = K - 1; k >= 0; --k) {
    const acc_t e = e_pre != nullptr ? e_pre[k] : static_cast<acc_t>(dsigma[k]);
    const acc_t keep = k < num_near ? acc_t(0) : acc_t(1);
    const acc_t a = (acc_t(1) - e) * keep;
    const acc_t g = Gbuf[k];
    const acc_t dalpha = Tbuf[k] * (g - U);
    dsigma[k] = static_cast<scalar_t>(dalpha * e * keep);
    U = g * a + ((acc_t(1) - a) + transmittance_eps<acc_t>()) * U;
  }
}

// Argmax of the weights (first maximum on ties; a NaN weight counts as the maximum, as in
// torch.argmax).
template <typename scalar_t, typename acc_t>
OMNIFAST_HD int64_t ray_argmax(const scalar_t* sigma, const acc_t* e_pre, int64_t K) {
  acc_t T = acc_t(1);
  acc_t best = acc_t(0);
  int64_t best_k = 0;
  bool best_nan = false;
  for (int64_t k = 0; k < K; ++k) {
    const acc_t e = sample_e<scalar_t, acc_t>(sigma, e_pre, k);
    const acc_t a = acc_t(1) - e;
    const acc_t w = a * T;
    T *= (acc_t(1) - a) + transmittance_eps<acc_t>();
    if (best_nan) continue;
    if (w != w) {
      best_nan = true;
      best_k = k;
    } else if (k == 0 || w > best) {
      best = w;
      best_k = k;
    }
  }
  return best_k;
}

// sum_k w_k [depth_k < limit].
template <typename scalar_t, typename acc_t>
OMNIFAST_HD acc_t ray_occlusion(const scalar_t* sigma, const acc_t* e_pre, const scalar_t* depths,
                                scalar_t limit, int64_t K) {
  acc_t T = acc_t(1);
  acc_t score = acc_t(0);
  for (int64_t k = 0; k < K; ++k) {
    const acc_t e = sample_e<scalar_t, acc_t>(sigma, e_pre, k);
    const acc_t a = acc_t(1) - e;
    const acc_t w = a * T;
    T *= (acc_t(1) - a) + transmittance_eps<acc_t>();
    score += w * (depths[k] < limit ? acc_t(1) : acc_t(0));  // a NaN weight still shows
  }
  return score;
}

}  // namespace composite
}  // namespace omnifast
