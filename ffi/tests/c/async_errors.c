/* Faults reach every rank through the C ABI: ncclCommGetAsyncError reports the
 * error that broke a communicator (ncclRemoteError for a peer's abort or failure,
 * ncclTimeout, ncclInvalidUsage for mismatched calls), ncclGetLastError then gives the
 * reason, an abort unblocks a waiting call, and later calls fail at once.
 *
 * Every check runs on pairs of communicators of both kinds: thread ranks
 * (ncclCommInitAll, which share a board) and ranks joined through a unique id
 * (ncclCommInitRank in a group, which carry faults on the bootstrap ring), here both in
 * one process. The timeout checks run in a child forked before any library thread exists:
 * it alone sets OXCCL_TIMEOUT=1 (ncclConfig_t has no timeout field). Then ranks as
 * processes: one is killed, and the other learns of it.
 *
 * One line per check, with what it measured; exit status 1 and a message on failure. */
#define _GNU_SOURCE /* setenv, usleep, clock_gettime */
#include <pthread.h>
#include <sys/wait.h>
#include <time.h>

#include "common.h"

enum kind { THREADS, RING };
static const char *KIND[] = {"initall", "initrank"};

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int has(const char *s, const char *word) { return strstr(s, word) != NULL; }

static void make_pair(ncclComm_t pair[2], enum kind k) {
  ncclUniqueId id;
  int i;
  if (k == THREADS) {
    CHECK(ncclCommInitAll(pair, 2, NULL));
    return;
  }
  CHECK(ncclGetUniqueId(&id));
  CHECK(ncclGroupStart());
  for (i = 0; i < 2; i++) CHECK(ncclCommInitRank(&pair[i], 2, id, i));
  CHECK(ncclGroupEnd());
}

/* comm's async error; where it is not success, the reason ncclGetLastError gives for it
 * is copied to `why` ("" otherwise). */
static ncclResult_t async_error(ncclComm_t comm, char *why, size_t n) {
  ncclResult_t st = ncclInternalError;
  CHECK(ncclCommGetAsyncError(comm, &st));
  snprintf(why, n, "%s", st == ncclSuccess ? "" : ncclGetLastError(comm));
  return st;
}

/* Polls comm's async error until it is not success or `limit` seconds have passed;
 * `took` is how long that was. */
static ncclResult_t poll_async(ncclComm_t comm, double limit, double *took, char *why, size_t n) {
  double t0 = now();
  for (;;) {
    ncclResult_t st = async_error(comm, why, n);
    *took = now() - t0;
    if (st != ncclSuccess || *took > limit) return st;
    usleep(500);
  }
}

/* An all-reduce on its own thread; what it returned, when, and why. */
struct call {
  ncclComm_t comm;
  size_t count;
  ncclResult_t result;
  double start, end;
  char why[1024];
  float buf[2048];
};

static void *allreduce(void *arg) {
  struct call *c = arg;
  size_t i;
  for (i = 0; i < c->count; i++) c->buf[i] = 1;
  c->start = now();
  c->result = ncclAllReduce(c->buf, c->buf, c->count, ncclFloat, ncclSum, c->comm, NULL);
  c->end = now();
  snprintf(c->why, sizeof c->why, "%s", c->result == ncclSuccess ? "" : ncclGetLastError(c->comm));
  return NULL;
}

static void start(pthread_t *t, struct call *c, ncclComm_t comm, size_t count) {
  memset(c, 0, sizeof *c);
  c->comm = comm;
  c->count = count;
  c->result = ncclInternalError;
  EXPECT(pthread_create(t, NULL, allreduce, c) == 0, "pthread_create");
}

static void join(pthread_t t) { EXPECT(pthread_join(t, NULL) == 0, "pthread_join"); }

#define MS(s) ((s) * 1e3)

/* a. Healthy communicators report success, before and after an all-reduce. */
static void healthy(enum kind k) {
  ncclComm_t pair[2];
  struct call c[2];
  pthread_t t[2];
  char why[1024];
  int r;
  make_pair(pair, k);
  for (r = 0; r < 2; r++) EXPECT(async_error(pair[r], why, sizeof why) == ncclSuccess, "rank %d: %s", r, why);
  for (r = 0; r < 2; r++) start(&t[r], &c[r], pair[r], 1000);
  for (r = 0; r < 2; r++) join(t[r]);
  for (r = 0; r < 2; r++) {
    EXPECT(c[r].result == ncclSuccess && c[r].buf[999] == 2.0f, "rank %d: all-reduce %d, %g: %s", r,
           (int)c[r].result, c[r].buf[999], c[r].why);
    EXPECT(async_error(pair[r], why, sizeof why) == ncclSuccess, "rank %d after an all-reduce: %s", r, why);
  }
  for (r = 0; r < 2; r++) CHECK(ncclCommDestroy(pair[r]));
  printf("ok %s a: healthy communicators: ncclCommGetAsyncError gives ncclSuccess, before and after an all-reduce\n",
         KIND[k]);
}

/* b. Rank 0 aborts while rank 1 is idle: rank 1 learns of it, its next call fails at
 * once, and it is destroyed without hanging. */
static void idle_peer_learns_of_an_abort(enum kind k) {
  ncclComm_t pair[2];
  ncclResult_t st;
  char why[1024];
  double t0, took, call_took, destroy_took;
  float x = 1;
  make_pair(pair, k);
  CHECK(ncclCommAbort(pair[0]));
  st = poll_async(pair[1], 2.0, &took, why, sizeof why);
  EXPECT(st == ncclRemoteError, "rank 1's async error %d (%s) %.1f ms after rank 0's abort, expected ncclRemoteError",
         (int)st, why, MS(took));
  EXPECT(has(why, "rank 0") && has(why, "aborted"), "rank 1's reason names neither rank 0 nor the abort: '%s'", why);
  printf("ok %s b: rank 1 (idle) reports ncclRemoteError %.2f ms after ncclCommAbort(rank 0) returned: %s\n", KIND[k],
         MS(took), why);
  t0 = now();
  st = ncclAllReduce(&x, &x, 1, ncclFloat, ncclSum, pair[1], NULL);
  call_took = now() - t0;
  snprintf(why, sizeof why, "%s", ncclGetLastError(pair[1]));
  EXPECT(st == ncclRemoteError && call_took < 0.1, "rank 1's next all-reduce returned %d after %.1f ms: %s", (int)st,
         MS(call_took), why);
  EXPECT(has(why, "rank 0") && has(why, "aborted"), "the all-reduce's reason: '%s'", why);
  st = ncclCommFinalize(pair[1]);
  EXPECT(st == ncclRemoteError, "ncclCommFinalize on a broken communicator returned %d, not ncclRemoteError", (int)st);
  t0 = now();
  CHECK(ncclCommDestroy(pair[1]));
  destroy_took = now() - t0;
  EXPECT(destroy_took < 2.0, "ncclCommDestroy(rank 1) took %.1f ms", MS(destroy_took));
  printf("ok %s b: rank 1's next ncclAllReduce returns ncclRemoteError in %.3f ms (%s); ncclCommDestroy takes %.2f ms\n",
         KIND[k], MS(call_took), why, MS(destroy_took));
}

/* c1. Rank 1 waits in an all-reduce rank 0 never joins; another thread aborts rank 1's
 * communicator: the call returns at once, and rank 0 (idle) learns of the abort. */
static void own_abort_unblocks(enum kind k) {
  ncclComm_t pair[2];
  struct call c;
  pthread_t t;
  ncclResult_t st;
  char why[1024];
  double t_abort, abort_took, took;
  make_pair(pair, k);
  start(&t, &c, pair[1], 1);
  usleep(200 * 1000);
  EXPECT(async_error(pair[1], why, sizeof why) == ncclSuccess, "rank 1 while waiting: %s", why);
  t_abort = now();
  CHECK(ncclCommAbort(pair[1]));
  abort_took = now() - t_abort;
  join(t);
  EXPECT(c.end > t_abort, "the all-reduce returned %.1f ms before the abort (%d: %s)", MS(t_abort - c.end),
         (int)c.result, c.why);
  EXPECT(c.result == ncclRemoteError, "the aborted all-reduce returned %d: %s", (int)c.result, c.why);
  EXPECT(has(c.why, "aborted"), "the aborted all-reduce's reason: '%s'", c.why);
  EXPECT(c.end - t_abort < 0.1, "the aborted all-reduce returned %.1f ms after the abort", MS(c.end - t_abort));
  printf("ok %s c: rank 1's blocked ncclAllReduce returns ncclRemoteError %.3f ms after ncclCommAbort(rank 1) began "
         "(which took %.2f ms, blocked %.0f ms before): %s\n",
         KIND[k], MS(c.end - t_abort), MS(abort_took), MS(t_abort - c.start), c.why);
  st = poll_async(pair[0], 2.0, &took, why, sizeof why);
  EXPECT(st == ncclRemoteError, "rank 0's async error %d (%s) %.1f ms after rank 1's abort", (int)st, why, MS(took));
  EXPECT(has(why, "rank 1") && has(why, "aborted"), "rank 0's reason names neither rank 1 nor the abort: '%s'", why);
  CHECK(ncclCommDestroy(pair[0]));
  printf("ok %s c: rank 0 (idle) reports ncclRemoteError %.2f ms after ncclCommAbort(rank 1) returned: %s\n", KIND[k],
         MS(took), why);
}

/* c2. Rank 1 waits in an all-reduce; rank 0, idle, is aborted: rank 1's call returns at
 * once with a remote error naming rank 0. */
static void peer_abort_unblocks(enum kind k) {
  ncclComm_t pair[2];
  struct call c;
  pthread_t t;
  char why[1024];
  double t_abort;
  make_pair(pair, k);
  start(&t, &c, pair[1], 1);
  usleep(200 * 1000);
  t_abort = now();
  CHECK(ncclCommAbort(pair[0]));
  join(t);
  EXPECT(c.end > t_abort, "the all-reduce returned before the abort (%d: %s)", (int)c.result, c.why);
  EXPECT(c.result == ncclRemoteError, "rank 1's all-reduce returned %d: %s", (int)c.result, c.why);
  EXPECT(has(c.why, "rank 0") && has(c.why, "aborted"), "rank 1's reason: '%s'", c.why);
  EXPECT(c.end - t_abort < 0.1, "rank 1's all-reduce returned %.1f ms after rank 0's abort", MS(c.end - t_abort));
  EXPECT(async_error(pair[1], why, sizeof why) == ncclRemoteError, "rank 1's async error after the call: %s", why);
  CHECK(ncclCommDestroy(pair[1]));
  printf("ok %s c: rank 1's blocked ncclAllReduce returns ncclRemoteError %.3f ms after ncclCommAbort(rank 0) began: "
         "%s\n",
         KIND[k], MS(c.end - t_abort), c.why);
}

/* d. With OXCCL_TIMEOUT=1, rank 1 all-reduces alone: ncclTimeout after about a second,
 * naming rank 0; rank 0 (idle) learns of it. */
static void timeout(enum kind k) {
  ncclComm_t pair[2];
  ncclResult_t st;
  char why[1024], why0[1024];
  double t0, took, took0;
  float x = 1;
  make_pair(pair, k);
  t0 = now();
  st = ncclAllReduce(&x, &x, 1, ncclFloat, ncclSum, pair[1], NULL);
  took = now() - t0;
  snprintf(why, sizeof why, "%s", ncclGetLastError(pair[1]));
  EXPECT(st == ncclTimeout, "rank 1's lonely all-reduce returned %d after %.1f ms: %s", (int)st, MS(took), why);
  EXPECT(took > 0.9 && took < 3.0, "the timeout came after %.1f ms, expected about 1 s", MS(took));
  EXPECT(has(why, "rank 0") && has(why, "timeout"), "the timeout's reason does not name rank 0: '%s'", why);
  printf("ok %s d: rank 1's lonely ncclAllReduce returns ncclTimeout after %.0f ms: %s\n", KIND[k], MS(took), why);
  EXPECT(async_error(pair[1], why, sizeof why) == ncclTimeout, "rank 1's async error after its timeout: %s", why);
  st = poll_async(pair[0], 2.0, &took0, why0, sizeof why0);
  EXPECT(st == ncclRemoteError, "rank 0's async error %d (%s) after rank 1's timeout", (int)st, why0);
  EXPECT(has(why0, "timeout"), "rank 0's reason does not say it was a timeout: '%s'", why0);
  printf("ok %s d: rank 0 (idle) reports ncclRemoteError (%.2f ms of polling): %s\n", KIND[k], MS(took0), why0);
  CHECK(ncclCommDestroy(pair[0]));
  CHECK(ncclCommDestroy(pair[1]));
}

/* e. The ranks all-reduce different counts: both calls fail with ncclInvalidUsage, and
 * each rank's reason names both counts. */
static void mismatch(enum kind k) {
  ncclComm_t pair[2];
  struct call c[2];
  pthread_t t[2];
  char why[1024];
  int r;
  make_pair(pair, k);
  for (r = 0; r < 2; r++) start(&t[r], &c[r], pair[r], (size_t)(1000 + r));
  for (r = 0; r < 2; r++) join(t[r]);
  for (r = 0; r < 2; r++) {
    ncclResult_t st;
    EXPECT(c[r].result == ncclInvalidUsage, "rank %d's all-reduce of %d returned %d after %.1f ms: %s", r, 1000 + r,
           (int)c[r].result, MS(c[r].end - c[r].start), c[r].why);
    EXPECT(has(c[r].why, "count=1000") && has(c[r].why, "count=1001"), "rank %d's reason lacks a count: '%s'", r,
           c[r].why);
    st = async_error(pair[r], why, sizeof why);
    EXPECT(st == ncclInvalidUsage, "rank %d's async error after the mismatch: %d (%s)", r, (int)st, why);
    printf("ok %s e: rank %d's ncclAllReduce(count=%d) returns ncclInvalidUsage after %.2f ms: %s\n", KIND[k], r,
           1000 + r, MS(c[r].end - c[r].start), c[r].why);
  }
  for (r = 0; r < 2; r++) CHECK(ncclCommDestroy(pair[r]));
}

/* f. Ranks as processes: rank 1's process is killed while rank 0 is idle; rank 0 learns
 * of it from the bootstrap ring, its next call fails at once, and it is destroyed. */
static void dead_peer(void) {
  ncclComm_t comm;
  ncclUniqueId id;
  ncclResult_t st;
  char why[1024];
  double t0, took, call_took, destroy_took;
  float x = 1;
  size_t got = 0;
  int fds[2], status;
  pid_t pid;
  EXPECT(pipe(fds) == 0, "pipe");
  pid = fork(); /* before this process has any library thread */
  EXPECT(pid >= 0, "fork");
  if (pid == 0) { /* rank 1: joins, then waits to be killed */
    deadline(30);
    close(fds[1]);
    while (got < sizeof id) {
      ssize_t n = read(fds[0], (char *)&id + got, sizeof id - got);
      EXPECT(n > 0, "reading the unique id");
      got += (size_t)n;
    }
    CHECK(ncclCommInitRank(&comm, 2, id, 1));
    for (;;) pause();
  }
  close(fds[0]);
  CHECK(ncclGetUniqueId(&id));
  EXPECT(write(fds[1], &id, sizeof id) == (ssize_t)sizeof id, "writing the unique id");
  close(fds[1]);
  CHECK(ncclCommInitRank(&comm, 2, id, 0));
  EXPECT(async_error(comm, why, sizeof why) == ncclSuccess, "rank 0 before the kill: %s", why);
  EXPECT(kill(pid, SIGKILL) == 0, "kill");
  EXPECT(waitpid(pid, &status, 0) == pid, "waitpid");
  t0 = now();
  st = poll_async(comm, 2.0, &took, why, sizeof why);
  EXPECT(st == ncclRemoteError, "rank 0's async error %d (%s) %.1f ms after rank 1 was killed", (int)st, why,
         MS(took));
  EXPECT(has(why, "rank 1") && has(why, "died"), "rank 0's reason does not say rank 1 died: '%s'", why);
  printf("ok process f: rank 0 (idle) reports ncclRemoteError %.2f ms after rank 1's process was killed and reaped: "
         "%s\n",
         MS(now() - t0), why);
  t0 = now();
  st = ncclAllReduce(&x, &x, 1, ncclFloat, ncclSum, comm, NULL);
  call_took = now() - t0;
  snprintf(why, sizeof why, "%s", ncclGetLastError(comm));
  EXPECT(st == ncclRemoteError && call_took < 0.1, "rank 0's next all-reduce returned %d after %.1f ms: %s", (int)st,
         MS(call_took), why);
  EXPECT(has(why, "rank 1"), "the all-reduce's reason does not name rank 1: '%s'", why);
  t0 = now();
  CHECK(ncclCommDestroy(comm));
  destroy_took = now() - t0;
  EXPECT(destroy_took < 2.0, "ncclCommDestroy(rank 0) took %.1f ms", MS(destroy_took));
  printf("ok process f: rank 0's next ncclAllReduce returns ncclRemoteError in %.3f ms (%s); ncclCommDestroy takes "
         "%.2f ms\n",
         MS(call_took), why, MS(destroy_took));
}

static void timeouts(void) {
  EXPECT(setenv("OXCCL_TIMEOUT", "1", 1) == 0, "setenv");
  timeout(THREADS);
  timeout(RING);
}

/* Runs `f` in a child, forked while this process has no library thread yet. */
static void in_a_child(const char *what, void (*f)(void)) {
  pid_t pid;
  int status;
  fflush(stdout);
  fflush(stderr);
  pid = fork();
  EXPECT(pid >= 0, "fork");
  if (pid == 0) {
    deadline(30);
    f();
    fflush(stdout);
    exit(0);
  }
  EXPECT(waitpid(pid, &status, 0) == pid, "waitpid");
  EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the %s checks failed (status %#x)", what, status);
}

int main(void) {
  int k;
  setvbuf(stdout, NULL, _IOLBF, 0);
  deadline(90);
  /* First, while this process has no library thread: children may fork. */
  in_a_child("timeout", timeouts);
  in_a_child("dead peer", dead_peer);
  for (k = THREADS; k <= RING; k++) {
    healthy((enum kind)k);
    idle_peer_learns_of_an_abort((enum kind)k);
    own_abort_unblocks((enum kind)k);
    peer_abort_unblocks((enum kind)k);
    mismatch((enum kind)k);
  }
  printf("async_errors OK\n");
  return 0;
}
