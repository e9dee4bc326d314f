// torch.library bindings for the vaopd CUDA kernels (compiled only where a CUDA build of torch exists).
//
// Ops (namespace "vaopd"); every tensor is on one CUDA device, logits are float32 or float64 [rows, V]
// chunks with unit column stride (raw logits r = W h). A head transform (bias?, scale, softcap; see
// LogitTransformArgs: bias [V] of the logits' dtype, softcap <= 0 for none; the defaults are a plain
// head) turns them into z = c tanh(s (r + b) / c), then divided by the temperature:
//   view_stats(views, targets?, inv_temperature, want_entropy, bias?, scale, softcap)
//       -> (lse, target_logprob, entropy) each [num_views, rows]; target_logprob is empty without
//       targets, entropy empty unless asked. The views share the transform (one head's).
//   divergence(student!, teacher, targets?, row_grad?, divergence, beta, inv_temperature, grad_format,
//              student_bias?, student_scale, student_softcap, teacher_bias?, teacher_scale, teacher_softcap)
//       -> (kl, student_lse, student_logprob, student_entropy, teacher_logprob), each [rows]
//       (the log-probs are empty without targets). With row_grad the student chunk is overwritten
//       by row_grad[n] / T * d divergence_n / d r (grad_format 0: same dtype; 1/2: bf16/fp16
//       packed at the start of each row, see vaopd_kernels.cuh).
//   logprob_grad(student!, lse, targets, row_grad, inv_temperature, grad_format, bias?, scale, softcap) -> ()
//       student chunk := row_grad[n] / T * (onehot(y_n) - p_s) * dz/dr.
//   va_opd_coefficients(visual_advantage, cu_seqlens, prompt_ids, high_fraction, high_weight, va_temperature, eps,
//                  num_prompts) -> (token_weight [N] f64, rollout_weight [R] f64, high_mask [N] bool)
//       the VA-OPD objective's coefficients (visual_advantage float64, cu_seqlens/prompt_ids int64;
//       num_prompts 0 counts the distinct prompt ids). Offsets are trusted: the Python API validates them.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>
#include <vector>

#include "vaopd_kernels.cuh"

namespace {

using at::Tensor;

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "vaopd::", what, " failed: ", cudaGetErrorString(err), " ",
              vaopd::last_argument_error());
}

vaopd::LogitType logit_type(const Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": expected float32 or float64 logits, got ", t.scalar_type());
  return t.scalar_type() == at::kDouble ? vaopd::LogitType::kFloat64 : vaopd::LogitType::kFloat32;
}

void check_chunk(const Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor");
  TORCH_CHECK(t.dim() == 2, name, ": expected [rows, V], got ", t.sizes());
  TORCH_CHECK(t.stride(1) == 1 || t.size(1) == 1, name, ": expected unit column stride");
  TORCH_CHECK(t.size(0) <= 1 || t.stride(0) >= t.size(1), name, ": overlapping rows");
}

void check_rows(const Tensor& t, int64_t rows, at::ScalarType dtype, const char* name, const Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), name, ": expected device ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == rows, name, ": expected [", rows, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor");
}

int64_t row_stride(const Tensor& t) { return t.size(0) <= 1 ? t.size(1) : t.stride(0); }

vaopd::LogitTransformArgs head_transform(const c10::optional<Tensor>& bias, double scale, double softcap,
                                    const Tensor& chunk, const char* name) {
  vaopd::LogitTransformArgs t;
  if (bias) {
    check_rows(*bias, chunk.size(1), chunk.scalar_type(), name, chunk);
    t.bias = bias->data_ptr();
  }
  t.scale = scale;
  t.softcap = softcap;
  return t;
}

vaopd::GradFormat grad_format(int64_t code, const Tensor& student) {
  TORCH_CHECK(code >= 0 && code <= 2, "grad_format: expected 0 (same), 1 (bf16) or 2 (fp16), got ", code);
  TORCH_CHECK(code == 0 || student.scalar_type() == at::kFloat, "grad_format: packed half gradients need float32 logits");
  return static_cast<vaopd::GradFormat>(code);
}

std::tuple<Tensor, Tensor, Tensor> view_stats(const std::vector<Tensor>& views, const c10::optional<Tensor>& targets,
                                              double inv_temperature, bool want_entropy,
                                              const c10::optional<Tensor>& bias, double scale, double softcap) {
  TORCH_CHECK(!views.empty() && views.size() <= static_cast<size_t>(vaopd::kMaxViews), "views: expected 1 to ",
              vaopd::kMaxViews, " chunks, got ", views.size());
  const Tensor& first = views[0];
  check_chunk(first, "views[0]");
  const c10::cuda::CUDAGuard guard(first.device());
  vaopd::ViewStatsArgs a;
  a.rows = first.size(0);
  a.vocab = first.size(1);
  a.type = logit_type(first, "views[0]");
  a.num_views = static_cast<int>(views.size());
  a.inv_temperature = inv_temperature;
  a.transform = head_transform(bias, scale, softcap, first, "bias");
  const auto nv = static_cast<int64_t>(views.size());
  Tensor lse = at::empty({nv, a.rows}, first.options());
  Tensor lp = at::empty({targets ? nv : 0, targets ? a.rows : 0}, first.options());
  Tensor ent = at::empty({want_entropy ? nv : 0, want_entropy ? a.rows : 0}, first.options());
  if (targets) {
    check_rows(*targets, a.rows, at::kLong, "targets", first);
    a.targets = targets->data_ptr<int64_t>();
  }
  for (int i = 0; i < a.num_views; ++i) {
    const Tensor& v = views[i];
    check_chunk(v, "views[i]");
    TORCH_CHECK(v.sizes() == first.sizes() && v.scalar_type() == first.scalar_type() && v.device() == first.device(),
                "views: expected chunks of one shape, dtype and device");
    a.logits[i] = v.data_ptr();
    a.ld[i] = row_stride(v);
    a.lse[i] = lse[i].data_ptr();
    if (targets) a.target_logprob[i] = lp[i].data_ptr();
    if (want_entropy) a.entropy[i] = ent[i].data_ptr();
  }
  check_cuda(vaopd::view_stats(a, c10::cuda::getCurrentCUDAStream()), "view_stats");
  return {lse, lp, ent};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> divergence(Tensor student, const Tensor& teacher,
                                                              const c10::optional<Tensor>& targets,
                                                              const c10::optional<Tensor>& row_grad, int64_t kind,
                                                              double beta, double inv_temperature, int64_t fmt,
                                                              const c10::optional<Tensor>& student_bias,
                                                              double student_scale, double student_softcap,
                                                              const c10::optional<Tensor>& teacher_bias,
                                                              double teacher_scale, double teacher_softcap) {
  check_chunk(student, "student");
  check_chunk(teacher, "teacher");
  TORCH_CHECK(teacher.sizes() == student.sizes() && teacher.scalar_type() == student.scalar_type() &&
                  teacher.device() == student.device(),
              "teacher: expected the student chunk's shape, dtype and device");
  TORCH_CHECK(kind >= 0 && kind <= static_cast<int64_t>(vaopd::Divergence::kJSD),
              "divergence: expected a vaopd::Divergence value (vaopd_kernels.cuh), got ", kind);
  const c10::cuda::CUDAGuard guard(student.device());
  vaopd::DivergenceArgs a;
  a.rows = student.size(0);
  a.vocab = student.size(1);
  a.type = logit_type(student, "student");
  a.divergence = static_cast<vaopd::Divergence>(kind);
  a.beta = beta;
  a.inv_temperature = inv_temperature;
  a.student = student.data_ptr();
  a.ld_student = row_stride(student);
  a.teacher = teacher.data_ptr();
  a.ld_teacher = row_stride(teacher);
  a.student_transform = head_transform(student_bias, student_scale, student_softcap, student, "student_bias");
  a.teacher_transform = head_transform(teacher_bias, teacher_scale, teacher_softcap, teacher, "teacher_bias");
  const auto opts = student.options();
  Tensor kl = at::empty({a.rows}, opts);
  Tensor lse_s = at::empty({a.rows}, opts);
  Tensor ent = at::empty({a.rows}, opts);
  Tensor lp_s = at::empty({targets ? a.rows : 0}, opts);
  Tensor lp_t = at::empty({targets ? a.rows : 0}, opts);
  a.kl = kl.data_ptr();
  a.student_lse = lse_s.data_ptr();
  a.student_entropy = ent.data_ptr();
  if (targets) {
    check_rows(*targets, a.rows, at::kLong, "targets", student);
    a.targets = targets->data_ptr<int64_t>();
    a.student_logprob = lp_s.data_ptr();
    a.teacher_logprob = lp_t.data_ptr();
  }
  if (row_grad) {
    check_rows(*row_grad, a.rows, student.scalar_type(), "row_grad", student);
    a.row_grad = row_grad->data_ptr();
    a.grad_format = grad_format(fmt, student);
  }
  check_cuda(vaopd::divergence_stats(a, c10::cuda::getCurrentCUDAStream()), "divergence");
  return {kl, lse_s, lp_s, ent, lp_t};
}

void logprob_grad(Tensor student, const Tensor& lse, const Tensor& targets, const Tensor& row_grad,
                  double inv_temperature, int64_t fmt, const c10::optional<Tensor>& bias, double scale,
                  double softcap) {
  check_chunk(student, "student");
  const c10::cuda::CUDAGuard guard(student.device());
  vaopd::LogprobGradArgs a;
  a.rows = student.size(0);
  a.vocab = student.size(1);
  a.type = logit_type(student, "student");
  a.inv_temperature = inv_temperature;
  a.student = student.data_ptr();
  a.ld_student = row_stride(student);
  a.transform = head_transform(bias, scale, softcap, student, "bias");
  check_rows(lse, a.rows, student.scalar_type(), "lse", student);
  check_rows(targets, a.rows, at::kLong, "targets", student);
  check_rows(row_grad, a.rows, student.scalar_type(), "row_grad", student);
  a.lse = lse.data_ptr();
  a.targets = targets.data_ptr<int64_t>();
  a.row_grad = row_grad.data_ptr();
  a.grad_format = grad_format(fmt, student);
  check_cuda(vaopd::logprob_grad(a, c10::cuda::getCurrentCUDAStream()), "logprob_grad");
}

std::tuple<Tensor, Tensor, Tensor> va_opd_coefficients(const Tensor& visual_advantage, const Tensor& cu_seqlens,
                                                       const Tensor& prompt_ids, double high_fraction,
                                                       double high_weight, double va_temperature, double eps,
                                                       int64_t num_prompts) {
  TORCH_CHECK(visual_advantage.is_cuda() && visual_advantage.dim() == 1, "visual_advantage: expected a 1-D CUDA tensor");
  const int64_t rows = visual_advantage.size(0), rollouts = prompt_ids.numel();
  check_rows(visual_advantage, rows, at::kDouble, "visual_advantage", visual_advantage);
  check_rows(cu_seqlens, rollouts + 1, at::kLong, "cu_seqlens", visual_advantage);
  check_rows(prompt_ids, rollouts, at::kLong, "prompt_ids", visual_advantage);
  const c10::cuda::CUDAGuard guard(visual_advantage.device());
  const auto f64 = visual_advantage.options();
  Tensor token_weight = at::empty({rows}, f64);
  Tensor rollout_weight = at::empty({rollouts}, f64);
  Tensor high_mask = at::empty({rows}, f64.dtype(at::kBool));
  Tensor mean_va = at::empty({rollouts}, f64);
  Tensor distinct = at::empty({1}, f64.dtype(at::kLong));
  vaopd::VAOPDCoefficientsArgs a;
  a.num_rows = rows;
  a.num_rollouts = rollouts;
  a.visual_advantage = visual_advantage.data_ptr<double>();
  a.cu_seqlens = cu_seqlens.data_ptr<int64_t>();
  a.prompt_ids = prompt_ids.data_ptr<int64_t>();
  a.high_fraction = high_fraction;
  a.high_weight = high_weight;
  a.va_temperature = va_temperature;
  a.eps = eps;
  a.num_prompts = num_prompts;
  a.token_weight = token_weight.data_ptr<double>();
  a.rollout_weight = rollout_weight.data_ptr<double>();
  a.high_mask = high_mask.data_ptr<bool>();
  a.rollout_mean_va = mean_va.data_ptr<double>();
  a.distinct_prompts = reinterpret_cast<unsigned long long*>(distinct.data_ptr<int64_t>());
  check_cuda(vaopd::va_opd_coefficients(a, c10::cuda::getCurrentCUDAStream()), "va_opd_coefficients");
  return {token_weight, rollout_weight, high_mask};
}

}  // namespace

TORCH_LIBRARY(vaopd, m) {
  // the head transforms' defaults are a plain head
  m.def("view_stats(Tensor[] views, Tensor? targets, float inv_temperature, bool want_entropy, "
        "Tensor? bias=None, float scale=1.0, float softcap=0.0) -> (Tensor, Tensor, Tensor)");
  m.def("divergence(Tensor(a!) student, Tensor teacher, Tensor? targets, Tensor? row_grad, int divergence, "
        "float beta, float inv_temperature, int grad_format, Tensor? student_bias=None, float student_scale=1.0, "
        "float student_softcap=0.0, Tensor? teacher_bias=None, float teacher_scale=1.0, "
        "float teacher_softcap=0.0) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("logprob_grad(Tensor(a!) student, Tensor lse, Tensor targets, Tensor row_grad, float inv_temperature, "
        "int grad_format, Tensor? bias=None, float scale=1.0, float softcap=0.0) -> ()");
  m.def("va_opd_coefficients(Tensor visual_advantage, Tensor cu_seqlens, Tensor prompt_ids, float high_fraction, "
        "float high_weight, float va_temperature, float eps, int num_prompts) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vaopd, CUDA, m) {
  m.impl("view_stats", &view_stats);
  m.impl("divergence", &divergence);
  m.impl("logprob_grad", &logprob_grad);
  m.impl("va_opd_coefficients", &va_opd_coefficients);
}

// An (empty) Python module so that `import vaopd_kernels._cuda_ext` loads the library; importing
// it runs the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "vaopd CUDA kernels (ops under torch.ops.vaopd)"; }
