// Host launchers for the multi-scale deformable attention kernels (ATen tensors in, ATen tensors out).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that needs cuSPARSE/cuBLAS headers

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>

#include "ms_deform_attn_kernels.cuh"

namespace {

constexpr int kThreads = 256;  // 8 warps per block, one warp per (n, q, m)

// at::Half / at::BFloat16 share the layout of the CUDA types used by the kernels.
template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

int64_t num_blocks(int64_t warps) {
  const int64_t blocks = (warps * 32 + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 30));  // grid-stride beyond that
}

// Locations / weights either share value's dtype or are float32 (value half / bfloat16).
template <typename scalar_t, typename Fn>
void dispatch_loc(const at::Tensor& loc, Fn&& fn) {
  if (loc.scalar_type() == c10::CppTypeToScalarType<scalar_t>::value) {
    fn(static_cast<typename CudaType<scalar_t>::type*>(nullptr));
  } else {
    TORCH_CHECK(loc.scalar_type() == at::kFloat, "ms_deform_attn: sampling_locations dtype ", loc.scalar_type(),
                " must match value (", c10::CppTypeToScalarType<scalar_t>::value, ") or be float32");
    fn(static_cast<float*>(nullptr));
  }
}

}  // namespace

at::Tensor msda_forward_cuda(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                             const at::Tensor& loc, const at::Tensor& attn) {
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = loc.size(1);
  const int L = static_cast<int>(loc.size(3)), P = static_cast<int>(loc.size(4));
  auto out = at::empty({N, Lq, M, D}, value.options());
  const int64_t warps = N * Lq * M;
  if (warps == 0 || D == 0) return out.view({N, Lq, M * D});
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    using vec_t = typename CudaType<scalar_t>::type;
    dispatch_loc<scalar_t>(loc, [&](auto* tag) {
      using loc_t = std::remove_pointer_t<decltype(tag)>;
      msda::msda_forward_kernel<vec_t, loc_t><<<num_blocks(warps), kThreads, 0, stream>>>(
          reinterpret_cast<const vec_t*>(value.const_data_ptr<scalar_t>()), shapes.const_data_ptr<int64_t>(),
          starts.const_data_ptr<int64_t>(), reinterpret_cast<const loc_t*>(loc.const_data_ptr()),
          reinterpret_cast<const loc_t*>(attn.const_data_ptr()), reinterpret_cast<vec_t*>(out.data_ptr<scalar_t>()),
          N, S, M, D, Lq, L, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out.view({N, Lq, M * D});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward_cuda(const at::Tensor& value, const at::Tensor& shapes,
                                                                  const at::Tensor& starts, const at::Tensor& loc,
                                                                  const at::Tensor& attn,
                                                                  const at::Tensor& grad_out, bool deterministic) {
  const c10::cuda::CUDAGuard guard(value.device());
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = loc.size(1);
  const int L = static_cast<int>(loc.size(3)), P = static_cast<int>(loc.size(4));
  const auto acc_dtype = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto acc_opts = value.options().dtype(acc_dtype);
  // Deterministic: fixed-point int64 value gradient. |partial sums| <= sum|attn| * max|grad_out| =: bound, so
  // scale = 2^(62 - exponent(bound)) (bound < 2^exponent) cannot overflow, at any magnitude of the inputs
  // (no cap: grad_out of 1e-38 keeps float32 accuracy); resolution ~bound / 2^62. A non-finite bound (NaN /
  // inf weights or grad_out) makes the deterministic value gradient all NaN. Same rule as ops/fixed_point.py.
  double fixed_scale = 1.0;
  bool non_finite_bound = false;
  if (deterministic && grad_out.numel() > 0 && attn.numel() > 0) {
    const auto stats = at::stack({attn.to(at::kDouble).abs().sum(), grad_out.to(at::kDouble).abs().max()})
                           .to(at::kCPU);  // one sync
    const double bound = stats[0].item<double>() * stats[1].item<double>();
    if (!std::isfinite(bound)) {
      non_finite_bound = true;
    } else if (bound > 0) {
      int exponent = 0;
      std::frexp(bound, &exponent);  // bound = f * 2^exponent, 0.5 <= f < 1
      fixed_scale = std::ldexp(1.0, std::min(std::max(62 - exponent, -960), 960));
    }
  }
  auto grad_value = at::zeros(value.sizes(), deterministic ? value.options().dtype(at::kLong) : acc_opts);
  auto grad_loc = at::empty(loc.sizes(), acc_opts);
  auto grad_attn = at::empty(attn.sizes(), acc_opts);
  const int64_t warps = N * Lq * M;
  if (warps == 0 || D == 0) {
    grad_loc.zero_();
    grad_attn.zero_();
    return {grad_value.to(acc_dtype), grad_loc, grad_attn};
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
    using vec_t = typename CudaType<scalar_t>::type;
    using acc_t = typename msda::AccType<vec_t>::type;
    dispatch_loc<scalar_t>(loc, [&](auto* tag) {
      using loc_t = std::remove_pointer_t<decltype(tag)>;
      auto launch = [&](auto* gv) {
        using gv_t = std::remove_pointer_t<decltype(gv)>;
        msda::msda_backward_kernel<vec_t, loc_t, gv_t><<<num_blocks(warps), kThreads, 0, stream>>>(
            reinterpret_cast<const vec_t*>(value.const_data_ptr<scalar_t>()), shapes.const_data_ptr<int64_t>(),
            starts.const_data_ptr<int64_t>(), reinterpret_cast<const loc_t*>(loc.const_data_ptr()),
            reinterpret_cast<const loc_t*>(attn.const_data_ptr()),
            reinterpret_cast<const vec_t*>(grad_out.const_data_ptr<scalar_t>()), gv, grad_loc.data_ptr<acc_t>(),
            grad_attn.data_ptr<acc_t>(), N, S, M, D, Lq, L, P, fixed_scale);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (deterministic) {
        launch(reinterpret_cast<unsigned long long*>(grad_value.data_ptr<int64_t>()));
      } else {
        launch(grad_value.data_ptr<acc_t>());
      }
    });
  });
  if (deterministic) {
    grad_value = (grad_value.to(at::kDouble) / fixed_scale).to(acc_dtype);
    if (non_finite_bound) grad_value.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return {grad_value, grad_loc, grad_attn};
}
