// Multi-scale deformable attention CUDA kernels (forward + backward), free of ATen so they compile fast.
//
// Layouts (all contiguous):
//   value      (N, S, M, D)          scalar_t   S = sum_l H_l * W_l
//   shapes     (L, 2) int64 (H, W)   starts (L,) int64
//   loc        (N, Lq, M, L, P, 2)   loc_t      normalised (x, y); pixel = (x * W - 0.5, y * H - 0.5)
//   attn       (N, Lq, M, L, P)      loc_t
//   out        (N, Lq, M, D)         scalar_t
// Semantics: grid_sample bilinear, align_corners=False, zeros outside the map. A sample whose location has a
// NaN / infinite coordinate is NaN: it makes its output row NaN, its attention-weight and location gradients
// NaN, and adds nothing to the value gradient (the documented contract of vit_adapter_ds.ops, all backends).
// Memory safety does not depend on the host's geometry check: a level whose rows [start, start + H*W) do not
// lie inside [0, S) is treated as outside the map (no load, no store).
//
// Mapping: one warp per (n, q, m); the lanes stride over the head dim (any D). Accumulation is in acc_t
// (float for half / bfloat16 / float, double for double); all offsets are int64.
// Backward: location / attention-weight gradients are reduced over D with warp shuffles and written by lane
// 0 (each (n, q, m, l, p) belongs to one warp); the value gradient is scattered with atomicAdd, either into an
// acc_t buffer (fast; float addition order varies, so not bitwise reproducible) or, for a deterministic
// backward, as fixed-point int64 (each contribution computed in double, rounded to a multiple of 1/scale, then
// integer atomics, which are associative: the result is independent of the order).
#pragma once

#include <cstdint>
#include <math.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace msda {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v) { return static_cast<T>(v); }

template <typename acc_t>
__device__ __forceinline__ acc_t quiet_nan() { return static_cast<acc_t>(NAN); }

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Bilinear setup of one sample: top-left corner (h0, w0), fractions (lh, lw) and corner validity.
template <typename acc_t>
struct Sample {
  int64_t h0, w0;
  acc_t lh, lw;
  bool v1, v2, v3, v4;  // (h0,w0) (h0,w0+1) (h0+1,w0) (h0+1,w0+1)
  bool any;
  bool finite;  // both coordinates finite (else the sample is NaN and touches no pixel)
};

// Whether level rows [start, start + H*W) lie inside value's S rows (always true for a checked geometry).
__device__ __forceinline__ bool level_fits(int64_t H, int64_t W, int64_t start, int64_t S) {
  return H > 0 && W > 0 && start >= 0 && start <= S && H <= (S - start) / W;  // H * W <= S - start, no overflow
}

template <typename acc_t>
__device__ __forceinline__ Sample<acc_t> make_sample(acc_t x, acc_t y, int64_t H, int64_t W, bool level_ok) {
  Sample<acc_t> s;
  s.finite = isfinite(x) && isfinite(y);
  acc_t hf = s.finite ? y * static_cast<acc_t>(H) - acc_t(0.5) : acc_t(-2);
  acc_t wf = s.finite ? x * static_cast<acc_t>(W) - acc_t(0.5) : acc_t(-2);
  // Clamp far-away (or huge) points so the integer cast stays defined; they stay outside the map.
  hf = fmin(fmax(hf, acc_t(-2)), static_cast<acc_t>(H + 1));
  wf = fmin(fmax(wf, acc_t(-2)), static_cast<acc_t>(W + 1));
  const acc_t h0f = floor(hf), w0f = floor(wf);
  s.h0 = static_cast<int64_t>(h0f);
  s.w0 = static_cast<int64_t>(w0f);
  s.lh = hf - h0f;
  s.lw = wf - w0f;
  const bool h_lo = level_ok && s.h0 >= 0 && s.h0 < H, h_hi = level_ok && s.h0 + 1 >= 0 && s.h0 + 1 < H;
  const bool w_lo = s.w0 >= 0 && s.w0 < W, w_hi = s.w0 + 1 >= 0 && s.w0 + 1 < W;
  s.v1 = h_lo && w_lo;
  s.v2 = h_lo && w_hi;
  s.v3 = h_hi && w_lo;
  s.v4 = h_hi && w_hi;
  s.any = s.v1 || s.v2 || s.v3 || s.v4;
  return s;
}

template <typename scalar_t, typename loc_t>
__global__ void msda_forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                                    const int64_t* __restrict__ starts, const loc_t* __restrict__ loc,
                                    const loc_t* __restrict__ attn, scalar_t* __restrict__ out, int64_t N, int64_t S,
                                    int64_t M, int64_t D, int64_t Lq, int L, int P) {
  using acc_t = typename AccType<scalar_t>::type;
  const int lane = threadIdx.x & 31;
  const int64_t total = N * Lq * M;
  const int64_t warps_per_grid = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < total;
       w += warps_per_grid) {
    const int64_t m = w % M;
    const int64_t n = w / (Lq * M);
    const int64_t lp_base = w * L * P;       // index of (n, q, m, 0, 0) in attn
    const int64_t v_base = n * S;            // row of (n, 0) in value
    for (int64_t d0 = 0; d0 < D; d0 += 32) {
      const int64_t d = d0 + lane;
      const bool d_ok = d < D;
      acc_t acc = 0;
      for (int l = 0; l < L; ++l) {
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
        const bool level_ok = level_fits(H, W, start, S);
        for (int p = 0; p < P; ++p) {
          const int64_t i = lp_base + l * P + p;
          const acc_t x = static_cast<acc_t>(to_acc(loc[2 * i])), y = static_cast<acc_t>(to_acc(loc[2 * i + 1]));
          const acc_t a = static_cast<acc_t>(to_acc(attn[i]));
          const Sample<acc_t> s = make_sample<acc_t>(x, y, H, W, level_ok);
          if (!s.finite) {
            acc += quiet_nan<acc_t>();
            continue;
          }
          if (!s.any || !d_ok) {
            acc += a * acc_t(0);  // a NaN / infinite weight still propagates, like the reference
            continue;
          }
          const acc_t hh = 1 - s.lh, hw = 1 - s.lw;
          const int64_t base = ((v_base + start + s.h0 * W + s.w0) * M + m) * D + d;  // (h0, w0)
          const int64_t dw = M * D, dh = W * M * D;
          acc_t v = 0;
          if (s.v1) v += hh * hw * to_acc(value[base]);
          if (s.v2) v += hh * s.lw * to_acc(value[base + dw]);
          if (s.v3) v += s.lh * hw * to_acc(value[base + dh]);
          if (s.v4) v += s.lh * s.lw * to_acc(value[base + dh + dw]);
          acc += a * v;
        }
      }
      if (d_ok) out[w * D + d] = from_acc<scalar_t>(acc);
    }
  }
}

// Value-gradient scatter of the contribution a * go * w: floating atomics of (a * go) * w, or fixed point:
// round(a * go * w * scale) computed in double (exact for float32 factors, subnormal grad_output included),
// added as a two's-complement int64; the host picks the power-of-two scale so that no partial sum can overflow.
template <typename acc_t>
__device__ __forceinline__ void scatter_add(acc_t* p, acc_t ag, acc_t, acc_t, acc_t w, double) {
  atomicAdd(p, ag * w);
}
template <typename acc_t>
__device__ __forceinline__ void scatter_add(unsigned long long* p, acc_t, acc_t a, acc_t go, acc_t w, double scale) {
  const double v = static_cast<double>(a) * static_cast<double>(w) * static_cast<double>(go) * scale;
  atomicAdd(p, static_cast<unsigned long long>(static_cast<long long>(floor(v + 0.5))));
}

// grad_loc / grad_attn are acc_t buffers; grad_value is gv_t (acc_t, or unsigned long long for fixed point),
// zero-initialised. fixed_scale is only used for fixed point.
template <typename scalar_t, typename loc_t, typename gv_t>
__global__ void msda_backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                                     const int64_t* __restrict__ starts, const loc_t* __restrict__ loc,
                                     const loc_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                                     gv_t* __restrict__ grad_value,
                                     typename AccType<scalar_t>::type* __restrict__ grad_loc,
                                     typename AccType<scalar_t>::type* __restrict__ grad_attn, int64_t N, int64_t S,
                                     int64_t M, int64_t D, int64_t Lq, int L, int P, double fixed_scale) {
  using acc_t = typename AccType<scalar_t>::type;
  const int lane = threadIdx.x & 31;
  const int64_t total = N * Lq * M;
  const int64_t warps_per_grid = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < total;
       w += warps_per_grid) {
    const int64_t m = w % M;
    const int64_t n = w / (Lq * M);
    const int64_t lp_base = w * L * P;
    const int64_t v_base = n * S;
    for (int l = 0; l < L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
      const bool level_ok = level_fits(H, W, start, S);
      for (int p = 0; p < P; ++p) {
        const int64_t i = lp_base + l * P + p;
        const acc_t x = static_cast<acc_t>(to_acc(loc[2 * i])), y = static_cast<acc_t>(to_acc(loc[2 * i + 1]));
        const acc_t a = static_cast<acc_t>(to_acc(attn[i]));
        const Sample<acc_t> s = make_sample<acc_t>(x, y, H, W, level_ok);
        if (!s.finite) {  // a NaN sample: NaN gradients, nothing scattered (whole warp agrees)
          if (lane == 0) {
            grad_attn[i] = quiet_nan<acc_t>();
            grad_loc[2 * i] = quiet_nan<acc_t>();
            grad_loc[2 * i + 1] = quiet_nan<acc_t>();
          }
          continue;
        }
        if (!s.any) {  // whole warp agrees: the sample does not depend on d
          if (lane == 0) {
            grad_attn[i] = 0;
            grad_loc[2 * i] = 0;
            grad_loc[2 * i + 1] = 0;
          }
          continue;
        }
        const acc_t hh = 1 - s.lh, hw = 1 - s.lw;
        const acc_t w1 = hh * hw, w2 = hh * s.lw, w3 = s.lh * hw, w4 = s.lh * s.lw;
        const int64_t dw = M * D, dh = W * M * D;
        const int64_t base0 = ((v_base + start + s.h0 * W + s.w0) * M + m) * D;
        acc_t g_a = 0, g_lw = 0, g_lh = 0;
        for (int64_t d = lane; d < D; d += 32) {
          const acc_t go = to_acc(grad_out[w * D + d]);
          const int64_t base = base0 + d;
          const acc_t v1 = s.v1 ? to_acc(value[base]) : acc_t(0);
          const acc_t v2 = s.v2 ? to_acc(value[base + dw]) : acc_t(0);
          const acc_t v3 = s.v3 ? to_acc(value[base + dh]) : acc_t(0);
          const acc_t v4 = s.v4 ? to_acc(value[base + dh + dw]) : acc_t(0);
          g_a += go * (w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4);
          g_lw += go * (hh * (v2 - v1) + s.lh * (v4 - v3));
          g_lh += go * (hw * (v3 - v1) + s.lw * (v4 - v2));
          const acc_t ag = a * go;
          if (s.v1) scatter_add(grad_value + base, ag, a, go, w1, fixed_scale);
          if (s.v2) scatter_add(grad_value + base + dw, ag, a, go, w2, fixed_scale);
          if (s.v3) scatter_add(grad_value + base + dh, ag, a, go, w3, fixed_scale);
          if (s.v4) scatter_add(grad_value + base + dh + dw, ag, a, go, w4, fixed_scale);
        }
        g_a = warp_sum(g_a);
        g_lw = warp_sum(g_lw);
        g_lh = warp_sum(g_lh);
        if (lane == 0) {
          grad_attn[i] = g_a;
          grad_loc[2 * i] = a * g_lw * static_cast<acc_t>(W);
          grad_loc[2 * i + 1] = a * g_lh * static_cast<acc_t>(H);
        }
      }
    }
  }
}

}  // namespace msda
