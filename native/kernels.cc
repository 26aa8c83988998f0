// Fused CPU kernels for the memory-bound and badly served parts of a training step (issue 13's
// roofline, bench/README.md "Fused kernels, bit for bit"):
//   - BatchNorm in training mode, optionally with the ReLU that follows it (batchNormTrain);
//   - the SGD step with Grad Mults, weight decay and momentum in one pass (sgdStep);
//   - the weight gradient of convolutions with a tiny output (convSmallOutput).
//
// Each computes the same float operations as libtorch, in libtorch's order, so results are
// libtorch's (and PyTorch's) bit for bit; only the time changes. Where libtorch's order depends on
// the kernels it runs on this CPU (its AVX2 / AVX-512 builds contract a * b + c into fused
// multiply-adds and use 8 / 16-float vectors; its baseline build does neither), CpuKernels() reads
// which ones from libtorch itself. Anything these kernels do not cover goes back to ATen: each entry
// point returns null, having done nothing, and the TypeScript caller runs the composed ops.
//
// Compiled with -ffp-contract=off (binding.gyp): a fused multiply-add happens only where written.

#pragma GCC optimize("O3")

#include "tensor-handle.h"

#include <napi.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace repopt {
namespace kernels {

// One definition per instruction set: AVX-512, AVX2 with FMA, and the x86-64 baseline, each compiled
// from the same always-inline body (REPOPT_ISA_VARIANTS) and picked at run time by KernelIsa(): the
// set libtorch itself runs here (ATEN_CPU_CAPABILITY lowers both), never more than the CPU has.
// (Not GCC's target_clones: its "arch=haswell" clone is chosen by CPU model, not by feature, so an
// AMD CPU with AVX2 and FMA got the baseline clone, whose fused multiply-adds are libm calls: the
// fused kernels ran 1.4x slower than ATen there.)
enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

const char* IsaName(Isa isa) { return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "default"; }

// The best of ours that this CPU runs: AVX-512 needs what libtorch's AVX512 kernels need (F, BW, VL, DQ).
Isa HostIsa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// libtorch's "CPU capability usage" (at::show_config(), which follows ATEN_CPU_CAPABILITY as libtorch
// does), or "" where it does not say.
std::string LibtorchCapability() {
  const std::string config = at::show_config();
  const std::string key = "CPU capability usage: ";
  const auto at = config.find(key);
  if (at == std::string::npos) return "";
  return config.substr(at + key.size(), config.find_first_of("\n\r", at) - at - key.size());
}

// The variant our kernels run: libtorch's capability, capped by the CPU's (so forcing
// ATEN_CPU_CAPABILITY=avx2 on an AVX-512 host runs, and tests, our AVX2 code too).
Isa KernelIsa() {
  static const Isa isa = []() {
    const Isa host = HostIsa();
    const std::string cap = LibtorchCapability();
    const Isa wanted = cap == "AVX512" ? Isa::kAvx512 : cap == "AVX2" ? Isa::kAvx2 : cap == "DEFAULT" || cap == "NO AVX" ? Isa::kBaseline : host;
    return std::min(host, wanted);
  }();
  return isa;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define REPOPT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define REPOPT_TARGET_AVX2 __attribute__((target("avx2,fma")))
// NAME(PARAMS) calling NAME##Body(ARGS): three compiled variants and the run-time choice between them.
#define REPOPT_ISA_VARIANTS(RET, NAME, PARAMS, ARGS)                       \
  REPOPT_TARGET_AVX512 RET NAME##Avx512 PARAMS { return NAME##Body ARGS; } \
  REPOPT_TARGET_AVX2 RET NAME##Avx2 PARAMS { return NAME##Body ARGS; }     \
  RET NAME##Baseline PARAMS { return NAME##Body ARGS; }                    \
  RET NAME PARAMS {                                                        \
    switch (KernelIsa()) {                                                 \
      case Isa::kAvx512: return NAME##Avx512 ARGS;                         \
      case Isa::kAvx2: return NAME##Avx2 ARGS;                             \
      default: return NAME##Baseline ARGS;                                 \
    }                                                                      \
  }
#else
#define REPOPT_ISA_VARIANTS(RET, NAME, PARAMS, ARGS) \
  RET NAME PARAMS { return NAME##Body ARGS; }
#endif
#define REPOPT_BODY inline __attribute__((always_inline))

// ---- BatchNorm forward: statistics in double per lane, then normalise [+ ReLU] in one pass

REPOPT_BODY double SumDBody(const float* x, int64_t len) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < len; i++) s += static_cast<double>(x[i]);
  return s;
}
REPOPT_ISA_VARIANTS(double, SumD, (const float* x, int64_t len), (x, len))

REPOPT_BODY double SquaredDeviationSumDBody(const float* x, int64_t len, float mean) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < len; i++) {
    const float d = x[i] - mean;
    s += static_cast<double>(d * d);
  }
  return s;
}
REPOPT_ISA_VARIANTS(double, SquaredDeviationSumD, (const float* x, int64_t len, float mean), (x, len, mean))

// a + alpha * b in one rounding (a fused multiply-add: libtorch's AVX2 and AVX-512 kernels, which
// the compiler contracted, and its vec::fmadd) or in two (its baseline kernels). F is only true
// where the CPU has FMA.
template <bool F>
inline __attribute__((always_inline)) float AddScaled(float a, float alpha, float b) {
  return F ? __builtin_fmaf(alpha, b, a) : a + alpha * b;
}

template <bool F, bool Relu>
inline __attribute__((always_inline)) void AffineLoop(float* y, const float* x, int64_t len, float alpha, float beta) {
#pragma omp simd
  for (int64_t i = 0; i < len; i++) {
    const float v = AddScaled<F>(beta, alpha, x[i]);
    y[i] = Relu && v < 0.f ? 0.f : v;  // ReLU as ATen's clamp_min(v, 0): NaN stays NaN
  }
}

// y = x * alpha + beta [then ReLU], the normalisation of libtorch's BatchNorm kernel.
REPOPT_BODY void AffineBody(float* y, const float* x, int64_t len, float alpha, float beta, bool relu, bool fma) {
  if (fma) {
    relu ? AffineLoop<true, true>(y, x, len, alpha, beta) : AffineLoop<true, false>(y, x, len, alpha, beta);
  } else {
    relu ? AffineLoop<false, true>(y, x, len, alpha, beta) : AffineLoop<false, false>(y, x, len, alpha, beta);
  }
}
REPOPT_ISA_VARIANTS(void, Affine, (float* y, const float* x, int64_t len, float alpha, float beta, bool relu, bool fma), (y, x, len, alpha, beta, relu, fma))

// ---- backward, in libtorch's own order of float operations
//
// libtorch's contiguous BatchNorm backward sums each (n, c) plane in float with its vector
// helpers (at::vec::reduce_all / map2_reduce_all: lane-wise accumulation over Vectorized<float>,
// then a butterfly across lanes, or lane by lane for short planes and the baseline build) and adds
// the plane sums into double. The same steps here, with the lane count and fused multiply-adds of
// the kernels libtorch runs on this CPU (CpuKernels()), give the very same gradients.

struct Lanes {
  int width;         // floats per Vectorized<float>: 16 (AVX-512), 8 (AVX2 and the baseline build)
  bool fma;          // the compiler contracted a * b + c in those kernels
};

// The kernels libtorch runs here, from its own report ("CPU capability usage: AVX2" in
// at::show_config(), which follows ATEN_CPU_CAPABILITY as libtorch does); std::nullopt for a
// capability not modelled here, or another libtorch than 1.13 (whose BatchNorm and add kernels
// these reproduce; later versions accumulate differently): the caller then leaves the op to libtorch.
std::optional<Lanes> CpuKernels() {
  static const std::optional<Lanes> lanes = []() -> std::optional<Lanes> {
    if (TORCH_VERSION_MAJOR != 1 || TORCH_VERSION_MINOR != 13) return std::nullopt;
    const std::string cap = LibtorchCapability();
    if (cap == "AVX512") return Lanes{16, true};
    if (cap == "AVX2") return Lanes{8, true};
    if (cap == "DEFAULT" || cap == "NO AVX") return Lanes{8, false};
    return std::nullopt;
  }();
  return lanes;
}

// A plane shorter than a vector: libtorch loads it into one vector and sums its lanes one by one.
void PlaneSumsSequential(const float* g, const float* x, int64_t len, float mean, float* sumOut, float* dotOut) {
  float so = g[0], dO = (x[0] - mean) * g[0];
  for (int64_t i = 1; i < len; i++) {
    so += g[i];
    dO += (x[i] - mean) * g[i];
  }
  *sumOut = so;
  *dotOut = dO;
}

// The baseline build: Vectorized<float> is 8 plain floats, summed across lanes one by one.
void PlaneSumsBaseline(const float* g, const float* x, int64_t len, float mean, float* sumOut, float* dotOut) {
  constexpr int64_t W = 8;
  if (len < W) return PlaneSumsSequential(g, x, len, mean, sumOut, dotOut);
  float s[W], d[W];
  for (int64_t i = 0; i < W; i++) {
    s[i] = g[i];
    d[i] = (x[i] - mean) * g[i];
  }
  int64_t k = W;
  for (; k < len - len % W; k += W) {
    for (int64_t i = 0; i < W; i++) {
      s[i] += g[k + i];
      d[i] += (x[k + i] - mean) * g[k + i];
    }
  }
  for (int64_t i = 0; i < len - k; i++) {
    s[i] += g[k + i];
    d[i] += (x[k + i] - mean) * g[k + i];
  }
  float so = s[0], dO = d[0];
  for (int64_t i = 1; i < W; i++) {
    so += s[i];
    dO += d[i];
  }
  *sumOut = so;
  *dotOut = dO;
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX2: 8 lanes, fused multiply-add in the loop, a butterfly across lanes (ATen's VecReduceAllSIMD).
__attribute__((target("avx2,fma"))) void PlaneSumsAvx2(const float* g, const float* x, int64_t len, float mean, float* sumOut, float* dotOut) {
  constexpr int64_t W = 8;
  if (len < W) return PlaneSumsSequential(g, x, len, mean, sumOut, dotOut);
  const __m256 m = _mm256_set1_ps(mean);
  __m256 s = _mm256_loadu_ps(g);
  __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x), m), s);
  int64_t k = W;
  for (; k < len - len % W; k += W) {
    const __m256 gv = _mm256_loadu_ps(g + k);
    s = _mm256_add_ps(s, gv);
    d = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + k), m), gv, d);
  }
  if (len - k > 0) {
    alignas(32) float gb[W] = {0}, xb[W] = {0}, sb[W], db[W], sn[W], dn[W];
    std::memcpy(gb, g + k, (len - k) * sizeof(float));
    std::memcpy(xb, x + k, (len - k) * sizeof(float));
    const __m256 gv = _mm256_load_ps(gb);
    _mm256_store_ps(sn, _mm256_add_ps(s, gv));
    _mm256_store_ps(dn, _mm256_fmadd_ps(_mm256_sub_ps(_mm256_load_ps(xb), m), gv, d));
    _mm256_store_ps(sb, s);
    _mm256_store_ps(db, d);
    for (int64_t i = 0; i < len - k; i++) {
      sb[i] = sn[i];
      db[i] = dn[i];
    }
    s = _mm256_load_ps(sb);
    d = _mm256_load_ps(db);
  }
  auto across = [](__m256 v) {
    v = _mm256_add_ps(v, _mm256_permute2f128_ps(v, v, 0x1));
    v = _mm256_add_ps(v, _mm256_shuffle_ps(v, v, 0x4E));
    v = _mm256_add_ps(v, _mm256_shuffle_ps(v, v, 0xB1));
    return _mm256_cvtss_f32(v);
  };
  *sumOut = across(s);
  *dotOut = across(d);
}

// AVX-512: the same with 16 lanes.
__attribute__((target("avx512f"))) void PlaneSumsAvx512(const float* g, const float* x, int64_t len, float mean, float* sumOut, float* dotOut) {
  constexpr int64_t W = 16;
  if (len < W) return PlaneSumsSequential(g, x, len, mean, sumOut, dotOut);
  const __m512 m = _mm512_set1_ps(mean);
  __m512 s = _mm512_loadu_ps(g);
  __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x), m), s);
  int64_t k = W;
  for (; k < len - len % W; k += W) {
    const __m512 gv = _mm512_loadu_ps(g + k);
    s = _mm512_add_ps(s, gv);
    d = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(x + k), m), gv, d);
  }
  if (len - k > 0) {
    const __mmask16 lanes = static_cast<__mmask16>((1u << (len - k)) - 1);
    const __m512 gv = _mm512_maskz_loadu_ps(lanes, g + k);
    const __m512 xv = _mm512_maskz_loadu_ps(lanes, x + k);
    s = _mm512_mask_blend_ps(lanes, s, _mm512_add_ps(s, gv));
    d = _mm512_mask_blend_ps(lanes, d, _mm512_fmadd_ps(_mm512_sub_ps(xv, m), gv, d));
  }
  auto across = [](__m512 v) {
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));
    v = _mm512_add_ps(v, _mm512_shuffle_ps(v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_shuffle_ps(v, v, 0xB1));
    return _mm512_cvtss_f32(v);
  };
  *sumOut = across(s);
  *dotOut = across(d);
}
#endif

// sum(g) and sum((x - mean) * g) over one plane, as reduce_all and map2_reduce_all of libtorch's
// kernels on this CPU.
void PlaneGradSums(const float* g, const float* x, int64_t len, float mean, Lanes lanes, float* sum, float* dot) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (lanes.width == 16) return PlaneSumsAvx512(g, x, len, mean, sum, dot);
  if (lanes.fma) return PlaneSumsAvx2(g, x, len, mean, sum, dot);
#endif
  PlaneSumsBaseline(g, x, len, mean, sum, dot);
}

// g = dy where y > 0, else 0: ReLU's backward (threshold_backward), materialised as libtorch does.
REPOPT_BODY void ReluMaskBody(float* g, const float* dy, const float* y, int64_t len) {
#pragma omp simd
  for (int64_t i = 0; i < len; i++) {
    const float d0 = dy[i];  // loaded unconditionally, so the select vectorises
    g[i] = y[i] > 0.f ? d0 : 0.f;
  }
}
REPOPT_ISA_VARIANTS(void, ReluMask, (float* g, const float* dy, const float* y, int64_t len), (g, dy, y, len))

template <bool F, bool Relu>
inline __attribute__((always_inline)) void GradInputLoop(float* dx, const float* dy, const float* y, const float* x, int64_t len, float mean, float k,
                                                         float gradMean, float invstd, float w) {
#pragma omp simd
  for (int64_t i = 0; i < len; i++) {
    const float d0 = dy[i];  // loaded unconditionally, so the select vectorises
    const float g = Relu && !(y[i] > 0.f) ? 0.f : d0;
    dx[i] = AddScaled<F>(g - gradMean, -(x[i] - mean), k) * invstd * w;
  }
}

// dx = (g - gradMean - (x - mean) * k) * invstd * w, libtorch's training-mode formula (its vector
// kernels contract the inner product into one fused multiply-add), with g = dy masked by y > 0
// (ReLU's backward) when y is given.
REPOPT_BODY void GradInputBody(float* dx, const float* dy, const float* y, const float* x, int64_t len, float mean, float k, float gradMean,
                               float invstd, float w, bool fma) {
  if (fma) {
    y ? GradInputLoop<true, true>(dx, dy, y, x, len, mean, k, gradMean, invstd, w) : GradInputLoop<true, false>(dx, dy, y, x, len, mean, k, gradMean, invstd, w);
  } else {
    y ? GradInputLoop<false, true>(dx, dy, y, x, len, mean, k, gradMean, invstd, w) : GradInputLoop<false, false>(dx, dy, y, x, len, mean, k, gradMean, invstd, w);
  }
}
REPOPT_ISA_VARIANTS(void, GradInput,
                    (float* dx, const float* dy, const float* y, const float* x, int64_t len, float mean, float k, float gradMean, float invstd, float w,
                     bool fma),
                    (dx, dy, y, x, len, mean, k, gradMean, invstd, w, fma))

// ---- SGD (PyTorch's semantics) with Grad Mults, one pass per tensor
//
// The composed step is five passes (grad * mult; + wd * p; buf * momentum; + (1 - dampening) * g;
// p - lr * d). ATen computes each `a + alpha * b` as one fused multiply-add in its AVX2 and AVX-512
// kernels (vec::fmadd), and in two roundings in its baseline kernels; the same here, so the fused
// step gives the composed step's numbers bit for bit.

// The scalars as ATen receives them from the composed step: computed in double, used as float.
struct SgdHyper {
  float negLr;         // p.add_(d, -lr)
  float momentum;      // buf.mul_(momentum); nesterov: g.add(buf, momentum)
  float gradScale;     // buf.add_(g, 1 - dampening)
  float weightDecay;   // g.add(p, weightDecay)
  bool useMomentum, nesterov, useWeightDecay;
};

// fresh: buf has no history (the first step): buf = g, as PyTorch's clone. The loop-invariant
// choices are template parameters and the scalars locals, so each variant is one straight vector loop.
template <bool F, bool Mult, bool Decay, bool Momentum, bool Fresh, bool Nesterov>
inline __attribute__((always_inline)) void SgdLoop(float* __restrict p, const float* __restrict grad, const float* __restrict mult,
                                                   float* __restrict buf, int64_t n, SgdHyper h) {
  const float negLr = h.negLr, mom = h.momentum, gradScale = h.gradScale, wd = h.weightDecay;
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    float g = grad[i];
    if (Mult) g = g * mult[i];
    if (Decay) g = AddScaled<F>(g, wd, p[i]);
    float d = g;
    if (Momentum) {
      const float b = Fresh ? g : AddScaled<F>(buf[i] * mom, gradScale, g);
      buf[i] = b;
      d = Nesterov ? AddScaled<F>(g, mom, b) : b;
    }
    p[i] = AddScaled<F>(p[i], negLr, d);
  }
}

template <bool F, bool Mult, bool Decay>
inline __attribute__((always_inline)) void SgdRange(float* p, const float* grad, const float* mult, float* buf, bool fresh, int64_t n, const SgdHyper& h) {
  if (!h.useMomentum) return SgdLoop<F, Mult, Decay, false, false, false>(p, grad, mult, buf, n, h);
  if (h.nesterov) {
    return fresh ? SgdLoop<F, Mult, Decay, true, true, true>(p, grad, mult, buf, n, h) : SgdLoop<F, Mult, Decay, true, false, true>(p, grad, mult, buf, n, h);
  }
  return fresh ? SgdLoop<F, Mult, Decay, true, true, false>(p, grad, mult, buf, n, h) : SgdLoop<F, Mult, Decay, true, false, false>(p, grad, mult, buf, n, h);
}

template <bool F>
inline __attribute__((always_inline)) void SgdAny(float* p, const float* grad, const float* mult, float* buf, bool fresh, int64_t n, const SgdHyper& h) {
  if (mult != nullptr) {
    return h.useWeightDecay ? SgdRange<F, true, true>(p, grad, mult, buf, fresh, n, h) : SgdRange<F, true, false>(p, grad, mult, buf, fresh, n, h);
  }
  return h.useWeightDecay ? SgdRange<F, false, true>(p, grad, mult, buf, fresh, n, h) : SgdRange<F, false, false>(p, grad, mult, buf, fresh, n, h);
}

REPOPT_BODY void SgdUpdateBody(float* p, const float* grad, const float* mult, float* buf, bool fresh, int64_t n, const SgdHyper& h, bool fma) {
  if (fma) {
    SgdAny<true>(p, grad, mult, buf, fresh, n, h);
  } else {
    SgdAny<false>(p, grad, mult, buf, fresh, n, h);
  }
}
REPOPT_ISA_VARIANTS(void, SgdUpdate, (float* p, const float* grad, const float* mult, float* buf, bool fresh, int64_t n, const SgdHyper& h, bool fma),
                    (p, grad, mult, buf, fresh, n, h, fma))

// ---- the weight gradient of a convolution with a tiny output, as one FMA chain per weight
//
// For 3x3 convolutions with a handful of output pixels (the last stages of small-input nets),
// libtorch's oneDNN computes the weight gradient at a fraction of its conv speed (bench/README.md
// "Roofline"), and for most shapes its result is one fused multiply-add chain per weight over
// (image, output pixel) in order: gw[o][j] = sum over k = (n, l) of gy[n][o][l] * cols[n][j][l],
// j = (c, kh, kw); where it is not, ChainVerdicts finds out (test/fused-kernels.test.ts). The same chain as a
// register-blocked matrix product (4 rows x 64 columns of accumulators) is ~3x faster (bench layer
// 192 -> 1280 at 2x2 output, batch 32, 1 thread: 4.7 vs 14.8 ms, 120 vs 38 GFLOP/s) and gives
// the same bits. A: [K, O] (gy laid out by k), B: [K, J] (im2col laid out by k), C: [O, J].

template <int64_t R>
inline __attribute__((always_inline)) void ChainTailRows(const float* A, const float* B, float* C, int64_t K, int64_t O, int64_t J, int64_t o0, int64_t j0,
                                                         int64_t j1) {
  for (int64_t o = o0; o < o0 + R; o++) {
    for (int64_t j = j0; j < j1; j++) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; k++) acc = __builtin_fmaf(A[k * O + o], B[k * J + j], acc);
      C[o * J + j] = acc;
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) void ChainGemmAvx512(const float* A, const float* B, float* C, int64_t K, int64_t O, int64_t J, int64_t jBegin,
                                                          int64_t jEnd) {
  constexpr int64_t R = 4, V = 16, NV = 4;
  int64_t j = jBegin;
  for (; j + NV * V <= jEnd; j += NV * V) {
    int64_t o = 0;
    for (; o + R <= O; o += R) {
      __m512 acc[R][NV];
      for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
      for (int64_t k = 0; k < K; k++) {
        const float* b = B + k * J + j;
        __m512 bv[NV];
        for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + v * V);
        const float* a = A + k * O + o;
        for (int r = 0; r < R; r++) {
          const __m512 ar = _mm512_set1_ps(a[r]);
          for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
        }
      }
      for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(C + (o + r) * J + j + v * V, acc[r][v]);
    }
    for (; o < O; o++) ChainTailRows<1>(A, B, C, K, O, J, o, j, j + NV * V);
  }
  for (int64_t o = 0; o < O; o++) ChainTailRows<1>(A, B, C, K, O, J, o, j, jEnd);
}

__attribute__((target("avx2,fma"))) void ChainGemmAvx2(const float* A, const float* B, float* C, int64_t K, int64_t O, int64_t J, int64_t jBegin,
                                                       int64_t jEnd) {
  constexpr int64_t R = 4, V = 8, NV = 3;
  int64_t j = jBegin;
  for (; j + NV * V <= jEnd; j += NV * V) {
    int64_t o = 0;
    for (; o + R <= O; o += R) {
      __m256 acc[R][NV];
      for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = _mm256_setzero_ps();
      for (int64_t k = 0; k < K; k++) {
        const float* b = B + k * J + j;
        __m256 bv[NV];
        for (int v = 0; v < NV; v++) bv[v] = _mm256_loadu_ps(b + v * V);
        const float* a = A + k * O + o;
        for (int r = 0; r < R; r++) {
          const __m256 ar = _mm256_set1_ps(a[r]);
          for (int v = 0; v < NV; v++) acc[r][v] = _mm256_fmadd_ps(ar, bv[v], acc[r][v]);
        }
      }
      for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) _mm256_storeu_ps(C + (o + r) * J + j + v * V, acc[r][v]);
    }
    for (; o < O; o++) ChainTailRows<1>(A, B, C, K, O, J, o, j, j + NV * V);
  }
  for (int64_t o = 0; o < O; o++) ChainTailRows<1>(A, B, C, K, O, J, o, j, jEnd);
}
#endif

// Whether this CPU runs the chain in hardware FMA (the only case where it is oneDNN's).
bool HasChainGemm() { return HostIsa() >= Isa::kAvx2; }

// The AVX-512 kernel where ours run AVX-512 (KernelIsa), else the AVX2 one: the same chain, the same bits.
void ChainGemm(const float* A, const float* B, float* C, int64_t K, int64_t O, int64_t J, int64_t jBegin, int64_t jEnd) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (KernelIsa() == Isa::kAvx512) return ChainGemmAvx512(A, B, C, K, O, J, jBegin, jEnd);
  return ChainGemmAvx2(A, B, C, K, O, J, jBegin, jEnd);
#endif
}

}  // namespace kernels

namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// [N, C, *] in NCHW order: plane (n, c) starts at (n * C + c) * inner.
struct Planes {
  int64_t batch, channels, inner;
  explicit Planes(const at::Tensor& x) : batch(x.size(0)), channels(x.size(1)), inner(x.numel() / std::max<int64_t>(1, x.size(0) * x.size(1))) {}
  int64_t offset(int64_t n, int64_t c) const { return (n * channels + c) * inner; }
  // Channels per parallel task: at least ~32k elements each, so small layers stay on one thread.
  int64_t grain() const { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, batch * inner)); }
};

struct BatchNormTrainBackward final : public torch::autograd::Node {
  SavedVariable input, output, weight;  // output: only with the fused ReLU
  at::Tensor mean, invstd;              // float [C], no autograd
  bool relu = false;
  double eps = 1e-5;

  variable_list apply(variable_list&& grads) override {
    const at::Tensor x = input.unpack();
    const at::Tensor y = relu ? output.unpack(shared_from_this()) : at::Tensor();
    const at::Tensor w = weight.unpack();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    if (at::GradMode::is_enabled()) {
      // backward with create_graph: libtorch's own differentiable ops, so higher derivatives exist
      const at::Tensor g = relu ? at::threshold_backward(grads[0], y, 0) : grads[0];
      auto [dx, dw, db] = at::native_batch_norm_backward(g, x, w, {}, {}, mean, invstd, true, eps,
                                                         {should_compute_output(0), should_compute_output(1), should_compute_output(2)});
      return {dx, dw, db};
    }
    const at::Tensor dy = grads[0].contiguous();
    const Planes p(x);
    const int64_t count = p.batch * p.inner;
    const bool needInput = should_compute_output(0), needWeight = should_compute_output(1), needBias = should_compute_output(2);
    at::Tensor dx = needInput ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::Tensor();
    at::Tensor dw = needWeight ? at::empty({p.channels}, x.options()) : at::Tensor();
    at::Tensor db = needBias ? at::empty({p.channels}, x.options()) : at::Tensor();
    const float* xd = x.data_ptr<float>();
    const float* yd = y.defined() ? y.data_ptr<float>() : nullptr;
    const float* dyd = dy.data_ptr<float>();
    const float* wd = w.defined() ? w.data_ptr<float>() : nullptr;
    const float* md = mean.data_ptr<float>();
    const float* isd = invstd.data_ptr<float>();
    float* dxd = needInput ? dx.data_ptr<float>() : nullptr;
    float* dwd = needWeight ? dw.data_ptr<float>() : nullptr;
    float* dbd = needBias ? db.data_ptr<float>() : nullptr;
    const kernels::Lanes lanes = *kernels::CpuKernels();  // forward ran, so libtorch's kernels are known
    at::parallel_for(0, p.channels, p.grain(), [&](int64_t begin, int64_t end) {
      std::vector<float> masked(yd ? p.inner : 0);  // ReLU's backward of one plane, as libtorch materialises it
      for (int64_t c = begin; c < end; c++) {
        double sum = 0, dot = 0;
        for (int64_t n = 0; n < p.batch; n++) {
          const int64_t o = p.offset(n, c);
          if (yd != nullptr) kernels::ReluMask(masked.data(), dyd + o, yd + o, p.inner);
          float s, d;
          kernels::PlaneGradSums(yd ? masked.data() : dyd + o, xd + o, p.inner, md[c], lanes, &s, &d);
          sum += s;
          dot += d;
        }
        const float is = isd[c];
        if (dxd != nullptr) {
          const float k = static_cast<float>(dot) * is * is / static_cast<float>(count);
          const float gradMean = static_cast<float>(sum / static_cast<double>(count));
          const float wc = wd ? wd[c] : 1.f;
          for (int64_t n = 0; n < p.batch; n++) {
            const int64_t o = p.offset(n, c);
            kernels::GradInput(dxd + o, dyd + o, yd ? yd + o : nullptr, xd + o, p.inner, md[c], k, gradMean, is, wc, lanes.fma);
          }
        }
        if (dwd != nullptr) dwd[c] = static_cast<float>(dot * static_cast<double>(is));
        if (dbd != nullptr) dbd[c] = static_cast<float>(sum);
      }
    });
    return {dx, dw, db};
  }
  std::string name() const override { return relu ? "BatchNormReluTrainBackward" : "BatchNormTrainBackward"; }
  void release_variables() override {
    input.reset_data();
    output.reset_data();
    weight.reset_data();
    mean.reset();
    invstd.reset();
  }
};

bool IsParamVector(const at::Tensor& t, int64_t channels) {
  return !t.defined() || (t.scalar_type() == at::kFloat && t.device().is_cpu() && t.dim() == 1 && t.size(0) == channels && t.is_contiguous());
}

const at::Tensor& OptionalTensor(const Napi::Value& v, const char* what) {
  static const at::Tensor undefined;
  return v.IsNull() || v.IsUndefined() ? undefined : TensorOf(v, what);
}

// batchNormTrain(input, weight|null, bias|null, runningMean|null, runningVar|null, momentum, eps, relu) -> output|null:
// training-mode BatchNorm (batch statistics; running stats updated in place) of a contiguous float32 CPU
// tensor [N, C, H, W], followed by ReLU when `relu`; differentiable in input, weight and bias. null when the
// arguments are outside what this kernel covers (another dtype, device or layout, mismatched vectors, one
// value per channel): the caller then uses ATen's batch_norm, which also gives ATen's error messages.
Napi::Value BatchNormTrain(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GUARD_BEGIN
    const at::Tensor& x = TensorOf(info[0], "input");
    const at::Tensor& weight = OptionalTensor(info[1], "weight");
    const at::Tensor& bias = OptionalTensor(info[2], "bias");
    const at::Tensor& runningMean = OptionalTensor(info[3], "runningMean");
    const at::Tensor& runningVar = OptionalTensor(info[4], "runningVar");
    const double momentum = info[5].As<Napi::Number>().DoubleValue();
    const double eps = info[6].As<Napi::Number>().DoubleValue();
    const bool relu = info[7].As<Napi::Boolean>().Value();
    // 4-d NCHW only: where a tensor is also channels-last contiguous (C == 1 or H * W == 1) libtorch
    // may take its channels-last path, which sums in float.
    if (x.scalar_type() != at::kFloat || !x.device().is_cpu() || x.dim() != 4 || !x.is_contiguous() ||
        x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      return env.Null();
    }
    const std::optional<kernels::Lanes> lanes = kernels::CpuKernels();
    const Planes p(x);
    const int64_t count = p.batch * p.inner;
    if (!lanes || count <= 1 || !IsParamVector(weight, p.channels) || !IsParamVector(bias, p.channels) || !IsParamVector(runningMean, p.channels) ||
        !IsParamVector(runningVar, p.channels)) {
      return env.Null();
    }

    at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
    at::Tensor mean = at::empty({p.channels}, x.options());
    at::Tensor invstd = at::empty({p.channels}, x.options());
    {
      const float* xd = x.data_ptr<float>();
      float* yd = y.data_ptr<float>();
      float* md = mean.data_ptr<float>();
      float* isd = invstd.data_ptr<float>();
      const float* wd = weight.defined() ? weight.data_ptr<float>() : nullptr;
      const float* bd = bias.defined() ? bias.data_ptr<float>() : nullptr;
      float* rmd = runningMean.defined() ? runningMean.data_ptr<float>() : nullptr;
      float* rvd = runningVar.defined() ? runningVar.data_ptr<float>() : nullptr;
      const float momentumF = static_cast<float>(momentum);
      const bool fma = lanes->fma;
      at::parallel_for(0, p.channels, p.grain(), [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; c++) {
          double sum = 0;
          for (int64_t n = 0; n < p.batch; n++) sum += kernels::SumD(xd + p.offset(n, c), p.inner);
          const float m = static_cast<float>(sum / static_cast<double>(count));
          double sq = 0;
          for (int64_t n = 0; n < p.batch; n++) sq += kernels::SquaredDeviationSumD(xd + p.offset(n, c), p.inner, m);
          const float varSum = static_cast<float>(sq);
          const double var = varSum / static_cast<float>(count);
          const float is = var == 0 && eps == 0 ? 0.f : static_cast<float>(1.0 / std::sqrt(var + eps));
          md[c] = m;
          isd[c] = is;
          if (rmd != nullptr) rmd[c] = momentumF * m + (1 - momentumF) * rmd[c];
          if (rvd != nullptr) {
            const double unbiased = varSum / static_cast<float>(count - 1);
            rvd[c] = static_cast<float>(momentumF * unbiased + (1 - momentumF) * rvd[c]);
          }
          const float alpha = is * (wd ? wd[c] : 1.f);
          const float b = bd ? bd[c] : 0.f;
          const float beta = fma ? std::fmaf(-m, alpha, b) : b - m * alpha;
          for (int64_t n = 0; n < p.batch; n++) {
            const int64_t o = p.offset(n, c);
            kernels::Affine(yd + o, xd + o, p.inner, alpha, beta, relu, fma);
          }
        }
      });
    }
    if (torch::autograd::compute_requires_grad(x, weight, bias)) {
      auto fn = std::shared_ptr<BatchNormTrainBackward>(new BatchNormTrainBackward(), torch::autograd::deleteNode);
      fn->set_next_edges(torch::autograd::collect_next_edges(x, weight, bias));
      fn->relu = relu;
      fn->input = SavedVariable(x, false);
      if (weight.defined()) fn->weight = SavedVariable(weight, false);
      fn->eps = eps;
      fn->mean = mean;
      fn->invstd = invstd;
      torch::autograd::set_history(y, fn);
      if (relu) fn->output = SavedVariable(y, true);
    }
    return WrapTensor(env, y);
  GUARD_END(env)
}

// Whether oneDNN's weight gradient is the plain chain for one problem (shapes and thread count):
// for most shapes it is, but where oneDNN splits the reduction over threads (small channel counts
// at 2 threads) or picks another kernel (8 input channels) it is not. So the first backward of each
// problem computes both and compares them bit for bit; the chain is used from then on only where
// they were equal (oneDNN's algorithm is fixed by the problem, not the data).
class ChainVerdicts {
 public:
  std::optional<bool> get(const std::vector<int64_t>& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = verdicts_.find(key);
    return it == verdicts_.end() ? std::nullopt : std::optional<bool>(it->second);
  }
  void set(const std::vector<int64_t>& key, bool same) {
    std::lock_guard<std::mutex> lock(mutex_);
    verdicts_[key] = same;
  }
  std::pair<int64_t, int64_t> counts() {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t same = 0;
    for (const auto& [key, s] : verdicts_) same += s ? 1 : 0;
    return {same, static_cast<int64_t>(verdicts_.size()) - same};
  }

 private:
  std::mutex mutex_;
  std::map<std::vector<int64_t>, bool> verdicts_;
};
ChainVerdicts g_chainVerdicts;

// Backward of conv2d(x, w) (no bias, groups 1, dilation 1) with a tiny output: the input gradient
// from libtorch (convolution_backward with only that output), the weight gradient as oneDNN's
// FMA chain (kernels::ChainGemm), ~3x faster than oneDNN there and the same bits (checked per
// problem, ChainVerdicts).
struct ConvSmallOutputBackward final : public torch::autograd::Node {
  SavedVariable input, weight;
  std::vector<int64_t> stride, padding;

  variable_list apply(variable_list&& grads) override {
    const at::Tensor x = input.unpack();
    const at::Tensor w = weight.unpack();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    const at::Tensor gy = grads[0].contiguous();
    const bool needInput = should_compute_output(0), needWeight = should_compute_output(1);
    auto libtorch = [&](bool input, bool weight) {
      return at::convolution_backward(gy, x, w, c10::nullopt, stride, padding, {1, 1}, false, {0, 0}, 1, {input, weight, false});
    };
    const std::vector<int64_t> key{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3),
                                   stride[0], stride[1], padding[0], padding[1], at::get_num_threads()};
    const std::optional<bool> verdict = needWeight ? g_chainVerdicts.get(key) : std::nullopt;
    // libtorch's op where the chain does not serve: backward with create_graph (its op is
    // differentiable, so higher derivatives exist), no weight gradient wanted, or a problem where
    // oneDNN sums in another order
    if (at::GradMode::is_enabled() || !needWeight || verdict == false) {
      auto [dx, dw, db] = libtorch(needInput, needWeight);
      return {dx, dw};
    }
    const at::Tensor gx = needInput ? std::get<0>(libtorch(true, false)) : at::Tensor();
    const int64_t n = x.size(0), o = w.size(0), kh = w.size(2), kw = w.size(3);
    const int64_t l = gy.size(2) * gy.size(3), j = w.size(1) * kh * kw, k = n * l;
    // k = (image, output pixel) in order: A[k][o] = gy[n][o][l], B[k][j] = im2col(x)[n][j][l]
    const at::Tensor a = gy.reshape({n, o, l}).permute({0, 2, 1}).contiguous();
    const at::Tensor b = at::im2col(x, {kh, kw}, {1, 1}, padding, stride).permute({0, 2, 1}).contiguous();
    at::Tensor gw = at::empty({o, w.size(1), kh, kw}, w.options());
    const float* ad = a.data_ptr<float>();
    const float* bd = b.data_ptr<float>();
    float* cd = gw.data_ptr<float>();
    at::parallel_for(0, j, 256, [&](int64_t begin, int64_t end) { kernels::ChainGemm(ad, bd, cd, k, o, j, begin, end); });
    if (!verdict) {  // this problem's first backward: compare, keep libtorch's this time
      at::Tensor reference = std::get<1>(libtorch(false, true));
      g_chainVerdicts.set(key, at::equal(gw, reference));
      gw = reference;
    }
    return {gx, gw};
  }
  std::string name() const override { return "ConvSmallOutputBackward"; }
  void release_variables() override {
    input.reset_data();
    weight.reset_data();
  }
};

// convSmallOutput(input, weight, stride[2], padding[2], maxPixels) -> output|null: conv2d(input, weight)
// (no bias, groups 1, dilation 1) whose backward computes the weight gradient as oneDNN's FMA chain
// in a faster kernel. null, and nothing done, unless: grad mode on and the weight requires grad,
// contiguous float32 CPU NCHW tensors, a kernel of at least 2x2, at least 4096 weights (so the
// first-backward comparison is a real test), at most maxPixels output pixels, and a CPU with FMA;
// the caller then runs conv2d.
Napi::Value ConvSmallOutput(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GUARD_BEGIN
    const at::Tensor& x = TensorOf(info[0], "input");
    const at::Tensor& w = TensorOf(info[1], "weight");
    auto pair = [](const Napi::Value& v) {
      const auto a = v.As<Napi::Array>();
      return std::vector<int64_t>{a.Get(0u).As<Napi::Number>().Int64Value(), a.Get(1u).As<Napi::Number>().Int64Value()};
    };
    const std::vector<int64_t> stride = pair(info[2]), padding = pair(info[3]);
    const int64_t maxPixels = info[4].As<Napi::Number>().Int64Value();
    static const bool chain = kernels::HasChainGemm();
    auto fits = [](const at::Tensor& t) { return t.scalar_type() == at::kFloat && t.device().is_cpu() && t.dim() == 4 && t.is_contiguous(); };
    if (!chain || !at::GradMode::is_enabled() || !w.requires_grad() || !fits(x) || !fits(w) || x.size(1) != w.size(1) || w.size(2) < 2 || w.size(3) < 2 ||
        w.numel() < 4096 ||
        stride[0] < 1 || stride[1] < 1 || padding[0] < 0 || padding[1] < 0) {
      return env.Null();
    }
    const int64_t ho = (x.size(2) + 2 * padding[0] - w.size(2)) / stride[0] + 1;
    const int64_t wo = (x.size(3) + 2 * padding[1] - w.size(3)) / stride[1] + 1;
    if (ho < 1 || wo < 1 || ho * wo > maxPixels) return env.Null();
    at::Tensor y;
    {
      at::NoGradGuard noGrad;
      y = at::conv2d(x, w, {}, stride, padding);
    }
    auto fn = std::shared_ptr<ConvSmallOutputBackward>(new ConvSmallOutputBackward(), torch::autograd::deleteNode);
    fn->set_next_edges(torch::autograd::collect_next_edges(x, w));
    fn->input = SavedVariable(x, false);
    fn->weight = SavedVariable(w, false);
    fn->stride = stride;
    fn->padding = padding;
    torch::autograd::set_history(y, fn);
    return WrapTensor(env, y);
  GUARD_END(env)
}

// fusedKernelModel() -> {lanes, fma} | null: the libtorch kernels the BatchNorm and SGD kernels reproduce
// here (floats per vector, fused multiply-adds), null where they stand down (another libtorch).
Napi::Value FusedKernelModel(const Napi::CallbackInfo& info) {
  const std::optional<kernels::Lanes> lanes = kernels::CpuKernels();
  if (!lanes) return info.Env().Null();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("lanes", Napi::Number::New(info.Env(), lanes->width));
  o.Set("fma", Napi::Boolean::New(info.Env(), lanes->fma));
  o.Set("isa", Napi::String::New(info.Env(), kernels::IsaName(kernels::KernelIsa())));
  o.Set("hostIsa", Napi::String::New(info.Env(), kernels::IsaName(kernels::HostIsa())));
  return o;
}

// convSmallOutputProblems() -> {chain, libtorch}: how many convolution problems (shapes, threads)
// were checked on their first backward and take the chain kernel from then on, and how many stay
// with libtorch's because oneDNN reduces in another order there.
Napi::Value ConvSmallOutputProblems(const Napi::CallbackInfo& info) {
  const auto [same, other] = g_chainVerdicts.counts();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("chain", Napi::Number::New(info.Env(), static_cast<double>(same)));
  o.Set("libtorch", Napi::Number::New(info.Env(), static_cast<double>(other)));
  return o;
}

bool SameLayout(const at::Tensor& t, const at::Tensor& p) {
  return t.defined() && t.scalar_type() == at::kFloat && t.device().is_cpu() && t.sizes() == p.sizes() && t.strides() == p.strides();
}

// sgdStep(params, grads, mults, bufs, {lr, momentum, dampening, weightDecay, nesterov}) -> (buffer|null)[] | null:
// one SGD step (PyTorch's semantics; g = grad * mult + weightDecay * p when a Grad Mult is given) on
// each float32 CPU parameter in place, in one pass per tensor. mults[i] / bufs[i] may be null (no
// mult; no momentum history yet). Returns the momentum buffers it created (null where it used the
// given one or momentum is 0), or null without touching anything when a tensor is outside what it
// covers (dtype, device, or a layout unlike its parameter's): the caller then runs the composed step.
Napi::Value SgdStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GUARD_BEGIN
    const auto params = info[0].As<Napi::Array>(), grads = info[1].As<Napi::Array>(), mults = info[2].As<Napi::Array>(), bufs = info[3].As<Napi::Array>();
    const auto hyper = info[4].As<Napi::Object>();
    const uint32_t count = params.Length();
    if (grads.Length() != count || mults.Length() != count || bufs.Length() != count) throw std::invalid_argument("sgdStep: arrays of different lengths");
    const double lr = hyper.Get("lr").As<Napi::Number>().DoubleValue();
    const double momentum = hyper.Get("momentum").As<Napi::Number>().DoubleValue();
    const double dampening = hyper.Get("dampening").As<Napi::Number>().DoubleValue();
    const double weightDecay = hyper.Get("weightDecay").As<Napi::Number>().DoubleValue();
    const kernels::SgdHyper h{static_cast<float>(-lr),
                              static_cast<float>(momentum),
                              static_cast<float>(1 - dampening),
                              static_cast<float>(weightDecay),
                              momentum != 0,
                              hyper.Get("nesterov").ToBoolean().Value(),
                              weightDecay != 0};
    const std::optional<kernels::Lanes> lanes = kernels::CpuKernels();
    if (!lanes) return env.Null();
    std::vector<at::Tensor> p(count), g(count), m(count), b(count);
    for (uint32_t i = 0; i < count; i++) {
      p[i] = TensorOf(params.Get(i), "param");
      g[i] = TensorOf(grads.Get(i), "grad");
      m[i] = OptionalTensor(mults.Get(i), "mult");
      b[i] = OptionalTensor(bufs.Get(i), "momentum buffer");
      const bool ok = p[i].scalar_type() == at::kFloat && p[i].device().is_cpu() && p[i].is_non_overlapping_and_dense() && SameLayout(g[i], p[i]) &&
                      (!m[i].defined() || SameLayout(m[i], p[i])) && (!b[i].defined() || SameLayout(b[i], p[i]));
      if (!ok) return env.Null();
    }
    Napi::Array created = Napi::Array::New(env, count);
    for (uint32_t i = 0; i < count; i++) {
      const bool fresh = h.useMomentum && !b[i].defined();
      at::Tensor newBuf;
      if (fresh) newBuf = b[i] = at::empty_like(p[i]);  // same strides as the parameter
      float* pd = p[i].data_ptr<float>();
      const float* gd = g[i].data_ptr<float>();
      const float* md = m[i].defined() ? m[i].data_ptr<float>() : nullptr;
      float* bd = b[i].defined() ? b[i].data_ptr<float>() : nullptr;
      at::parallel_for(0, p[i].numel(), 32768, [&](int64_t begin, int64_t end) {
        kernels::SgdUpdate(pd + begin, gd + begin, md ? md + begin : nullptr, bd ? bd + begin : nullptr, fresh, end - begin, h, lanes->fma);
      });
      // in-place writes, as add_ / mul_: autograd sees the new versions
      torch::autograd::impl::bump_version(p[i]);
      if (b[i].defined() && !fresh) torch::autograd::impl::bump_version(b[i]);
      created.Set(i, fresh ? WrapTensor(env, newBuf) : env.Null());
    }
    return created;
  GUARD_END(env)
}

}  // namespace

void InitKernels(Napi::Env env, Napi::Object exports) {
  exports.Set("batchNormTrain", Napi::Function::New(env, BatchNormTrain, "batchNormTrain"));
  exports.Set("sgdStep", Napi::Function::New(env, SgdStep, "sgdStep"));
  exports.Set("convSmallOutput", Napi::Function::New(env, ConvSmallOutput, "convSmallOutput"));
  exports.Set("fusedKernelModel", Napi::Function::New(env, FusedKernelModel, "fusedKernelModel"));
  exports.Set("convSmallOutputProblems", Napi::Function::New(env, ConvSmallOutputProblems, "convSmallOutputProblems"));
}

}  // namespace repopt
