/* Helpers shared by the C tests: checked calls, element access for every data type as
 * doubles (the tests use small integers and halves, exact in every type), a deadline. */
#ifndef OXCCL_TEST_COMMON_H
#define OXCCL_TEST_COMMON_H

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nccl.h"

#define CHECK(call)                                                                        \
  do {                                                                                     \
    ncclResult_t r_ = (call);                                                              \
    if (r_ != ncclSuccess) {                                                               \
      fprintf(stderr, "%s:%d: %s failed: %s (%d): %s\n", __FILE__, __LINE__, #call,        \
              ncclGetErrorString(r_), (int)r_, ncclGetLastError(NULL));                   \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

#define EXPECT(cond, ...)                                                                  \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "%s:%d: expected %s: ", __FILE__, __LINE__, #cond);                  \
      fprintf(stderr, __VA_ARGS__);                                                        \
      fprintf(stderr, "\n");                                                               \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

/* Kills this process after `seconds`, with a message: a hang fails, never stalls. */
static void on_alarm(int sig) {
  static const char msg[] = "deadline passed: the test hung\n";
  (void)sig;
  if (write(2, msg, sizeof msg - 1) < 0) {
  }
  _exit(124);
}

static inline void deadline(unsigned seconds) {
  signal(SIGALRM, on_alarm);
  alarm(seconds);
}

static inline size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    default: return 8;
  }
}

static inline const char *type_name(ncclDataType_t t) {
  static const char *names[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64",
                                "half", "float", "double", "bfloat16", "f8e4m3", "f8e5m2"};
  return (unsigned)t < 12 ? names[t] : "?";
}

/* IEEE binary16 bits of v (v exactly representable). */
static inline uint16_t to_half(double v) {
  uint16_t sign = 0;
  int e;
  double m;
  if (v == 0) return 0;
  if (v < 0) { sign = 0x8000; v = -v; }
  m = frexp(v, &e); /* v = m * 2^e, m in [0.5, 1) */
  return (uint16_t)(sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)((m * 2 - 1) * 1024));
}

static inline double from_half(uint16_t h) {
  int e = (h >> 10) & 0x1f;
  double m = (h & 0x3ff) / 1024.0;
  double v = e == 0 ? ldexp(m, -14) : ldexp(1 + m, e - 15);
  return (h & 0x8000) ? -v : v;
}

static inline uint16_t to_bf16(double v) {
  float f = (float)v;
  uint32_t b;
  memcpy(&b, &f, 4);
  return (uint16_t)(b >> 16);
}

static inline double from_bf16(uint16_t h) {
  uint32_t b = (uint32_t)h << 16;
  float f;
  memcpy(&f, &b, 4);
  return f;
}

static inline void set(void *buf, ncclDataType_t t, size_t i, double v) {
  switch (t) {
    case ncclInt8: ((int8_t *)buf)[i] = (int8_t)v; break;
    case ncclUint8: ((uint8_t *)buf)[i] = (uint8_t)v; break;
    case ncclInt32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case ncclUint32: ((uint32_t *)buf)[i] = (uint32_t)v; break;
    case ncclInt64: ((int64_t *)buf)[i] = (int64_t)v; break;
    case ncclUint64: ((uint64_t *)buf)[i] = (uint64_t)v; break;
    case ncclFloat16: ((uint16_t *)buf)[i] = to_half(v); break;
    case ncclFloat32: ((float *)buf)[i] = (float)v; break;
    case ncclFloat64: ((double *)buf)[i] = v; break;
    case ncclBfloat16: ((uint16_t *)buf)[i] = to_bf16(v); break;
    default: abort();
  }
}

static inline double get(const void *buf, ncclDataType_t t, size_t i) {
  switch (t) {
    case ncclInt8: return ((const int8_t *)buf)[i];
    case ncclUint8: return ((const uint8_t *)buf)[i];
    case ncclInt32: return ((const int32_t *)buf)[i];
    case ncclUint32: return ((const uint32_t *)buf)[i];
    case ncclInt64: return (double)((const int64_t *)buf)[i];
    case ncclUint64: return (double)((const uint64_t *)buf)[i];
    case ncclFloat16: return from_half(((const uint16_t *)buf)[i]);
    case ncclFloat32: return ((const float *)buf)[i];
    case ncclFloat64: return ((const double *)buf)[i];
    case ncclBfloat16: return from_bf16(((const uint16_t *)buf)[i]);
    default: abort();
  }
}

static inline int is_float(ncclDataType_t t) {
  return t == ncclFloat16 || t == ncclFloat32 || t == ncclFloat64 || t == ncclBfloat16;
}

#endif
