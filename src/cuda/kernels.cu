// oxccl's reduction and copy kernels, compiled at run time by NVRTC (src/cuda/mod.rs
// embeds this file with include_str! and lists the kernel names).
//
// Every kernel computes bit-for-bit what the CPU's portable kernels (src/reduce/scalar.rs)
// compute, NaN payloads aside:
//   - integers wrap; Avg's division truncates toward zero;
//   - Max/Min ignore a NaN operand and order -0 below +0;
//   - f16 and bf16 use their native arithmetic (cuda_fp16.h, cuda_bf16.h) for sum, product,
//     max and min: one correctly rounded f16/bf16 operation equals the CPU's "compute in f32,
//     round once" (f32 holds 2p+2 bits of either, so the double rounding is innocuous);
//     Avg's division runs in f32 and is rounded to the type, as the CPU does (correctly
//     rounded all the same: checked exhaustively for every divisor up to 4096); the PreMulSum
//     step (acc + s*x) is fused in one f32 FMA, then rounded to the type, as the CPU does:
//     two roundings, so for f16, bf16 and e5m2 it can be one unit in the last place off the
//     correctly rounded acc + s*x (s*x a tie of the type, acc a nudge that f32 drops;
//     tests/cuda_kernels_cpu.rs pins such cases);
//   - fp8 (e4m3, e5m2) is widened to f32, computed, and rounded to nearest even with
//     saturation to the largest finite value (cuda_fp8.h, __NV_SATFINITE).
//
// Kernels (NAME is i8 u8 i32 u32 i64 u64 f16 f32 f64 bf16 f8e4m3 f8e5m2, in DataType's
// order; n counts elements; scalars arrive as the raw bits of a value of the type, in the
// low bytes of a u64):
//   oxccl_{sum,prod,max,min}_NAME(T* dst, const T* a, const T* b, size_t n): dst = a op b
//   oxccl_mul_add_NAME(T* dst, const T* acc, const T* x, size_t n, u64 s): dst = acc + s*x
//   oxccl_scale_NAME(T* dst, const T* x, size_t n, u64 s):                 dst = s*x
//   oxccl_div_NAME(T* dst, const T* x, size_t n, u64 d):                   dst = x / d
//   oxccl_copy(void* dst, const void* src, size_t bytes)
// `dst` may equal an input (in place) but must not partially overlap one. Pointers need
// their element's natural alignment; where the outputs and inputs share their alignment
// modulo 16 bytes, the body runs on 16-byte vectors (a scalar head and tail around it).
// Every kernel is a grid-stride loop: any grid size covers any n.
//
// Defining OXCCL_ONLY_TYPE together with OXCCL_TYPE_<NAME> instantiates the kernels of that
// one type (and the copy), for a compilation per data type.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#ifndef OXCCL_BLOCK
#define OXCCL_BLOCK 512
#endif
// 16-byte vectors in flight per thread and iteration of the body.
#ifndef OXCCL_UNROLL
#define OXCCL_UNROLL 4
#endif

typedef unsigned long long u64;
typedef unsigned long long uptr;

namespace oxccl {

// fp8 values travel as their byte; distinct types select their arithmetic.
struct f8e4m3 { unsigned char b; };
struct f8e5m2 { unsigned char b; };

template <typename T> struct Math;

// ---- integers: wrapping arithmetic through the unsigned type -------------------------
template <typename T, typename U, bool SIGNED> struct IntMath {
  static __device__ __forceinline__ T sum(T a, T b) { return (T)(U)((U)a + (U)b); }
  static __device__ __forceinline__ T prod(T a, T b) { return (T)(U)((U)a * (U)b); }
  static __device__ __forceinline__ T max(T a, T b) { return a < b ? b : a; }
  static __device__ __forceinline__ T min(T a, T b) { return b < a ? b : a; }
  static __device__ __forceinline__ T mul_add(T acc, T x, T s) { return sum(acc, prod(x, s)); }
  static __device__ __forceinline__ T scale(T x, T s) { return prod(x, s); }
  static __device__ __forceinline__ T div(T x, u64 d) {
    // The quotient's magnitude is at most |x|: it converts back exactly. d is a rank
    // count, far below 2^63.
    // Types of up to 32 bits divide in 32 bits (the 64-bit division is a subroutine).
    if (sizeof(T) <= 4 && d <= 0x7fffffffull) {
      if (SIGNED) return (T)((int)x / (int)d);
      return (T)((unsigned int)x / (unsigned int)d);
    }
    if (SIGNED) return (T)((long long)x / (long long)d);
    return (T)((u64)x / d);
  }
  static __device__ __forceinline__ T from_bits(u64 s) { return (T)(U)s; }
};
template <> struct Math<signed char> : IntMath<signed char, unsigned char, true> {};
template <> struct Math<unsigned char> : IntMath<unsigned char, unsigned char, false> {};
template <> struct Math<int> : IntMath<int, unsigned int, true> {};
template <> struct Math<unsigned int> : IntMath<unsigned int, unsigned int, false> {};
template <> struct Math<long long> : IntMath<long long, u64, true> {};
template <> struct Math<u64> : IntMath<u64, u64, false> {};

// ---- f32, f64: round-to-nearest intrinsics (never contracted into an FMA) ------------
// Max/Min: equal operands are resolved on their bits so that -0 < +0 (AND picks +0 for
// max, OR picks -0 for min); otherwise fmax/fmin, which return the non-NaN operand.
template <> struct Math<float> {
  static __device__ __forceinline__ float sum(float a, float b) { return __fadd_rn(a, b); }
  static __device__ __forceinline__ float prod(float a, float b) { return __fmul_rn(a, b); }
  static __device__ __forceinline__ float max(float a, float b) {
    return a == b ? __int_as_float(__float_as_int(a) & __float_as_int(b)) : fmaxf(a, b);
  }
  static __device__ __forceinline__ float min(float a, float b) {
    return a == b ? __int_as_float(__float_as_int(a) | __float_as_int(b)) : fminf(a, b);
  }
  static __device__ __forceinline__ float mul_add(float acc, float x, float s) { return __fmaf_rn(x, s, acc); }
  static __device__ __forceinline__ float scale(float x, float s) { return __fmul_rn(x, s); }
  static __device__ __forceinline__ float div(float x, u64 d) { return __fdiv_rn(x, __ull2float_rn(d)); }
  static __device__ __forceinline__ float from_bits(u64 s) { return __uint_as_float((unsigned int)s); }
};
template <> struct Math<double> {
  static __device__ __forceinline__ double sum(double a, double b) { return __dadd_rn(a, b); }
  static __device__ __forceinline__ double prod(double a, double b) { return __dmul_rn(a, b); }
  static __device__ __forceinline__ double max(double a, double b) {
    return a == b ? __longlong_as_double(__double_as_longlong(a) & __double_as_longlong(b)) : fmax(a, b);
  }
  static __device__ __forceinline__ double min(double a, double b) {
    return a == b ? __longlong_as_double(__double_as_longlong(a) | __double_as_longlong(b)) : fmin(a, b);
  }
  static __device__ __forceinline__ double mul_add(double acc, double x, double s) { return __fma_rn(x, s, acc); }
  static __device__ __forceinline__ double scale(double x, double s) { return __dmul_rn(x, s); }
  static __device__ __forceinline__ double div(double x, u64 d) { return __ddiv_rn(x, __ull2double_rn(d)); }
  static __device__ __forceinline__ double from_bits(u64 s) { return __longlong_as_double((long long)s); }
};

// ---- f16, bf16: native arithmetic --------------------------------------------------
template <> struct Math<__half> {
  static __device__ __forceinline__ __half sum(__half a, __half b) { return __hadd(a, b); }
  static __device__ __forceinline__ __half prod(__half a, __half b) { return __hmul(a, b); }
  static __device__ __forceinline__ __half max(__half a, __half b) {
    return __heq(a, b) ? __ushort_as_half(__half_as_ushort(a) & __half_as_ushort(b)) : __hmax(a, b);
  }
  static __device__ __forceinline__ __half min(__half a, __half b) {
    return __heq(a, b) ? __ushort_as_half(__half_as_ushort(a) | __half_as_ushort(b)) : __hmin(a, b);
  }
  static __device__ __forceinline__ __half mul_add(__half acc, __half x, __half s) {
    return __float2half_rn(__fmaf_rn(__half2float(x), __half2float(s), __half2float(acc)));
  }
  static __device__ __forceinline__ __half scale(__half x, __half s) { return __hmul(x, s); }
  static __device__ __forceinline__ __half div(__half x, u64 d) {
    return __float2half_rn(__fdiv_rn(__half2float(x), __ull2float_rn(d)));
  }
  static __device__ __forceinline__ __half from_bits(u64 s) { return __ushort_as_half((unsigned short)s); }
};
template <> struct Math<__nv_bfloat16> {
  typedef __nv_bfloat16 B;
  static __device__ __forceinline__ B sum(B a, B b) { return __hadd(a, b); }
  static __device__ __forceinline__ B prod(B a, B b) { return __hmul(a, b); }
  static __device__ __forceinline__ B max(B a, B b) {
    return __heq(a, b) ? __ushort_as_bfloat16(__bfloat16_as_ushort(a) & __bfloat16_as_ushort(b)) : __hmax(a, b);
  }
  static __device__ __forceinline__ B min(B a, B b) {
    return __heq(a, b) ? __ushort_as_bfloat16(__bfloat16_as_ushort(a) | __bfloat16_as_ushort(b)) : __hmin(a, b);
  }
  static __device__ __forceinline__ B mul_add(B acc, B x, B s) {
    return __float2bfloat16_rn(__fmaf_rn(__bfloat162float(x), __bfloat162float(s), __bfloat162float(acc)));
  }
  static __device__ __forceinline__ B scale(B x, B s) { return __hmul(x, s); }
  static __device__ __forceinline__ B div(B x, u64 d) {
    return __float2bfloat16_rn(__fdiv_rn(__bfloat162float(x), __ull2float_rn(d)));
  }
  static __device__ __forceinline__ B from_bits(u64 s) { return __ushort_as_bfloat16((unsigned short)s); }
};

// ---- fp8: through f32 ----------------------------------------------------------------
template <typename F, __nv_fp8_interpretation_t K> struct F8Math {
  static __device__ __forceinline__ float f(F x) { return __half2float(__half(__nv_cvt_fp8_to_halfraw(x.b, K))); }
  static __device__ __forceinline__ F r(float x) {
    F o;
    o.b = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, K);
    return o;
  }
  static __device__ __forceinline__ F sum(F a, F b) { return r(__fadd_rn(f(a), f(b))); }
  static __device__ __forceinline__ F prod(F a, F b) { return r(__fmul_rn(f(a), f(b))); }
  static __device__ __forceinline__ F max(F a, F b) { return r(Math<float>::max(f(a), f(b))); }
  static __device__ __forceinline__ F min(F a, F b) { return r(Math<float>::min(f(a), f(b))); }
  static __device__ __forceinline__ F mul_add(F acc, F x, F s) { return r(__fmaf_rn(f(x), f(s), f(acc))); }
  static __device__ __forceinline__ F scale(F x, F s) { return r(__fmul_rn(f(x), f(s))); }
  static __device__ __forceinline__ F div(F x, u64 d) { return r(__fdiv_rn(f(x), __ull2float_rn(d))); }
  static __device__ __forceinline__ F from_bits(u64 s) {
    F o;
    o.b = (unsigned char)s;
    return o;
  }
};
template <> struct Math<f8e4m3> : F8Math<f8e4m3, __NV_E4M3> {};
template <> struct Math<f8e5m2> : F8Math<f8e5m2, __NV_E5M2> {};

// ---- element functors ----------------------------------------------------------------
enum { SUM = 0, PROD = 1, MAX = 2, MIN = 3 };

template <typename T, int OP> struct Bin {
  __device__ __forceinline__ T operator()(T a, T b) const {
    if (OP == SUM) return Math<T>::sum(a, b);
    if (OP == PROD) return Math<T>::prod(a, b);
    if (OP == MAX) return Math<T>::max(a, b);
    return Math<T>::min(a, b);
  }
};
template <typename T> struct MulAdd {
  T s;
  __device__ __forceinline__ T operator()(T acc, T x) const { return Math<T>::mul_add(acc, x, s); }
};
template <typename T> struct Scale {
  T s;
  __device__ __forceinline__ T operator()(T x, T) const { return Math<T>::scale(x, s); }
};
template <typename T> struct Div {
  u64 d;
  __device__ __forceinline__ T operator()(T x, T) const { return Math<T>::div(x, d); }
};
template <typename T> struct Copy {
  __device__ __forceinline__ T operator()(T x, T) const { return x; }
};

// One 16-byte vector: element by element, or in f16/bf16 pairs where the op has a paired
// instruction.
template <typename T, typename F> struct Vec {
  static __device__ __forceinline__ uint4 apply(const F& f, uint4 x, uint4 y) {
    const int V = 16 / sizeof(T);
    uint4 r;
    const T* xe = reinterpret_cast<const T*>(&x);
    const T* ye = reinterpret_cast<const T*>(&y);
    T* re = reinterpret_cast<T*>(&r);
#pragma unroll
    for (int k = 0; k < V; k++) re[k] = f(xe[k], ye[k]);
    return r;
  }
};
#define OXCCL_PAIRED(T, T2, OP, FN)                                                     \
  template <> struct Vec<T, Bin<T, OP>> {                                               \
    static __device__ __forceinline__ uint4 apply(const Bin<T, OP>&, uint4 x, uint4 y) { \
      uint4 r;                                                                          \
      const T2* xe = reinterpret_cast<const T2*>(&x);                                   \
      const T2* ye = reinterpret_cast<const T2*>(&y);                                   \
      T2* re = reinterpret_cast<T2*>(&r);                                               \
      _Pragma("unroll") for (int k = 0; k < 4; k++) re[k] = FN(xe[k], ye[k]);           \
      return r;                                                                         \
    }                                                                                   \
  };
OXCCL_PAIRED(__half, __half2, SUM, __hadd2)
OXCCL_PAIRED(__half, __half2, PROD, __hmul2)
OXCCL_PAIRED(__nv_bfloat16, __nv_bfloat162, SUM, __hadd2)
OXCCL_PAIRED(__nv_bfloat16, __nv_bfloat162, PROD, __hmul2)

// dst[i] = f(a[i], b[i]) for i < n (b unread when NIN == 1). Grid-stride loops: a scalar
// head up to dst's 16-byte boundary, a body of 16-byte vectors (U of them in flight per
// thread), a scalar tail. The body runs only where every pointer has dst's alignment
// modulo 16; otherwise everything is the scalar loop.
template <typename T, int NIN, int U, typename F>
__device__ __forceinline__ void map(T* dst, const T* a, const T* b, size_t n, const F& f) {
  const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  const size_t V = 16 / sizeof(T);
  const uptr mis = (uptr)dst & 15;
  const bool vec = mis % sizeof(T) == 0 && ((uptr)a & 15) == mis && (NIN < 2 || ((uptr)b & 15) == mis);
  size_t head = n;
  if (vec) {
    head = ((16 - mis) & 15) / sizeof(T);
    if (head > n) head = n;
  }
  for (size_t i = tid; i < head; i += stride) dst[i] = f(a[i], NIN > 1 ? b[i] : a[i]);
  const size_t nv = (n - head) / V;
  const uint4* av = reinterpret_cast<const uint4*>(a + head);
  const uint4* bv = reinterpret_cast<const uint4*>((NIN > 1 ? b : a) + head);
  uint4* dv = reinterpret_cast<uint4*>(dst + head);
  size_t i = tid;
  for (; i + (U - 1) * stride < nv; i += U * stride) {
    uint4 x[U], y[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      x[u] = av[i + u * stride];
      if (NIN > 1) y[u] = bv[i + u * stride];
    }
#pragma unroll
    for (int u = 0; u < U; u++) dv[i + u * stride] = Vec<T, F>::apply(f, x[u], NIN > 1 ? y[u] : x[u]);
  }
  for (; i < nv; i += stride) {
    const uint4 x = av[i];
    dv[i] = Vec<T, F>::apply(f, x, NIN > 1 ? bv[i] : x);
  }
  for (size_t j = head + nv * V + tid; j < n; j += stride) dst[j] = f(a[j], NIN > 1 ? b[j] : a[j]);
}

}  // namespace oxccl

#define OXCCL_KERNEL extern "C" __global__ void __launch_bounds__(OXCCL_BLOCK)

// Div keeps one vector in flight per thread: the slow path of its division is a call, and
// more live vectors around it spill.
#define OXCCL_KERNELS(NAME, T)                                                                     \
  OXCCL_KERNEL oxccl_sum_##NAME(T* d, const T* a, const T* b, size_t n) {                          \
    oxccl::map<T, 2, OXCCL_UNROLL>(d, a, b, n, oxccl::Bin<T, oxccl::SUM>());                       \
  }                                                                                                \
  OXCCL_KERNEL oxccl_prod_##NAME(T* d, const T* a, const T* b, size_t n) {                         \
    oxccl::map<T, 2, OXCCL_UNROLL>(d, a, b, n, oxccl::Bin<T, oxccl::PROD>());                      \
  }                                                                                                \
  OXCCL_KERNEL oxccl_max_##NAME(T* d, const T* a, const T* b, size_t n) {                          \
    oxccl::map<T, 2, OXCCL_UNROLL>(d, a, b, n, oxccl::Bin<T, oxccl::MAX>());                       \
  }                                                                                                \
  OXCCL_KERNEL oxccl_min_##NAME(T* d, const T* a, const T* b, size_t n) {                          \
    oxccl::map<T, 2, OXCCL_UNROLL>(d, a, b, n, oxccl::Bin<T, oxccl::MIN>());                       \
  }                                                                                                \
  OXCCL_KERNEL oxccl_mul_add_##NAME(T* d, const T* acc, const T* x, size_t n, u64 s) {             \
    oxccl::MulAdd<T> f;                                                                            \
    f.s = oxccl::Math<T>::from_bits(s);                                                            \
    oxccl::map<T, 2, OXCCL_UNROLL>(d, acc, x, n, f);                                               \
  }                                                                                                \
  OXCCL_KERNEL oxccl_scale_##NAME(T* d, const T* x, size_t n, u64 s) {                             \
    oxccl::Scale<T> f;                                                                             \
    f.s = oxccl::Math<T>::from_bits(s);                                                            \
    oxccl::map<T, 1, OXCCL_UNROLL>(d, x, x, n, f);                                                 \
  }                                                                                                \
  OXCCL_KERNEL oxccl_div_##NAME(T* d, const T* x, size_t n, u64 dv) {                              \
    oxccl::Div<T> f;                                                                               \
    f.d = dv;                                                                                      \
    oxccl::map<T, 1, 1>(d, x, x, n, f);                                                            \
  }

#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_i8)
OXCCL_KERNELS(i8, signed char)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_u8)
OXCCL_KERNELS(u8, unsigned char)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_i32)
OXCCL_KERNELS(i32, int)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_u32)
OXCCL_KERNELS(u32, unsigned int)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_i64)
OXCCL_KERNELS(i64, long long)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_u64)
OXCCL_KERNELS(u64, u64)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_f16)
OXCCL_KERNELS(f16, __half)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_f32)
OXCCL_KERNELS(f32, float)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_f64)
OXCCL_KERNELS(f64, double)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_bf16)
OXCCL_KERNELS(bf16, __nv_bfloat16)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_f8e4m3)
OXCCL_KERNELS(f8e4m3, oxccl::f8e4m3)
#endif
#if !defined(OXCCL_ONLY_TYPE) || defined(OXCCL_TYPE_f8e5m2)
OXCCL_KERNELS(f8e5m2, oxccl::f8e5m2)
#endif

OXCCL_KERNEL oxccl_copy(void* dst, const void* src, size_t bytes) {
  oxccl::map<unsigned char, 1, OXCCL_UNROLL>((unsigned char*)dst, (const unsigned char*)src, (const unsigned char*)src, bytes,
                               oxccl::Copy<unsigned char>());
}
