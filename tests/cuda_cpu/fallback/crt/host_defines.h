// Used only when the real crt/host_defines.h (CUDA toolkit, or the pip wheel
// nvidia-cuda-nvcc-cu12) is not on the include path: the few decorations that CUDA's
// vector_types.h and fp16/bf16/fp8 headers need from it under a host compiler.
#pragma once
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __device_builtin__
#define __cudart_builtin__
#define __builtin_align__(a) __attribute__((aligned(a)))
#define __align__(n) __attribute__((aligned(n)))
#define __inline__ __inline__
#define CUDARTAPI
#define __device_builtin_texture_type__
#define __device_builtin_surface_type__
