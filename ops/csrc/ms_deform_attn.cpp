// Python bindings of the multi-scale deformable attention CUDA extension (input checks + contiguity).
#include <torch/extension.h>

#include <tuple>

at::Tensor msda_forward_cuda(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                             const at::Tensor& loc, const at::Tensor& attn);
std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward_cuda(const at::Tensor& value, const at::Tensor& shapes,
                                                                  const at::Tensor& starts, const at::Tensor& loc,
                                                                  const at::Tensor& attn, const at::Tensor& grad_out,
                                                                  bool deterministic);

namespace {

void check_inputs(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& loc,
                  const at::Tensor& attn) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn (cuda): value must be a CUDA tensor");
  for (const auto* t : {&shapes, &starts, &loc, &attn}) {
    TORCH_CHECK(t->device() == value.device(), "ms_deform_attn (cuda): all inputs must be on ", value.device());
  }
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(loc.dim() == 6 && loc.size(5) == 2, "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), got ",
              loc.sizes());
  TORCH_CHECK(attn.sizes() == loc.sizes().slice(0, 5), "ms_deform_attn: attention_weights ", attn.sizes(),
              " must be (N, Lq, M, L, P) = ", loc.sizes().slice(0, 5));
  TORCH_CHECK(loc.size(0) == value.size(0) && loc.size(2) == value.size(2),
              "ms_deform_attn: batch / heads of sampling_locations ", loc.sizes(), " do not match value ", value.sizes());
  TORCH_CHECK(loc.scalar_type() == attn.scalar_type(), "ms_deform_attn: sampling_locations and attention_weights "
              "must share a dtype");
  TORCH_CHECK(shapes.scalar_type() == at::kLong && starts.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(1) == 2 && shapes.size(0) == loc.size(3) && starts.numel() == loc.size(3),
              "ms_deform_attn: spatial_shapes must be (L, 2) and level_start_index (L,), L = ", loc.size(3));
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& loc,
                   const at::Tensor& attn) {
  check_inputs(value, shapes, starts, loc, attn);
  return msda_forward_cuda(value.contiguous(), shapes.contiguous(), starts.contiguous(), loc.contiguous(),
                           attn.contiguous());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& value, const at::Tensor& shapes,
                                                        const at::Tensor& starts, const at::Tensor& loc,
                                                        const at::Tensor& attn, const at::Tensor& grad_out,
                                                        bool deterministic) {
  check_inputs(value, shapes, starts, loc, attn);
  TORCH_CHECK(grad_out.numel() == loc.size(0) * loc.size(1) * value.size(2) * value.size(3),
              "ms_deform_attn: grad_output has ", grad_out.numel(), " elements, expected N*Lq*M*D");
  return msda_backward_cuda(value.contiguous(), shapes.contiguous(), starts.contiguous(), loc.contiguous(),
                            attn.contiguous(), grad_out.to(value.scalar_type()).contiguous(), deterministic);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Multi-scale deformable attention (vit_adapter_ds.ops)";
  m.def("forward", &forward, "ms_deform_attn forward -> (N, Lq, M*D)");
  m.def("backward", &backward,
        "ms_deform_attn backward(..., grad_out, deterministic) -> (grad_value, grad_sampling_locations, "
        "grad_attention_weights) in float32 (float64 for float64 value); deterministic=True accumulates the "
        "value gradient in fixed point (bitwise reproducible)");
}
