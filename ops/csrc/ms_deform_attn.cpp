// Python bindings of the multi-scale deformable attention CUDA extension: input checks + contiguity.
//
// The checks mirror ops/checks.py (the public op runs those first and passes check_geometry=false, having
// validated the geometry once per geometry): dtypes, ranks, shapes and devices on every call (metadata only),
// and with check_geometry=true (the default for direct callers) the contents of spatial_shapes /
// level_start_index against value.shape[1] (one small device-to-host copy). The kernels additionally treat a
// level whose rows do not fit inside value as outside the map, so they never access memory out of bounds.
#include <torch/extension.h>

#include <sstream>
#include <string>
#include <tuple>

at::Tensor msda_forward_cuda(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                             const at::Tensor& loc, const at::Tensor& attn);
std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward_cuda(const at::Tensor& value, const at::Tensor& shapes,
                                                                  const at::Tensor& starts, const at::Tensor& loc,
                                                                  const at::Tensor& attn, const at::Tensor& grad_out,
                                                                  bool deterministic);

namespace {

bool is_float(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

// "[[H0, W0], [H1, W1]]" (pairs) or "[s0, s1]" for error messages.
std::string format_ints(const int64_t* v, int64_t n, bool pairs) {
  std::ostringstream os;
  os << "[";
  for (int64_t i = 0; i < n; ++i) {
    if (i) os << ", ";
    if (pairs) os << "[" << v[2 * i] << ", " << v[2 * i + 1] << "]";
    else os << v[i];
  }
  os << "]";
  return os.str();
}

void check_geometry(const at::Tensor& shapes, const at::Tensor& starts, int64_t rows) {
  const auto h_shapes = shapes.to(at::kCPU).contiguous();  // syncs with the device
  const auto h_starts = starts.to(at::kCPU).contiguous();
  const int64_t* hw = h_shapes.const_data_ptr<int64_t>();
  const int64_t* st = h_starts.const_data_ptr<int64_t>();
  const int64_t levels = h_shapes.size(0);
  int64_t total = 0;
  for (int64_t l = 0; l < levels; ++l) {
    TORCH_CHECK(hw[2 * l] >= 1 && hw[2 * l + 1] >= 1, "ms_deform_attn: spatial_shapes ", format_ints(hw, levels, true),
                " must be positive (H, W) per level");
    TORCH_CHECK(hw[2 * l] <= rows && hw[2 * l + 1] <= rows && hw[2 * l] * hw[2 * l + 1] <= rows - total,
                "ms_deform_attn: spatial_shapes ", format_ints(hw, levels, true), " need more rows of value (sum of H*W per "
                "level) than value.shape[1] = ", rows);
    total += hw[2 * l] * hw[2 * l + 1];
  }
  TORCH_CHECK(total == rows, "ms_deform_attn: spatial_shapes ", format_ints(hw, levels, true), " need ", total,
              " rows of value (sum of H*W per level) but value.shape[1] is ", rows);
  int64_t expected = 0;
  for (int64_t l = 0; l < levels; ++l) {
    TORCH_CHECK(st[l] == expected, "ms_deform_attn: level_start_index ", format_ints(st, levels, false), " must be the "
                "exclusive cumulative sum of H*W per level (level ", l, " starts at ", expected, ")");
    expected += hw[2 * l] * hw[2 * l + 1];
  }
}

void check_inputs(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& loc,
                  const at::Tensor& attn, bool geometry) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn (cuda): value must be a CUDA tensor, got ", value.device());
  TORCH_CHECK(is_float(value), "ms_deform_attn: value must be float16, bfloat16, float32 or float64, got ",
              value.scalar_type());
  TORCH_CHECK(is_float(loc) && is_float(attn), "ms_deform_attn: sampling_locations / attention_weights must be "
              "floating point, got ", loc.scalar_type(), " / ", attn.scalar_type());
  const std::pair<const char*, const at::Tensor*> named[] = {
      {"spatial_shapes", &shapes}, {"level_start_index", &starts}, {"sampling_locations", &loc},
      {"attention_weights", &attn}};
  for (const auto& [name, t] : named) {
    TORCH_CHECK(t->device() == value.device(), "ms_deform_attn (cuda): ", name, " is on ", t->device(),
                " but value is on ", value.device());
  }
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(loc.dim() == 6 && loc.size(5) == 2, "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), got ",
              loc.sizes());
  TORCH_CHECK(attn.sizes() == loc.sizes().slice(0, 5), "ms_deform_attn: attention_weights ", attn.sizes(),
              " must be (N, Lq, M, L, P) = ", loc.sizes().slice(0, 5));
  TORCH_CHECK(loc.size(0) == value.size(0) && loc.size(2) == value.size(2),
              "ms_deform_attn: batch / heads of sampling_locations ", loc.sizes(), " do not match value ", value.sizes());
  TORCH_CHECK(loc.scalar_type() == attn.scalar_type(), "ms_deform_attn: sampling_locations and attention_weights "
              "must share a dtype, got ", loc.scalar_type(), " and ", attn.scalar_type());
  TORCH_CHECK(loc.scalar_type() == value.scalar_type() || loc.scalar_type() == at::kFloat,
              "ms_deform_attn: sampling_locations dtype ", loc.scalar_type(), " must match value (",
              value.scalar_type(), ") or be float32");
  TORCH_CHECK(shapes.scalar_type() == at::kLong && starts.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64, got ", shapes.scalar_type(),
              " and ", starts.scalar_type());
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(1) == 2 && shapes.size(0) == loc.size(3),
              "ms_deform_attn: spatial_shapes must be (L, 2) with L = ", loc.size(3), ", got ", shapes.sizes());
  TORCH_CHECK(starts.dim() == 1 && starts.size(0) == loc.size(3),
              "ms_deform_attn: level_start_index must be (L,) with L = ", loc.size(3), ", got ", starts.sizes());
  if (geometry) check_geometry(shapes, starts, value.size(1));
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& loc,
                   const at::Tensor& attn, bool check_geometry) {
  check_inputs(value, shapes, starts, loc, attn, check_geometry);
  return msda_forward_cuda(value.contiguous(), shapes.contiguous(), starts.contiguous(), loc.contiguous(),
                           attn.contiguous());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& value, const at::Tensor& shapes,
                                                        const at::Tensor& starts, const at::Tensor& loc,
                                                        const at::Tensor& attn, const at::Tensor& grad_out,
                                                        bool deterministic, bool check_geometry) {
  check_inputs(value, shapes, starts, loc, attn, check_geometry);
  TORCH_CHECK(grad_out.device() == value.device(), "ms_deform_attn (cuda): grad_output is on ", grad_out.device(),
              " but value is on ", value.device());
  TORCH_CHECK(is_float(grad_out), "ms_deform_attn: grad_output must be floating point, got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.numel() == loc.size(0) * loc.size(1) * value.size(2) * value.size(3),
              "ms_deform_attn: grad_output has ", grad_out.numel(), " elements, expected N*Lq*M*D = ",
              loc.size(0) * loc.size(1) * value.size(2) * value.size(3));
  return msda_backward_cuda(value.contiguous(), shapes.contiguous(), starts.contiguous(), loc.contiguous(),
                            attn.contiguous(), grad_out.to(value.scalar_type()).contiguous(), deterministic);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "Multi-scale deformable attention (vit_adapter_ds.ops)";
  m.def("forward", &forward, "ms_deform_attn forward -> (N, Lq, M*D)", py::arg("value"), py::arg("spatial_shapes"),
        py::arg("level_start_index"), py::arg("sampling_locations"), py::arg("attention_weights"),
        py::arg("check_geometry") = true);
  m.def("backward", &backward,
        "ms_deform_attn backward(..., grad_out, deterministic) -> (grad_value, grad_sampling_locations, "
        "grad_attention_weights) in float32 (float64 for float64 value); deterministic=True accumulates the "
        "value gradient in fixed point (bitwise reproducible)",
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("grad_output"), py::arg("deterministic") = false,
        py::arg("check_geometry") = true);
}
