/* Wrong arguments get a result code and a one-line reason, never a crash or a hang. */
#include "common.h"

static int failures = 0;

/* Expects `call` to return `want`, with a non-empty last error. */
#define BAD(want, call)                                                                      \
  do {                                                                                       \
    ncclResult_t r_ = (call);                                                                \
    const char *why_ = ncclGetLastError(NULL);                                               \
    if (r_ != (want) || why_ == NULL || why_[0] == '\0' || strchr(why_, '\n')) {             \
      fprintf(stderr, "%s:%d: %s returned %d (expected %d), reason '%s'\n", __FILE__,        \
              __LINE__, #call, (int)r_, (int)(want), why_ ? why_ : "(null)");                \
      failures++;                                                                            \
    } else {                                                                                 \
      printf("ok %-80.80s -> %s\n", #call, why_);                                            \
    }                                                                                        \
  } while (0)

int main(void) {
  ncclComm_t one, two[2], dead, out;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  ncclUniqueId id, zeros;
  ncclRedOp_t op;
  float a[8] = {0}, b[8] = {0}, s = 2;
  void *mem, *h;
  int i, v;
  deadline(60);
  CHECK(ncclCommInitAll(&one, 1, NULL));
  CHECK(ncclCommInitAll(two, 2, NULL));

  /* communicators */
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, 8, ncclFloat, ncclSum, NULL, NULL));
  BAD(ncclInvalidArgument, ncclCommCount(NULL, &v));
  BAD(ncclInvalidArgument, ncclCommCount(one, NULL));
  BAD(ncclInvalidArgument, ncclCommUserRank(one, NULL));
  BAD(ncclInvalidArgument, ncclCommInitAll(NULL, 2, NULL));
  BAD(ncclInvalidArgument, ncclCommInitAll(&out, 0, NULL));
  CHECK(ncclCommInitAll(&dead, 1, NULL));
  CHECK(ncclCommDestroy(dead));
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, 8, ncclFloat, ncclSum, dead, NULL));
  BAD(ncclInvalidArgument, ncclCommDestroy(dead));

  /* buffers, types, ops, counts */
  BAD(ncclInvalidArgument, ncclAllReduce(NULL, b, 8, ncclFloat, ncclSum, one, NULL));
  BAD(ncclInvalidArgument, ncclAllReduce(a, NULL, 8, ncclFloat, ncclSum, one, NULL));
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, 8, (ncclDataType_t)99, ncclSum, one, NULL));
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, 8, (ncclDataType_t)-1, ncclSum, one, NULL));
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, 8, ncclFloat, (ncclRedOp_t)42, one, NULL));
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, 8, ncclFloat, (ncclRedOp_t)-3, one, NULL));
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, SIZE_MAX / 2, ncclFloat, ncclSum, one, NULL));
  BAD(ncclInvalidArgument, ncclAllGather(a, b, SIZE_MAX / 2 + 1, ncclInt8, two[0], NULL));
  BAD(ncclInvalidArgument, ncclAllReduce(a, a + 1, 4, ncclFloat, ncclSum, one, NULL));
  BAD(ncclInvalidArgument, ncclAlltoAll(a, a, 4, ncclFloat, one, NULL));
  BAD(ncclInvalidArgument, ncclBcast(NULL, 8, ncclFloat, 0, one, NULL));

  /* roots and peers */
  BAD(ncclInvalidArgument, ncclBroadcast(a, b, 8, ncclFloat, 2, two[0], NULL));
  BAD(ncclInvalidArgument, ncclReduce(a, b, 8, ncclFloat, ncclSum, -1, two[1], NULL));
  BAD(ncclInvalidArgument, ncclGather(a, b, 4, ncclFloat, 7, two[0], NULL));
  BAD(ncclInvalidArgument, ncclScatter(a, b, 4, ncclFloat, 2, two[1], NULL));
  BAD(ncclInvalidArgument, ncclSend(a, 8, ncclFloat, 2, two[0], NULL));
  BAD(ncclInvalidArgument, ncclRecv(b, 8, ncclFloat, -1, two[0], NULL));

  /* custom ops */
  BAD(ncclInvalidArgument, ncclRedOpCreatePreMulSum(&op, NULL, ncclFloat, ncclScalarHostImmediate, one));
  BAD(ncclInvalidArgument, ncclRedOpCreatePreMulSum(&op, &s, ncclFloat, (ncclScalarResidence_t)5, one));
  CHECK(ncclRedOpCreatePreMulSum(&op, &s, ncclFloat, ncclScalarHostImmediate, one));
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, 8, ncclDouble, op, one, NULL));
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, 8, ncclFloat, op, two[0], NULL));
  CHECK(ncclRedOpDestroy(op, one));
  BAD(ncclInvalidArgument, ncclRedOpDestroy(op, one));
  BAD(ncclInvalidArgument, ncclRedOpDestroy(ncclSum, one));
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, 8, ncclFloat, op, one, NULL));

  /* creation */
  memset(&zeros, 0, sizeof zeros);
  BAD(ncclInvalidArgument, ncclCommInitRank(&out, 2, zeros, 0));
  CHECK(ncclGetUniqueId(&id));
  BAD(ncclInvalidArgument, ncclCommInitRank(&out, 2, id, 2));
  BAD(ncclInvalidArgument, ncclCommInitRank(&out, 0, id, 0));
  BAD(ncclInvalidArgument, ncclCommInitRank(NULL, 1, id, 0));
  config.magic = 0x12345678;
  BAD(ncclInvalidArgument, ncclCommInitRankConfig(&out, 1, id, 0, &config));
  config.magic = NCCL_API_MAGIC;
  config.blocking = 7;
  BAD(ncclInvalidArgument, ncclCommInitRankConfig(&out, 1, id, 0, &config));
  BAD(ncclInvalidArgument, ncclCommSplit(one, -5, 0, &out, NULL));
  BAD(ncclInvalidArgument, ncclCommSplit(one, 0, 0, NULL, NULL));

  /* groups */
  BAD(ncclInvalidUsage, ncclGroupEnd());
  CHECK(ncclGroupStart());
  BAD(ncclInvalidArgument, ncclAllReduce(a, b, 8, (ncclDataType_t)99, ncclSum, one, NULL));
  CHECK(ncclAllReduce(a, b, 8, ncclFloat, ncclSum, one, NULL));
  BAD(ncclInvalidUsage, ncclCommDestroy(one));
  BAD(ncclInvalidArgument, ncclGroupEnd());
  CHECK(ncclGroupStart());
  CHECK(ncclSend(a, 8, ncclFloat, 0, one, NULL));
  BAD(ncclInvalidUsage, ncclGroupEnd());

  /* memory */
  BAD(ncclInvalidArgument, ncclMemAlloc(NULL, 64));
  BAD(ncclInvalidArgument, ncclMemAlloc(&mem, 0));
  CHECK(ncclMemAlloc(&mem, 1000));
  EXPECT(((uintptr_t)mem & 4095) == 0, "ncclMemAlloc is page aligned");
  memset(mem, 1, 1000);
  BAD(ncclInvalidArgument, ncclMemFree(a));
  CHECK(ncclCommRegister(one, mem, 1000, &h));
  BAD(ncclInvalidArgument, ncclCommRegister(one, NULL, 1000, &h));
  CHECK(ncclCommDeregister(one, h));
  BAD(ncclInvalidArgument, ncclCommDeregister(one, h));
  CHECK(ncclMemFree(mem));
  BAD(ncclInvalidArgument, ncclMemFree(mem));
  CHECK(ncclMemFree(NULL));

  /* finalize: later operations are refused */
  CHECK(ncclCommInitAll(&dead, 1, NULL));
  CHECK(ncclCommFinalize(dead));
  BAD(ncclInvalidUsage, ncclAllReduce(a, b, 8, ncclFloat, ncclSum, dead, NULL));
  CHECK(ncclCommDestroy(dead));

  /* error strings */
  for (i = 0; i <= ncclNumResults; i++) EXPECT(strlen(ncclGetErrorString((ncclResult_t)i)) > 0, "string %d", i);
  BAD(ncclInvalidArgument, ncclGetVersion(NULL));

  /* the communicators still work */
  for (i = 0; i < 8; i++) a[i] = (float)i;
  CHECK(ncclAllReduce(a, b, 8, ncclFloat, ncclSum, one, NULL));
  for (i = 0; i < 8; i++) EXPECT(b[i] == (float)i, "b[%d] = %g", i, b[i]);
  CHECK(ncclCommDestroy(one));
  CHECK(ncclCommAbort(two[0]));
  CHECK(ncclCommDestroy(two[1]));
  if (failures) {
    fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  printf("invalid_args OK\n");
  return 0;
}
