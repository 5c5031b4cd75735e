// A C++ program that includes the header: NCCL_CONFIG_INITIALIZER, enums and out
// parameters in C++, and an all-reduce over two ranks driven from std::threads.
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "nccl.h"

static_assert(sizeof(ncclUniqueId) == NCCL_UNIQUE_ID_BYTES, "unique id is 128 bytes");
static_assert(ncclFloat8e5m2 == 11 && ncclTimeout == 8 && ncclAvg == 4, "NCCL's values");

#define CHECK(call)                                                                       \
  do {                                                                                    \
    ncclResult_t r_ = (call);                                                             \
    if (r_ != ncclSuccess) {                                                              \
      std::fprintf(stderr, "%s failed: %s: %s\n", #call, ncclGetErrorString(r_),          \
                   ncclGetLastError(nullptr));                                            \
      std::exit(1);                                                                       \
    }                                                                                     \
  } while (0)

int main() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  if (config.size != sizeof(ncclConfig_t) || config.magic != NCCL_API_MAGIC) return 1;
  ncclComm_t comms[2];
  CHECK(ncclCommInitAll(comms, 2, nullptr));
  std::vector<std::thread> ranks;
  std::vector<double> out(2);
  for (int i = 0; i < 2; i++)
    ranks.emplace_back([&, i] {
      std::vector<double> x(1000, i + 1.5);
      cudaStream_t stream = nullptr;
      CHECK(ncclAllReduce(x.data(), x.data(), x.size(), ncclDouble, ncclSum, comms[i], stream));
      out[i] = x[999];
    });
  for (auto &t : ranks) t.join();
  for (int i = 0; i < 2; i++) {
    if (out[i] != 4.0) {
      std::fprintf(stderr, "rank %d got %g\n", i, out[i]);
      return 1;
    }
    CHECK(ncclCommDestroy(comms[i]));
  }
  std::printf("header.cpp OK\n");
  return 0;
}
