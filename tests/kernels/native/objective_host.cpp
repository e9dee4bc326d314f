// Host build of csrc/objective_core.h: the same per-rollout and per-sibling code the CUDA kernels
// run (objective.cu), behind a C function for ctypes (tests/kernels/native_objective.py). A rollout is
// processed by a team of `team_size` std::threads meeting at barriers where a thread block meets
// at __syncthreads, so the strided loops, block sums and scans run with real concurrency too.
#include <barrier>
#include <cstdint>
#include <thread>
#include <vector>

#include "objective_core.h"

namespace {

struct TeamState {
  explicit TeamState(int size) : sync(size), doubles(size), counts(size) {}
  std::barrier<> sync;
  std::vector<double> doubles;
  std::vector<int64_t> counts;
};

class ThreadTeam {
 public:
  ThreadTeam(int rank, int size, TeamState* state) : rank_(rank), size_(size), state_(state) {}
  int rank() const { return rank_; }
  int size() const { return size_; }
  double sum(double x) { return total(state_->doubles, x, size_); }
  int64_t sum(int64_t x) { return total(state_->counts, x, size_); }
  int64_t exclusive_scan(int64_t x, int64_t* all) {
    *all = total(state_->counts, x, size_);
    int64_t before = 0;
    for (int k = 0; k < rank_; ++k) before += state_->counts[k];
    return before;
  }

 private:
  // Every thread writes x to its slot, then sums slots[0:upto] in rank order (identical on all threads).
  template <typename T>
  T total(std::vector<T>& slots, T x, int upto) {
    state_->sync.arrive_and_wait();  // the previous readers are done with the slots
    slots[rank_] = x;
    state_->sync.arrive_and_wait();
    T sum = 0;
    for (int k = 0; k < upto; ++k) sum += slots[k];
    return sum;
  }

  int rank_, size_;
  TeamState* state_;
};

}  // namespace

// Same arguments, outputs and stage order as vaopd::va_opd_coefficients (vaopd_kernels.cuh).
extern "C" void vaopd_va_opd_coefficients_host(int64_t num_rollouts, const double* visual_advantage,
                                               const int64_t* cu_seqlens, const int64_t* prompt_ids,
                                               double high_fraction, double high_weight, double va_temperature,
                                               double eps, int64_t num_prompts, double* token_weight,
                                               double* rollout_weight,
                                               bool* high_mask, double* rollout_mean_va, int team_size) {
  using namespace vaopd::objective;
  for (int64_t r = 0; r < num_rollouts; ++r) {
    const int64_t start = cu_seqlens[r], length = cu_seqlens[r + 1] - start;
    TeamState state(team_size);
    std::vector<std::thread> threads;
    for (int rank = 0; rank < team_size; ++rank) {
      threads.emplace_back([&, rank] {
        ThreadTeam team(rank, team_size, &state);
        const double mean = select_rollout(team, visual_advantage + start, length, high_fraction, high_weight,
                                           high_mask + start, token_weight + start);
        if (rank == 0) rollout_mean_va[r] = mean;
      });
    }
    for (auto& t : threads) t.join();
  }
  int64_t distinct = 0;
  for (int64_t r = 0; r < num_rollouts; ++r) {
    const SiblingWeight w = sibling_weight(r, num_rollouts, prompt_ids, rollout_mean_va, va_temperature, eps);
    rollout_weight[r] = w.weight;
    distinct += w.first_of_group;
  }
  const double prompts = static_cast<double>(num_prompts > 0 ? num_prompts : distinct);
  for (int64_t r = 0; r < num_rollouts; ++r) {
    for (int64_t i = cu_seqlens[r]; i < cu_seqlens[r + 1]; ++i) {
      token_weight[i] = rollout_weight[r] * token_weight[i] / prompts;
    }
  }
}
