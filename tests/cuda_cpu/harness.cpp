// Runs src/cuda/kernels.cu on the CPU (tests/cuda_kernels_cpu.rs builds this file into a
// shared library): each launch calls the kernel once per simulated thread, block by block
// and thread by thread. Every kernel is a grid-stride loop whose threads touch disjoint
// elements, so this sequential order computes what any parallel schedule would; the test
// also runs launches in the reverse order (last block's last thread first), so that
// threads whose elements overlap (one element written twice, or read after another
// thread wrote it, in place) give a result that depends on the order, and show.
#include "shim.h"

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
static int reverse_order;

#include "kernels.cu"

template <typename F> static void launch(unsigned grid, unsigned block, F f) {
  gridDim = dim3(grid, 1, 1);
  blockDim = dim3(block, 1, 1);
  for (unsigned i = 0; i < grid; i++) {
    const unsigned b = reverse_order ? grid - 1 - i : i;
    for (unsigned j = 0; j < block; j++) {
      blockIdx = make_uint3(b, 0, 0);
      threadIdx = make_uint3(reverse_order ? block - 1 - j : j, 0, 0);
      f();
    }
  }
}

// The kernels' pointer arguments are typed (T*); every pointer type passes alike, so the
// launchers take them as void*.
typedef void (*BinK)(void*, const void*, const void*, size_t);
typedef void (*MulAddK)(void*, const void*, const void*, size_t, u64);
typedef void (*UnK)(void*, const void*, size_t, u64);
typedef void (*CopyK)(void*, const void*, size_t);

extern "C" {
// 0: threads in order (block 0's thread 0 first); 1: in reverse. For the launches after.
void emu_set_reverse(int r) { reverse_order = r; }
void emu_binary(void* k, unsigned grid, unsigned block, void* d, const void* a, const void* b, size_t n) {
  launch(grid, block, [&] { ((BinK)k)(d, a, b, n); });
}
void emu_mul_add(void* k, unsigned grid, unsigned block, void* d, const void* acc, const void* x, size_t n, u64 s) {
  launch(grid, block, [&] { ((MulAddK)k)(d, acc, x, n, s); });
}
void emu_unary(void* k, unsigned grid, unsigned block, void* d, const void* x, size_t n, u64 s) {
  launch(grid, block, [&] { ((UnK)k)(d, x, n, s); });
}
void emu_copy(unsigned grid, unsigned block, void* d, const void* s, size_t bytes) {
  launch(grid, block, [&] { oxccl_copy(d, s, bytes); });
}
}
