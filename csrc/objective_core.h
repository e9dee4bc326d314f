// The VA-OPD objective's per-rollout and per-sibling-group work (docs/math.md), written once
// for both a CUDA thread block (objective.cu) and a single host thread (tests/kernels/native/objective_host.cpp),
// so the exact code the GPU runs is also tested on machines without one.
//
// Plain C++ (no CUDA or torch headers). Parallel loops and reductions go through a "team":
//   rank(), size()                  this thread's index and the number of cooperating threads;
//   sum(x)                          x summed over the team, returned to every thread;
//   exclusive_scan(x, &total)       sum of x over lower ranks, and the total over the team.
// A host team is one thread (rank 0, size 1); a CUDA team is one thread block.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define VAOPD_FN __device__ __forceinline__
#else
#define VAOPD_FN inline
#endif

namespace vaopd {
namespace objective {

// x*y rounded once: keeps nvcc from contracting a*b - c into an fma, so the top-group size below
// is computed exactly as the torch objective computes it.
VAOPD_FN double mul_rn(double x, double y) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(x, y);
#else
  return x * y;
#endif
}

// Order-preserving map double -> uint64: x < y exactly when key(x) < key(y). -0.0 becomes +0.0
// first, so the two tie (as they do in a comparison sort) and go to the earlier token.
VAOPD_FN uint64_t order_key(double x) {
  x = x + 0.0;
  uint64_t bits;
#ifdef __CUDA_ARCH__
  bits = static_cast<uint64_t>(__double_as_longlong(x));
#else
  std::memcpy(&bits, &x, sizeof bits);
#endif
  return (bits >> 63) ? ~bits : (bits | (uint64_t{1} << 63));
}

// |H_r| = ceil(f * T) (at least one token); the 1e-9 keeps 0.2 * 15 at 3, not 4.
VAOPD_FN int64_t top_count(int64_t length, double high_fraction) {
  const int64_t k = static_cast<int64_t>(ceil(mul_rn(static_cast<double>(length), high_fraction) - 1e-9));
  return k < 1 ? 1 : (k > length ? length : k);
}

// One rollout of T tokens: picks its top-k tokens by VA (ties to the earlier token), writes the
// high mask and each token's group coefficient (lambda/|H| on H, (1-lambda)/|L| on L; a rollout
// without low tokens gives H the whole weight), and returns the rollout's mean VA.
//
// Selection without sorting: the k-th largest key K is built bit by bit from the top (the largest
// K with count(key >= K) >= k), then tokens above K are high, and of the tokens equal to K the
// first k - count(key > K) in token order.
template <class Team>
VAOPD_FN double select_rollout(Team& team, const double* va, int64_t length, double high_fraction,
                               double high_weight, bool* high, double* coef) {
  const int64_t k = top_count(length, high_fraction);
  double va_sum = 0.0;
  for (int64_t i = team.rank(); i < length; i += team.size()) va_sum += va[i];
  va_sum = team.sum(va_sum);

  uint64_t kth = 0;
  for (int bit = 63; bit >= 0; --bit) {
    const uint64_t candidate = kth | (uint64_t{1} << bit);
    int64_t at_least = 0;
    for (int64_t i = team.rank(); i < length; i += team.size()) at_least += order_key(va[i]) >= candidate;
    if (team.sum(at_least) >= k) kth = candidate;
  }
  int64_t above = 0;
  for (int64_t i = team.rank(); i < length; i += team.size()) above += order_key(va[i]) > kth;
  const int64_t ties_taken = k - team.sum(above);

  const double high_mass = length > k ? high_weight : 1.0;
  const double high_coef = high_mass / static_cast<double>(k);
  const double low_coef = (1.0 - high_mass) / static_cast<double>(length > k ? length - k : 1);
  int64_t ties_before = 0;  // tokens equal to K in earlier rounds
  for (int64_t base = 0; base < length; base += team.size()) {
    const int64_t i = base + team.rank();
    const uint64_t key = i < length ? order_key(va[i]) : 0;
    const bool tie = i < length && key == kth;
    int64_t round_ties = 0;
    const int64_t earlier = team.exclusive_scan(static_cast<int64_t>(tie), &round_ties);
    if (i < length) {
      const bool is_high = key > kth || (tie && ties_before + earlier < ties_taken);
      high[i] = is_high;
      coef[i] = is_high ? high_coef : low_coef;
    }
    ties_before += round_ties;
  }
  return va_sum / static_cast<double>(length);
}

struct SiblingWeight {
  double weight;       // softmax over the rollout's siblings of its z-scored mean VA
  bool first_of_group;  // no earlier rollout has this prompt id (counts distinct prompts)
};

// Rollout r among its siblings (rollouts with the same prompt id): population mean and std of the
// mean VAs, score = (a_r - mean) / (std + eps) / temperature, softmax over the group. A scan over
// all R rollouts per r: R is a step's rollout count (hundreds), and no grouping pass is needed.
VAOPD_FN SiblingWeight sibling_weight(int64_t r, int64_t num_rollouts, const int64_t* prompt_ids,
                                      const double* mean_va, double temperature, double eps) {
  const int64_t prompt = prompt_ids[r];
  double count = 0.0, total = 0.0;
  bool first = true;
  for (int64_t j = 0; j < num_rollouts; ++j) {
    if (prompt_ids[j] != prompt) continue;
    count += 1.0;
    total += mean_va[j];
    first = first && j >= r;
  }
  const double mean = total / count;
  double squares = 0.0;
  for (int64_t j = 0; j < num_rollouts; ++j) {
    if (prompt_ids[j] != prompt) continue;
    const double centered = mean_va[j] - mean;
    squares += centered * centered;
  }
  const double scale = sqrt(squares / count) + eps;
  const auto score = [&](int64_t j) { return (mean_va[j] - mean) / scale / temperature; };
  double top = -INFINITY;
  for (int64_t j = 0; j < num_rollouts; ++j) {
    if (prompt_ids[j] == prompt) top = fmax(top, score(j));
  }
  double denominator = 0.0;
  for (int64_t j = 0; j < num_rollouts; ++j) {
    if (prompt_ids[j] == prompt) denominator += exp(score(j) - top);
  }
  return {exp(score(r) - top) / denominator, first};
}

}  // namespace objective
}  // namespace vaopd
