/* One thread drives every rank, as with GPUs: ncclCommInitAll, then the operations of
 * all communicators in one group. Also: ncclCommInitRank for several ranks from one
 * thread inside a group, nested groups, ncclCommSplit inside a group, and
 * ncclCommAbort unblocking a call that waits for a peer that never comes. */
#define _DEFAULT_SOURCE /* usleep */
#include <pthread.h>

#include "common.h"

struct blocked {
  ncclComm_t comm;
  ncclResult_t result;
};

/* An all-reduce that rank 1 never joins: only an abort ends it. */
static void *lonely_allreduce(void *arg) {
  struct blocked *b = arg;
  float x = 1;
  b->result = ncclAllReduce(&x, &x, 1, ncclFloat, ncclSum, b->comm, NULL);
  return NULL;
}

static void abort_unblocks(void) {
  ncclComm_t pair[2];
  struct blocked b;
  pthread_t t;
  CHECK(ncclCommInitAll(pair, 2, NULL));
  b.comm = pair[0];
  b.result = ncclSuccess;
  EXPECT(pthread_create(&t, NULL, lonely_allreduce, &b) == 0, "pthread_create");
  usleep(200 * 1000);
  {
    /* asked from another thread while the call waits: answers at once */
    ncclResult_t st;
    CHECK(ncclCommGetAsyncError(pair[0], &st));
    EXPECT(st == ncclSuccess, "async error %d while waiting", (int)st);
  }
  CHECK(ncclCommAbort(pair[0]));
  EXPECT(pthread_join(t, NULL) == 0, "pthread_join");
  EXPECT(b.result == ncclRemoteError, "the aborted all-reduce returned %d", (int)b.result);
  CHECK(ncclCommDestroy(pair[1]));
}

#define N 4
#define COUNT 100003

int main(void) {
  ncclComm_t comms[N], ranks[3], subs[N];
  int devs[N] = {3, 2, 1, 0}, i, r, d;
  float *bufs[N];
  ncclUniqueId id;
  deadline(60);
  CHECK(ncclCommInitAll(comms, N, devs));
  for (i = 0; i < N; i++) {
    CHECK(ncclCommUserRank(comms[i], &r));
    CHECK(ncclCommCuDevice(comms[i], &d));
    EXPECT(r == i && d == devs[i], "rank %d device %d", r, d);
    bufs[i] = malloc(COUNT * sizeof(float));
    for (r = 0; r < COUNT; r++) bufs[i][r] = (float)(i + r % 3);
  }
  /* nested groups: the operations run at the outermost end */
  CHECK(ncclGroupStart());
  for (i = 0; i < N; i++) {
    CHECK(ncclGroupStart());
    CHECK(ncclAllReduce(bufs[i], bufs[i], COUNT, ncclFloat, ncclSum, comms[i], NULL));
    CHECK(ncclGroupEnd());
  }
  for (i = 0; i < N; i++) EXPECT(bufs[i][0] == (float)i, "ran before the outermost group end");
  CHECK(ncclGroupEnd());
  for (i = 0; i < N; i++)
    for (r = 0; r < COUNT; r++) EXPECT(bufs[i][r] == (float)(6 + 4 * (r % 3)), "allreduce[%d][%d] = %g", i, r, bufs[i][r]);

  /* split inside a group: colour by parity */
  CHECK(ncclGroupStart());
  for (i = 0; i < N; i++) CHECK(ncclCommSplit(comms[i], i % 2, i, &subs[i], NULL));
  CHECK(ncclGroupEnd());
  CHECK(ncclGroupStart());
  for (i = 0; i < N; i++) CHECK(ncclBroadcast(bufs[i], bufs[i], 1, ncclFloat, 0, subs[i], NULL));
  CHECK(ncclGroupEnd());
  for (i = 0; i < N; i++) {
    int size;
    CHECK(ncclCommCount(subs[i], &size));
    CHECK(ncclCommCuDevice(subs[i], &d));
    EXPECT(size == 2 && d == devs[i], "split size %d device %d", size, d);
    CHECK(ncclCommDestroy(subs[i]));
  }

  /* ncclCommInitRank for three ranks from this one thread, in a group */
  CHECK(ncclGetUniqueId(&id));
  CHECK(ncclGroupStart());
  for (i = 0; i < 3; i++) CHECK(ncclCommInitRank(&ranks[i], 3, id, i));
  {
    ncclResult_t st;
    CHECK(ncclCommGetAsyncError(ranks[0], &st));
    EXPECT(st == ncclInProgress, "a communicator created in a group is in progress until its end, got %d", st);
  }
  CHECK(ncclGroupEnd());
  CHECK(ncclGroupStart());
  for (i = 0; i < 3; i++) {
    bufs[i][0] = (float)(i + 1);
    CHECK(ncclAllReduce(bufs[i], bufs[i], 1, ncclFloat, ncclMax, ranks[i], NULL));
  }
  CHECK(ncclGroupEnd());
  for (i = 0; i < 3; i++) {
    EXPECT(bufs[i][0] == 3.0f, "max over InitRank comms %g", bufs[i][0]);
    CHECK(ncclCommDestroy(ranks[i]));
  }
  for (i = 0; i < N; i++) {
    CHECK(ncclCommDestroy(comms[i]));
    free(bufs[i]);
  }
  abort_unblocks();
  printf("initall_group OK\n");
  return 0;
}
