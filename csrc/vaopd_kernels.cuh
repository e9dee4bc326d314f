// vaopd CUDA kernels: row statistics of fp32/fp64 logit chunks and the VA-OPD objective's weights
// (plain CUDA C++, no torch headers).
//
// Every function takes raw device pointers, sizes, row strides (in elements of the logit type) and
// a cudaStream_t, launches its kernel(s) on that stream and returns the launch's cudaError_t
// (cudaSuccess on success; invalid arguments give cudaErrorInvalidValue before any launch).
//
// Logit chunks hold raw logits r = W h. The kernels apply each view's head transform as they read
// them (z = c tanh(s (r + b) / c), LogitTransformArgs), then scale by inv_temperature.
// Math (docs/math.md): lse, reverse/forward KL with the accurate log-normaliser gap,
// generalized JSD, target log-probs, student entropy, and d(row_grad[n] * D_n)/d(W h) written in
// place over the student logits.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace vaopd {

enum class LogitType : int { kFloat32 = 0, kFloat64 = 1 };

// How the in-place gradient is stored in the student logit buffer.
//   kSame:     same type as the logits, element v of row n at logits[n * ld + v].
//   kBFloat16 / kFloat16 (float32 logits only): packed at the start of each row's storage,
//              element v of row n at ((uint16_t*)(logits + n * ld))[v], i.e. a half-precision
//              [rows, V] matrix with row stride 2 * ld (elements), ready for a bf16/fp16 GEMM.
enum class GradFormat : int { kSame = 0, kBFloat16 = 1, kFloat16 = 2 };

// base.Divergence's values (vaopd_kernels/backends/base.py; tests/kernels/test_divergence_codes.py checks them)
enum class Divergence : int { kReverse = 0, kForward = 1, kJSD = 2 };

constexpr int kMaxViews = 3;

// An LM head's logit transform (vaopd_kernels/lm_head.py): z = c tanh(s (r + b) / c), or s (r + b)
// without a soft-cap, for raw logit r of vocabulary column v. The default is the identity, whose
// arithmetic is exactly that of a plain head.
struct LogitTransformArgs {
  const void* bias = nullptr;  // [vocab] of the logit type, contiguous, or null (b = 0)
  double scale = 1.0;          // s
  double softcap = 0.0;        // c; <= 0: no soft-cap
};

// Per-view statistics for up to kMaxViews views of the same rows (one launch, grid y = view).
struct ViewStatsArgs {
  int64_t rows = 0;
  int64_t vocab = 0;
  LogitType type = LogitType::kFloat32;
  int num_views = 0;
  const void* logits[kMaxViews] = {nullptr, nullptr, nullptr};
  int64_t ld[kMaxViews] = {0, 0, 0};
  const int64_t* targets = nullptr;   // [rows] or null (no target log-prob)
  double inv_temperature = 1.0;
  LogitTransformArgs transform;        // shared by the views: one head's (the teacher's on both images)
  // outputs, each [rows] of the logit type, any may be null
  void* lse[kMaxViews] = {nullptr, nullptr, nullptr};
  void* target_logprob[kMaxViews] = {nullptr, nullptr, nullptr};
  void* entropy[kMaxViews] = {nullptr, nullptr, nullptr};
};

// Divergence between student and teacher chunks, optional statistics and in-place gradient.
struct DivergenceArgs {
  int64_t rows = 0;
  int64_t vocab = 0;
  LogitType type = LogitType::kFloat32;
  Divergence divergence = Divergence::kReverse;
  double beta = 0.5;                   // JSD only, 0 < beta < 1
  double inv_temperature = 1.0;
  void* student = nullptr;             // [rows, ld_student]; overwritten by the gradient if row_grad
  int64_t ld_student = 0;
  const void* teacher = nullptr;       // [rows, ld_teacher]
  int64_t ld_teacher = 0;
  LogitTransformArgs student_transform;  // the gradient is w.r.t. the student's raw logits
  LogitTransformArgs teacher_transform;
  const int64_t* targets = nullptr;    // [rows] or null
  const void* row_grad = nullptr;      // [rows] of the logit type, or null (no gradient)
  GradFormat grad_format = GradFormat::kSame;
  // outputs, [rows] of the logit type; kl required, the rest may be null
  void* kl = nullptr;
  void* student_lse = nullptr;
  void* student_logprob = nullptr;     // needs targets
  void* student_entropy = nullptr;
  void* teacher_logprob = nullptr;     // needs targets
};

// d(row_grad[n] * log p_s[y_n]) / d(W h) = row_grad[n] * inv_T * (onehot(y_n) - p_s) * dz/dr, in place.
struct LogprobGradArgs {
  int64_t rows = 0;
  int64_t vocab = 0;
  LogitType type = LogitType::kFloat32;
  double inv_temperature = 1.0;
  void* student = nullptr;
  int64_t ld_student = 0;
  LogitTransformArgs transform;
  const void* lse = nullptr;           // [rows] lse of the scaled student logits (from view_stats)
  const int64_t* targets = nullptr;    // [rows]
  const void* row_grad = nullptr;      // [rows]
  GradFormat grad_format = GradFormat::kSame;
};

cudaError_t view_stats(const ViewStatsArgs& args, cudaStream_t stream);
cudaError_t divergence_stats(const DivergenceArgs& args, cudaStream_t stream);
cudaError_t logprob_grad(const LogprobGradArgs& args, cudaStream_t stream);

// The VA-OPD objective's token coefficients (docs/math.md; objective.cu, objective_core.h):
// per rollout the top ceil(f T) tokens by VA (ties to the earlier token), the lambda / (1 - lambda)
// group split and the sibling-softmax rollout weight, over P prompts. Float64 throughout, so the
// results match the torch objective's float64 arithmetic to rounding.
struct VAOPDCoefficientsArgs {
  int64_t num_rows = 0;
  int64_t num_rollouts = 0;
  const double* visual_advantage = nullptr;  // [num_rows]
  const int64_t* cu_seqlens = nullptr;       // [num_rollouts + 1], 0 = c_0 < c_1 < ... = num_rows
  const int64_t* prompt_ids = nullptr;       // [num_rollouts]
  double high_fraction = 0.2;                // 0 < f <= 1
  double high_weight = 0.5;                  // 0 <= lambda <= 1
  double va_temperature = 1.0;
  double eps = 1e-6;
  int64_t num_prompts = 0;                   // P; 0 = the number of distinct prompt ids
  // outputs
  double* token_weight = nullptr;            // [num_rows]: the loss is sum(token_weight * KL)
  double* rollout_weight = nullptr;          // [num_rollouts]
  bool* high_mask = nullptr;                 // [num_rows]
  // workspace: [num_rollouts] mean VA of each rollout, and a counter of distinct prompts
  double* rollout_mean_va = nullptr;
  unsigned long long* distinct_prompts = nullptr;
};

cudaError_t va_opd_coefficients(const VAOPDCoefficientsArgs& args, cudaStream_t stream);

// Human-readable name of the last argument-validation failure of this thread ("" if none).
const char* last_argument_error();
// Records why for last_argument_error() and returns cudaErrorInvalidValue.
cudaError_t invalid_argument(const char* why);

}  // namespace vaopd
