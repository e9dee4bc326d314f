// Row-statistics kernels over logit chunks; see vaopd_kernels.cuh for the API and docs/math.md for the math.
//
// One thread block per row (kThreads threads). Each thread keeps online (max, sum) accumulators over a
// strided subset of the row, loaded 16 bytes at a time when the rows are 16-byte aligned; a block
// reduction merges them. The gradient pass reads the row once more and writes the gradient in place.
#include "vaopd_kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace vaopd {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Below this |lse_t - lse_s| the log-normaliser gap is taken as log1p(sum(e^{z_to - lse_from} - p_from))
// (same rule as the triton backend's stats.SMALL_GAP).
constexpr double kSmallGap = 0.5;

thread_local const char* g_argument_error = "";

template <typename T>
struct alignas(16) Pack {
  static constexpr int N = 16 / static_cast<int>(sizeof(T));
  T v[N];
};

__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float lg(float x) { return logf(x); }
__device__ __forceinline__ double lg(double x) { return log(x); }
__device__ __forceinline__ float lg1p(float x) { return log1pf(x); }
__device__ __forceinline__ double lg1p(double x) { return log1p(x); }
__device__ __forceinline__ float th(float x) { return tanhf(x); }
__device__ __forceinline__ double th(double x) { return tanh(x); }

template <typename T>
__device__ __forceinline__ T neg_inf() { return -static_cast<T>(INFINITY); }

// exp(a - b) that is 0 when a == -inf (a thread that saw no element), never NaN.
template <typename T>
__device__ __forceinline__ T rescale(T a, T b) { return a == neg_inf<T>() ? T(0) : ex(a - b); }

template <typename T>
__device__ __forceinline__ T logaddexp(T x, T y) {
  const T hi = x > y ? x : y;
  const T lo = x > y ? y : x;
  return hi == neg_inf<T>() ? hi : hi + lg1p(ex(lo - hi));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// In-place block reductions of K values; every thread gets the results. smem holds >= K * kWarps.
template <bool kMax, typename T, int K>
__device__ __forceinline__ void block_reduce(T (&v)[K], T* smem) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    v[k] = kMax ? warp_max(v[k]) : warp_sum(v[k]);
    if (lane == 0) smem[k * kWarps + warp] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      T x = lane < kWarps ? smem[k * kWarps + lane] : (kMax ? neg_inf<T>() : T(0));
      x = kMax ? warp_max(x) : warp_sum(x);
      if (lane == 0) smem[k * kWarps] = x;
    }
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = smem[k * kWarps];
  __syncthreads();  // smem may be reused right away
}

// A view's LogitTransformArgs in the logit type. A plain head (identity) keeps the arithmetic of the
// kernels before heads had transforms: read() is then r * inv_t, and the gradient is not chained.
template <typename T>
struct Transform {
  const T* bias;
  T scale;
  T softcap;  // 0: none
  bool identity;

  __device__ explicit Transform(const LogitTransformArgs& a)
      : bias(static_cast<const T*>(a.bias)),
        scale(static_cast<T>(a.scale)),
        softcap(a.softcap > 0.0 ? static_cast<T>(a.softcap) : T(0)),
        identity(a.bias == nullptr && a.scale == 1.0 && !(a.softcap > 0.0)) {}

  // z = c tanh(s (r + b) / c), or s (r + b): the logit before the temperature of raw logit r in column v.
  __device__ __forceinline__ T apply(T r, int64_t v) const {
    const T x = (bias ? r + bias[v] : r) * scale;
    return softcap > T(0) ? th(x / softcap) * softcap : x;
  }
  // z * inv_t, the value every statistic is computed from.
  __device__ __forceinline__ T read(T r, int64_t v, T inv_t) const {
    return identity ? r * inv_t : apply(r, v) * inv_t;
  }
  // dz/dr = s (1 - (z / c)^2), or s, from z (before the temperature).
  __device__ __forceinline__ T dz_dr(T z) const {
    if (softcap > T(0)) {
      const T u = z / softcap;
      return scale * (T(1) - u * u);
    }
    return scale;
  }
};

// Visits the row(s) in packs: f(index_of_first_element, z[NV][P], std::integral_constant<int, n>)
// with n = P (vector path) or 1 (scalar tail / unaligned rows). Values are transformed (tf) and scaled by inv_t.
template <typename T, int NV, typename F>
__device__ __forceinline__ void scan_rows(const T* const (&rows)[NV], const Transform<T> (&tf)[NV], int64_t vocab,
                                          bool vec, T inv_t, F&& f) {
  constexpr int P = Pack<T>::N;
  int64_t scalar_from = 0;
  if (vec) {
    const int64_t npack = vocab / P;
#pragma unroll 2
    for (int64_t i = threadIdx.x; i < npack; i += kThreads) {
      T z[NV][P];
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        const Pack<T> p = reinterpret_cast<const Pack<T>*>(rows[j])[i];
#pragma unroll
        for (int k = 0; k < P; ++k) z[j][k] = tf[j].read(p.v[k], i * P + k, inv_t);
      }
      f(i * P, z, std::integral_constant<int, P>{});
    }
    scalar_from = npack * P;
  }
  for (int64_t v = scalar_from + threadIdx.x; v < vocab; v += kThreads) {
    T z[NV][P];
#pragma unroll
    for (int j = 0; j < NV; ++j) z[j][0] = tf[j].read(rows[j][v], v, inv_t);
    f(v, z, std::integral_constant<int, 1>{});
  }
}

template <GradFormat GF, typename T>
__device__ __forceinline__ void store1(T* row, int64_t v, T g) {
  if constexpr (GF == GradFormat::kSame) {
    row[v] = g;
  } else if constexpr (GF == GradFormat::kBFloat16) {
    reinterpret_cast<__nv_bfloat16*>(row)[v] = __float2bfloat16_rn(static_cast<float>(g));
  } else {
    reinterpret_cast<__half*>(row)[v] = __float2half_rn(static_cast<float>(g));
  }
}

template <GradFormat GF, typename T>
__device__ __forceinline__ void store_pack(T* row, int64_t i, const T (&g)[Pack<T>::N]) {
  constexpr int P = Pack<T>::N;
  if constexpr (GF == GradFormat::kSame) {
    Pack<T> p;
#pragma unroll
    for (int k = 0; k < P; ++k) p.v[k] = g[k];
    reinterpret_cast<Pack<T>*>(row)[i] = p;
  } else {
    static_assert(P == 4, "packed half gradients need float32 logits");
    union { uint2 u; __nv_bfloat162 b[2]; __half2 h[2]; } out;
    if constexpr (GF == GradFormat::kBFloat16) {
      out.b[0] = __floats2bfloat162_rn(static_cast<float>(g[0]), static_cast<float>(g[1]));
      out.b[1] = __floats2bfloat162_rn(static_cast<float>(g[2]), static_cast<float>(g[3]));
    } else {
      out.h[0] = __floats2half2_rn(static_cast<float>(g[0]), static_cast<float>(g[1]));
      out.h[1] = __floats2half2_rn(static_cast<float>(g[2]), static_cast<float>(g[3]));
    }
    reinterpret_cast<uint2*>(row)[i] = out.u;  // 4 half-width values of pack i
  }
}

// Gradient pass: g(zs, zt, v) per element (read logits: transformed, scaled) times the student's dz/dr,
// written in place over the student row. Every iteration loads, synchronises, then stores: a packed
// half-width store of element v lands in bytes the block has already read (v/2 < v), never in ones
// still to be read.
template <typename T, GradFormat GF, bool kTeacher, typename G>
__device__ __forceinline__ void grad_pass(T* srow, const T* trow, const Transform<T> (&tf)[2], int64_t vocab,
                                          bool vec, T inv_t, G&& g) {
  constexpr int P = Pack<T>::N;
  // rs, rt: raw student/teacher logits of column v
  const auto grad_at = [&](T rs, T rt, int64_t v) -> T {
    const T zt = kTeacher ? tf[1].read(rt, v, inv_t) : T(0);
    if (tf[0].identity) return g(rs * inv_t, zt, v);
    const T z = tf[0].apply(rs, v);
    return g(z * inv_t, zt, v) * tf[0].dz_dr(z);
  };
  int64_t scalar_from = 0;
  if (vec) {
    const int64_t npack = vocab / P;
    for (int64_t base = 0; base < npack; base += kThreads) {
      const int64_t i = base + threadIdx.x;
      T out[P];
      if (i < npack) {
        const Pack<T> ps = reinterpret_cast<const Pack<T>*>(srow)[i];
        Pack<T> pt;
        if constexpr (kTeacher) pt = reinterpret_cast<const Pack<T>*>(trow)[i];
#pragma unroll
        for (int k = 0; k < P; ++k) out[k] = grad_at(ps.v[k], kTeacher ? pt.v[k] : T(0), i * P + k);
      }
      if constexpr (GF != GradFormat::kSame) __syncthreads();
      if (i < npack) store_pack<GF>(srow, i, out);
    }
    scalar_from = npack * P;
  }
  for (int64_t base = scalar_from; base < vocab; base += kThreads) {
    const int64_t v = base + threadIdx.x;
    T out = T(0);
    if (v < vocab) out = grad_at(srow[v], kTeacher ? trow[v] : T(0), v);
    if constexpr (GF != GradFormat::kSame) __syncthreads();
    if (v < vocab) store1<GF>(srow, v, out);
  }
}

// ------------------------------------------------------------------------------------------ kernels
template <typename T>
__global__ void __launch_bounds__(kThreads) view_stats_kernel(ViewStatsArgs a, bool vec) {
  __shared__ T smem[2 * kWarps];
  const int view = blockIdx.y;
  const int64_t row = blockIdx.x;
  const T inv_t = static_cast<T>(a.inv_temperature);
  const T* const rows[1] = {static_cast<const T*>(a.logits[view]) + row * a.ld[view]};
  const Transform<T> tf[1] = {Transform<T>(a.transform)};
  const bool want_entropy = a.entropy[view] != nullptr;

  T m = neg_inf<T>(), l = T(0), b = T(0);
  scan_rows<T, 1>(rows, tf, a.vocab, vec, inv_t, [&](int64_t, const auto& z, auto n) {
    constexpr int N = decltype(n)::value;
    T tile_max = z[0][0];
#pragma unroll
    for (int k = 1; k < N; ++k) tile_max = fmax(tile_max, z[0][k]);
    if (tile_max > m) {
      const T r = rescale(m, tile_max);
      l *= r;
      b *= r;
      m = tile_max;
    }
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const T e = ex(z[0][k] - m);
      l += e;
      if (want_entropy) b += e * z[0][k];
    }
  });
  T mx[1] = {m};
  block_reduce<true>(mx, smem);
  const T r = rescale(m, mx[0]);
  T sums[2] = {l * r, b * r};
  block_reduce<false>(sums, smem);
  if (threadIdx.x == 0) {
    const T lse = mx[0] + lg(sums[0]);
    if (a.lse[view]) static_cast<T*>(a.lse[view])[row] = lse;
    if (want_entropy) static_cast<T*>(a.entropy[view])[row] = lse - sums[1] / sums[0];
    if (a.targets && a.target_logprob[view]) {
      const int64_t y = a.targets[row];
      static_cast<T*>(a.target_logprob[view])[row] = tf[0].read(rows[0][y], y, inv_t) - lse;
    }
  }
}

template <typename T, Divergence DIV, GradFormat GF, bool kGrad>
__global__ void __launch_bounds__(kThreads) divergence_kernel(DivergenceArgs a, bool vec) {
  __shared__ T smem[5 * kWarps];
  const int64_t row = blockIdx.x;
  const T inv_t = static_cast<T>(a.inv_temperature);
  T* srow = static_cast<T*>(a.student) + row * a.ld_student;
  const T* trow = static_cast<const T*>(a.teacher) + row * a.ld_teacher;
  const T* const rows[2] = {srow, trow};
  const Transform<T> tf[2] = {Transform<T>(a.student_transform), Transform<T>(a.teacher_transform)};

  // Target logits first: the gradient pass overwrites the student row.
  T zs_y = T(0), zt_y = T(0);
  if (a.targets && threadIdx.x == 0) {
    const int64_t y = a.targets[row];
    zs_y = tf[0].read(srow[y], y, inv_t);
    zt_y = tf[1].read(trow[y], y, inv_t);
  }

  // Pass 1: online (max, sum) per view; for KL also sum p (z_s - z_t) (reverse) or p_t (z_t - z_s)
  // (forward), and c = sum(e^{z_t - M} - e^{z_s - M}) with M = max of both maxima (accurate gap).
  constexpr bool kKL = DIV != Divergence::kJSD;
  T ms = neg_inf<T>(), mt = neg_inf<T>(), ls = T(0), lt = T(0), bs = T(0), acc = T(0), c = T(0);
  scan_rows<T, 2>(rows, tf, a.vocab, vec, inv_t, [&](int64_t, const auto& z, auto n) {
    constexpr int N = decltype(n)::value;
    T tms = z[0][0], tmt = z[1][0];
#pragma unroll
    for (int k = 1; k < N; ++k) {
      tms = fmax(tms, z[0][k]);
      tmt = fmax(tmt, z[1][k]);
    }
    const T ms_new = fmax(ms, tms), mt_new = fmax(mt, tmt);
    if (ms_new != ms || mt_new != mt) {
      const T rs = rescale(ms, ms_new), rt = rescale(mt, mt_new);
      ls *= rs;
      bs *= rs;
      lt *= rt;
      if constexpr (DIV == Divergence::kReverse) acc *= rs;
      if constexpr (DIV == Divergence::kForward) acc *= rt;
      if constexpr (kKL) c *= rescale(fmax(ms, mt), fmax(ms_new, mt_new));
      ms = ms_new;
      mt = mt_new;
    }
    const T big = fmax(ms, mt);
    const T fs = ex(ms - big), ft = ex(mt - big);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const T es = ex(z[0][k] - ms), et = ex(z[1][k] - mt);
      ls += es;
      bs += es * z[0][k];
      lt += et;
      if constexpr (DIV == Divergence::kReverse) acc += es * (z[0][k] - z[1][k]);
      if constexpr (DIV == Divergence::kForward) acc += et * (z[1][k] - z[0][k]);
      if constexpr (kKL) c += et * ft - es * fs;
    }
  });
  T mx[2] = {ms, mt};
  block_reduce<true>(mx, smem);
  const T big = fmax(mx[0], mx[1]);
  {
    const T rs = rescale(ms, mx[0]), rt = rescale(mt, mx[1]);
    ls *= rs;
    bs *= rs;
    lt *= rt;
    acc *= DIV == Divergence::kForward ? rt : rs;
    c *= rescale(fmax(ms, mt), big);
  }
  T sums[5] = {ls, bs, lt, acc, c};
  block_reduce<false>(sums, smem);
  const T lse_s = mx[0] + lg(sums[0]);
  const T lse_t = mx[1] + lg(sums[2]);

  T div = T(0), gap = T(0), kl_s = T(0);
  const T beta = static_cast<T>(a.beta);
  const T log_beta = lg(beta), log_1mb = lg(T(1) - beta);
  if constexpr (DIV == Divergence::kReverse) {
    const T direct = lse_t - lse_s;
    gap = fabs(direct) < T(kSmallGap) ? lg1p(sums[4] * ex(big - lse_s)) : direct;
    div = sums[3] / sums[0] + gap;
  } else if constexpr (DIV == Divergence::kForward) {
    const T direct = lse_s - lse_t;
    gap = fabs(direct) < T(kSmallGap) ? lg1p(-sums[4] * ex(big - lse_t)) : direct;
    div = sums[3] / sums[2] + gap;
  } else {
    // Pass 2 (JSD): KL(p_t || m) and KL(p_s || m) with m = beta p_t + (1 - beta) p_s.
    T kl[2] = {T(0), T(0)};
    scan_rows<T, 2>(rows, tf, a.vocab, vec, inv_t, [&](int64_t, const auto& z, auto n) {
      constexpr int N = decltype(n)::value;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const T lps = z[0][k] - lse_s, lpt = z[1][k] - lse_t;
        const T logm = logaddexp(lpt + log_beta, lps + log_1mb);
        kl[0] += ex(lpt) * (lpt - logm);
        kl[1] += ex(lps) * (lps - logm);
      }
    });
    block_reduce<false>(kl, smem);
    kl_s = kl[1];
    div = beta * kl[0] + (T(1) - beta) * kl[1];
  }

  if (threadIdx.x == 0) {
    static_cast<T*>(a.kl)[row] = div;
    if (a.student_lse) static_cast<T*>(a.student_lse)[row] = lse_s;
    if (a.student_entropy) static_cast<T*>(a.student_entropy)[row] = lse_s - sums[1] / sums[0];
    if (a.targets && a.student_logprob) static_cast<T*>(a.student_logprob)[row] = zs_y - lse_s;
    if (a.targets && a.teacher_logprob) static_cast<T*>(a.teacher_logprob)[row] = zt_y - lse_t;
  }

  if constexpr (kGrad) {
    const T scale = static_cast<const T*>(a.row_grad)[row] * inv_t;
    if constexpr (DIV == Divergence::kReverse) {
      const T shift = gap - div;
      grad_pass<T, GF, true>(srow, trow, tf, a.vocab, vec, inv_t, [&](T zs, T zt, int64_t) {
        return scale * ex(zs - lse_s) * (zs - zt + shift);
      });
    } else if constexpr (DIV == Divergence::kForward) {
      grad_pass<T, GF, true>(srow, trow, tf, a.vocab, vec, inv_t, [&](T zs, T zt, int64_t) {
        return scale * (ex(zs - lse_s) - ex(zt - lse_t));
      });
    } else {
      const T s = scale * (T(1) - beta);
      grad_pass<T, GF, true>(srow, trow, tf, a.vocab, vec, inv_t, [&](T zs, T zt, int64_t) {
        const T lps = zs - lse_s, lpt = zt - lse_t;
        const T logm = logaddexp(lpt + log_beta, lps + log_1mb);
        return s * ex(lps) * (lps - logm - kl_s);
      });
    }
  }
}

template <typename T, GradFormat GF>
__global__ void __launch_bounds__(kThreads) logprob_grad_kernel(LogprobGradArgs a, bool vec) {
  const int64_t row = blockIdx.x;
  const T inv_t = static_cast<T>(a.inv_temperature);
  T* srow = static_cast<T*>(a.student) + row * a.ld_student;
  const T lse = static_cast<const T*>(a.lse)[row];
  const T scale = static_cast<const T*>(a.row_grad)[row] * inv_t;
  const int64_t y = a.targets[row];
  const Transform<T> tf[2] = {Transform<T>(a.transform), Transform<T>(LogitTransformArgs{})};  // no teacher
  grad_pass<T, GF, false>(srow, nullptr, tf, a.vocab, vec, inv_t, [&](T zs, T, int64_t v) {
    return scale * ((v == y ? T(1) : T(0)) - ex(zs - lse));
  });
}

// ------------------------------------------------------------------------------------------ host side
size_t type_size(LogitType t) { return t == LogitType::kFloat64 ? 8 : 4; }

bool aligned(const void* p, int64_t ld, LogitType t) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ld * type_size(t)) % 16 == 0);
}

cudaError_t check_launch() {
  g_argument_error = "";
  return cudaGetLastError();
}

template <typename T, Divergence DIV>
cudaError_t launch_divergence(const DivergenceArgs& a, bool vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.rows));
  if (!a.row_grad) {
    divergence_kernel<T, DIV, GradFormat::kSame, false><<<grid, kThreads, 0, stream>>>(a, vec);
    return check_launch();
  }
  switch (a.grad_format) {
    case GradFormat::kSame:
      divergence_kernel<T, DIV, GradFormat::kSame, true><<<grid, kThreads, 0, stream>>>(a, vec);
      return check_launch();
    case GradFormat::kBFloat16:
      if constexpr (std::is_same_v<T, float>) {
        divergence_kernel<T, DIV, GradFormat::kBFloat16, true><<<grid, kThreads, 0, stream>>>(a, vec);
        return check_launch();
      }
      break;
    case GradFormat::kFloat16:
      if constexpr (std::is_same_v<T, float>) {
        divergence_kernel<T, DIV, GradFormat::kFloat16, true><<<grid, kThreads, 0, stream>>>(a, vec);
        return check_launch();
      }
      break;
  }
  return invalid_argument("divergence_stats: grad_format must be kSame for float64 logits");
}

template <typename T>
cudaError_t launch_divergence_type(const DivergenceArgs& a, bool vec, cudaStream_t stream) {
  switch (a.divergence) {
    case Divergence::kReverse: return launch_divergence<T, Divergence::kReverse>(a, vec, stream);
    case Divergence::kForward: return launch_divergence<T, Divergence::kForward>(a, vec, stream);
    case Divergence::kJSD: return launch_divergence<T, Divergence::kJSD>(a, vec, stream);
  }
  return invalid_argument("divergence_stats: unknown divergence");
}

template <typename T>
cudaError_t launch_logprob_grad(const LogprobGradArgs& a, bool vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.rows));
  switch (a.grad_format) {
    case GradFormat::kSame:
      logprob_grad_kernel<T, GradFormat::kSame><<<grid, kThreads, 0, stream>>>(a, vec);
      return check_launch();
    case GradFormat::kBFloat16:
      if constexpr (std::is_same_v<T, float>) {
        logprob_grad_kernel<T, GradFormat::kBFloat16><<<grid, kThreads, 0, stream>>>(a, vec);
        return check_launch();
      }
      break;
    case GradFormat::kFloat16:
      if constexpr (std::is_same_v<T, float>) {
        logprob_grad_kernel<T, GradFormat::kFloat16><<<grid, kThreads, 0, stream>>>(a, vec);
        return check_launch();
      }
      break;
  }
  return invalid_argument("logprob_grad: grad_format must be kSame for float64 logits");
}

bool valid_sizes(int64_t rows, int64_t vocab) {
  return rows >= 0 && rows <= 0x7fffffff && vocab >= 1;
}

}  // namespace

const char* last_argument_error() { return g_argument_error; }

cudaError_t invalid_argument(const char* why) {
  g_argument_error = why;
  return cudaErrorInvalidValue;
}

cudaError_t view_stats(const ViewStatsArgs& a, cudaStream_t stream) {
  if (!valid_sizes(a.rows, a.vocab)) return invalid_argument("view_stats: bad rows/vocab");
  if (a.num_views < 1 || a.num_views > kMaxViews) return invalid_argument("view_stats: num_views must be 1..3");
  bool vec = true;
  for (int i = 0; i < a.num_views; ++i) {
    if (!a.logits[i]) return invalid_argument("view_stats: null logits");
    if (a.ld[i] < a.vocab) return invalid_argument("view_stats: ld < vocab");
    vec = vec && aligned(a.logits[i], a.ld[i], a.type);
  }
  if (a.rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(a.num_views));
  if (a.type == LogitType::kFloat64) {
    view_stats_kernel<double><<<grid, kThreads, 0, stream>>>(a, vec);
  } else {
    view_stats_kernel<float><<<grid, kThreads, 0, stream>>>(a, vec);
  }
  return check_launch();
}

cudaError_t divergence_stats(const DivergenceArgs& a, cudaStream_t stream) {
  if (!valid_sizes(a.rows, a.vocab)) return invalid_argument("divergence_stats: bad rows/vocab");
  if (!a.student || !a.teacher || !a.kl) return invalid_argument("divergence_stats: null student/teacher/kl");
  if (a.ld_student < a.vocab || a.ld_teacher < a.vocab) return invalid_argument("divergence_stats: ld < vocab");
  if (a.divergence == Divergence::kJSD && !(a.beta > 0.0 && a.beta < 1.0)) {
    return invalid_argument("divergence_stats: JSD needs 0 < beta < 1");
  }
  if (a.rows == 0) return cudaSuccess;
  const bool vec = aligned(a.student, a.ld_student, a.type) && aligned(a.teacher, a.ld_teacher, a.type);
  return a.type == LogitType::kFloat64 ? launch_divergence_type<double>(a, vec, stream)
                                       : launch_divergence_type<float>(a, vec, stream);
}

cudaError_t logprob_grad(const LogprobGradArgs& a, cudaStream_t stream) {
  if (!valid_sizes(a.rows, a.vocab)) return invalid_argument("logprob_grad: bad rows/vocab");
  if (!a.student || !a.lse || !a.targets || !a.row_grad) return invalid_argument("logprob_grad: null pointer");
  if (a.ld_student < a.vocab) return invalid_argument("logprob_grad: ld < vocab");
  if (a.rows == 0) return cudaSuccess;
  const bool vec = aligned(a.student, a.ld_student, a.type);
  return a.type == LogitType::kFloat64 ? launch_logprob_grad<double>(a, vec, stream)
                                       : launch_logprob_grad<float>(a, vec, stream);
}

}  // namespace vaopd
