// The shim under which tests/cuda_kernels_cpu.rs compiles src/cuda/kernels.cu as host C++
// and runs every simulated thread of a launch in turn on the CPU.
//
// CUDA's own fp16/bf16/fp8 headers (pip wheel nvidia-cuda-runtime-cu12; crt/host_defines.h
// from nvidia-cuda-nvcc-cu12) provide __half, __nv_bfloat16, the fp8 conversions and
// their host implementations (NVIDIA's software emulation of the device instructions:
// __hadd, __hmul, __hadd2, __hmax, __heq, __nv_cvt_float_to_fp8, ...). This file adds only
// what is device-only: the launch keywords, the thread coordinates, and the f32/f64
// intrinsics and bit casts the kernels call. On x86-64 (SSE arithmetic, FLT_EVAL_METHOD 0,
// no FTZ/DAZ, compiled with -ffp-contract=off) each of those is one IEEE operation rounded
// to nearest even, which is what the _rn intrinsics are on the device.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "the shim needs float and double arithmetic evaluated in their own precision (SSE)"
#endif

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __restrict__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict

// The kernels' 16-byte vectors. On the device a uint4 load or store needs a 16-byte aligned
// address (else the kernel faults); a host CPU forgives it. This uint4, which replaces
// CUDA's for kernels.cu (the CUDA headers are already in), checks the address of every
// vector it is copied from or to and aborts the test, naming it, where the device would
// fault. (Rather than -fsanitize=alignment: clang's does not cover struct copies, and
// both need a runtime library in the harness, which clang does not link into one.)
struct alignas(16) oxccl_shim_uint4 {
  unsigned int x, y, z, w;
  static void check(const void* p, const char* what) {
    std::uintptr_t a = (std::uintptr_t)p;
    // Opaque to the optimiser, which may assume the alignment the type promises (clang does,
    // and would drop the test).
    __asm__ volatile("" : "+r"(a));
    if (a & 15) {
      std::fprintf(stderr, "kernels.cu: 16-byte vector %s at %p, which is not 16-byte aligned: the device faults\n",
                   what, p);
      std::abort();
    }
  }
  oxccl_shim_uint4() = default;
  oxccl_shim_uint4(const oxccl_shim_uint4& o) : x(o.x), y(o.y), z(o.z), w(o.w) { check(&o, "load"); }
  oxccl_shim_uint4& operator=(const oxccl_shim_uint4& o) {
    check(&o, "load");
    check(this, "store");
    x = o.x, y = o.y, z = o.z, w = o.w;
    return *this;
  }
};
#define uint4 oxccl_shim_uint4

// The coordinates of the simulated thread; the harness sets them before each call.
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

template <typename To, typename From> static inline To oxccl_shim_bits(From x) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between types of one size");
  To t;
  std::memcpy(&t, &x, sizeof t);
  return t;
}

static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// u64 -> f32/f64: the conversion instruction rounds to nearest even (cvtsi2ss/sd and
// GCC's unsigned fix-up keep one rounding).
static inline float __ull2float_rn(unsigned long long x) { return (float)x; }
static inline double __ull2double_rn(unsigned long long x) { return (double)x; }
static inline float __int_as_float(int x) { return oxccl_shim_bits<float>(x); }
static inline int __float_as_int(float x) { return oxccl_shim_bits<int>(x); }
static inline float __uint_as_float(unsigned int x) { return oxccl_shim_bits<float>(x); }
static inline double __longlong_as_double(long long x) { return oxccl_shim_bits<double>(x); }
static inline long long __double_as_longlong(double x) { return oxccl_shim_bits<long long>(x); }

// fmaxf/fminf/fmax/fmin: on the device (PTX max/min.f32/f64, IEEE 754-2019
// maximumNumber/minimumNumber) a NaN operand, signaling or quiet, yields the other one.
// glibc's versions return a quiet NaN for a signaling NaN operand (IEEE 754-2008 maxNum),
// which is not what the kernels get: the kernels' calls are routed to these instead.
template <typename F> static inline F oxccl_shim_max(F a, F b) {
  if (a != a) return b;
  if (b != b) return a;
  return a < b ? b : a;
}
template <typename F> static inline F oxccl_shim_min(F a, F b) {
  if (a != a) return b;
  if (b != b) return a;
  return b < a ? b : a;
}
#define fmaxf(a, b) oxccl_shim_max<float>((a), (b))
#define fminf(a, b) oxccl_shim_min<float>((a), (b))
#define fmax(a, b) oxccl_shim_max<double>((a), (b))
#define fmin(a, b) oxccl_shim_min<double>((a), (b))
