// The VA-OPD objective's token coefficients on the GPU (API in vaopd_kernels.cuh, algorithm in
// objective_core.h). Three launches on one stream, no host synchronisation:
//   1. one block per rollout: top-fraction selection, group coefficients, mean VA;
//   2. one thread per rollout: sibling-softmax weight, distinct-prompt count;
//   3. one block per rollout: token_weight = rollout_weight * coefficient / P.
#include "objective_core.h"
#include "vaopd_kernels.cuh"

namespace vaopd {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

union Slot {
  double d;
  int64_t i;
};
__device__ __forceinline__ void put(Slot& s, double x) { s.d = x; }
__device__ __forceinline__ void put(Slot& s, int64_t x) { s.i = x; }
__device__ __forceinline__ double take(const Slot& s, double) { return s.d; }
__device__ __forceinline__ int64_t take(const Slot& s, int64_t) { return s.i; }

// The objective_core.h team of one thread block of kThreads threads. Every thread reads the warp
// partials in the same order, so all of them get bit-identical sums (branches stay uniform).
struct BlockTeam {
  Slot* slots;  // shared, kWarps entries

  __device__ int rank() const { return static_cast<int>(threadIdx.x); }
  __device__ int size() const { return kThreads; }

  template <typename T>
  __device__ T sum(T x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    __syncthreads();  // the previous call's readers are done with the slots
    if (threadIdx.x % 32 == 0) put(slots[threadIdx.x / 32], x);
    __syncthreads();
    T total = 0;
    for (int w = 0; w < kWarps; ++w) total += take(slots[w], T{});
    return total;
  }

  __device__ int64_t exclusive_scan(int64_t x, int64_t* total) {
    const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
    int64_t inclusive = x;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int64_t up = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    __syncthreads();
    if (lane == 31) put(slots[warp], inclusive);
    __syncthreads();
    int64_t before = 0, all = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int64_t partial = take(slots[w], int64_t{});
      before += w < warp ? partial : 0;
      all += partial;
    }
    *total = all;
    return before + inclusive - x;
  }
};

__global__ void __launch_bounds__(kThreads) select_kernel(VAOPDCoefficientsArgs a) {
  __shared__ Slot slots[kWarps];
  BlockTeam team{slots};
  const int64_t r = blockIdx.x, start = a.cu_seqlens[r], length = a.cu_seqlens[r + 1] - start;
  // The coefficients go to token_weight; scale_kernel turns them into the final weights.
  const double mean = objective::select_rollout(team, a.visual_advantage + start, length, a.high_fraction,
                                                a.high_weight, a.high_mask + start, a.token_weight + start);
  if (threadIdx.x == 0) a.rollout_mean_va[r] = mean;
}

__global__ void __launch_bounds__(kThreads) sibling_kernel(VAOPDCoefficientsArgs a) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (r >= a.num_rollouts) return;
  const objective::SiblingWeight w =
      objective::sibling_weight(r, a.num_rollouts, a.prompt_ids, a.rollout_mean_va, a.va_temperature, a.eps);
  a.rollout_weight[r] = w.weight;
  if (w.first_of_group) atomicAdd(a.distinct_prompts, 1ull);
}

__global__ void __launch_bounds__(kThreads) scale_kernel(VAOPDCoefficientsArgs a) {
  const int64_t r = blockIdx.x, start = a.cu_seqlens[r], stop = a.cu_seqlens[r + 1];
  const double prompts = static_cast<double>(a.num_prompts > 0 ? static_cast<unsigned long long>(a.num_prompts)
                                                               : *a.distinct_prompts);
  const double weight = a.rollout_weight[r];
  for (int64_t i = start + threadIdx.x; i < stop; i += kThreads) a.token_weight[i] = weight * a.token_weight[i] / prompts;
}

}  // namespace

cudaError_t va_opd_coefficients(const VAOPDCoefficientsArgs& a, cudaStream_t stream) {
  if (a.num_rows < 1 || a.num_rollouts < 1 || a.num_rollouts > a.num_rows || a.num_rollouts > 0x7fffffff) {
    return invalid_argument("va_opd_coefficients: need 1 <= num_rollouts <= num_rows and num_rollouts < 2^31");
  }
  if (!a.visual_advantage || !a.cu_seqlens || !a.prompt_ids || !a.token_weight || !a.rollout_weight ||
      !a.high_mask || !a.rollout_mean_va || !a.distinct_prompts) {
    return invalid_argument("va_opd_coefficients: null pointer");
  }
  // This C++ entry point guards its own arguments (a caller need not be Python); the Python API's
  // range check is vaopd_kernels.validation.check_objective_options, run before any launch.
  if (!(a.high_fraction > 0.0 && a.high_fraction <= 1.0) || !(a.high_weight >= 0.0 && a.high_weight <= 1.0) ||
      !(a.va_temperature > 0.0) || !(a.eps > 0.0) || a.num_prompts < 0) {
    return invalid_argument(
        "va_opd_coefficients: need 0 < f <= 1, 0 <= lambda <= 1, va_temperature > 0, eps > 0, P >= 0");
  }
  const cudaError_t zeroed = cudaMemsetAsync(a.distinct_prompts, 0, sizeof(unsigned long long), stream);
  if (zeroed != cudaSuccess) return zeroed;
  const unsigned rollouts = static_cast<unsigned>(a.num_rollouts);
  select_kernel<<<rollouts, kThreads, 0, stream>>>(a);
  sibling_kernel<<<(rollouts + kThreads - 1) / kThreads, kThreads, 0, stream>>>(a);
  scale_kernel<<<rollouts, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace vaopd
