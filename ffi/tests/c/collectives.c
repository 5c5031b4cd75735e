/* Every collective through the C API, with ranks as processes (fork), checked exactly.
 *
 *   collectives NRANKS
 *
 * The parent forks the other ranks first (before any library thread exists), then makes
 * the unique id and hands it to them through pipes; it is rank 0. Inputs are small
 * integers, so sums, products, averages and pre-multiplied sums are exact in every type. */
#define _GNU_SOURCE
#include <sys/prctl.h>
#include <sys/wait.h>

#include "common.h"

static const ncclDataType_t TYPES[] = {ncclInt8,   ncclUint8,   ncclInt32,   ncclUint32, ncclInt64,
                                       ncclUint64, ncclFloat16, ncclFloat32, ncclFloat64, ncclBfloat16};
#define NTYPES (sizeof TYPES / sizeof TYPES[0])
static const char *OPS[] = {"sum", "prod", "max", "min", "avg", "premulsum"};

/* Rank r's input element i for op. */
static double input(int op, int r, size_t i) {
  if (op == ncclProd) return 1 + (double)((r + i) % 2);
  return (r + 1) + (double)(i % 5);
}

/* The reduction of element i over n ranks. */
static double reduced(int op, int n, size_t i, double scalar) {
  double acc = input(op, 0, i);
  int r;
  if (op == ncclNumOps) acc *= scalar;
  for (r = 1; r < n; r++) {
    double x = input(op, r, i);
    switch (op) {
      case ncclSum: case ncclAvg: acc += x; break;
      case ncclProd: acc *= x; break;
      case ncclMax: acc = x > acc ? x : acc; break;
      case ncclMin: acc = x < acc ? x : acc; break;
      default: acc += scalar * x; break;
    }
  }
  return acc;
}

static double expect_avg(ncclDataType_t t, double sum, int n) {
  return is_float(t) ? sum / n : trunc(sum / n);
}

static void check(const char *what, ncclDataType_t t, const char *opname, size_t count, const void *buf,
                  size_t i, double want) {
  double got = get(buf, t, i);
  EXPECT(got == want, "%s %s %s count %zu: element %zu is %g, expected %g", what, type_name(t), opname, count, i,
         got, want);
}

static void *alloc(ncclDataType_t t, size_t count) {
  void *p = malloc(type_size(t) * (count ? count : 1));
  EXPECT(p != NULL, "malloc");
  return p;
}

/* All-reduce, reduce and reduce-scatter, out of place and in place, for one op. */
static void reducing(ncclComm_t comm, int me, int n, ncclDataType_t t, size_t count, int op) {
  ncclRedOp_t rop = (ncclRedOp_t)op;
  double scalar = 0;
  size_t i;
  int root = n - 1;
  void *send = alloc(t, count * n), *recv = alloc(t, count * n);
  if (op == ncclNumOps) { /* PreMulSum by 3 (int) or 0.5 (float), scalar read now */
    void *s = alloc(t, 1);
    scalar = is_float(t) ? 0.5 : 3;
    set(s, t, 0, scalar);
    CHECK(ncclRedOpCreatePreMulSum(&rop, s, t, ncclScalarHostImmediate, comm));
    EXPECT((int)rop >= ncclNumOps, "custom op value %d", (int)rop);
    free(s);
  }
#define WANT(i) (op == ncclAvg ? expect_avg(t, reduced(op, n, i, scalar), n) : reduced(op, n, i, scalar))
  /* all-reduce */
  for (i = 0; i < count; i++) set(send, t, i, input(op, me, i));
  CHECK(ncclAllReduce(send, recv, count, t, rop, comm, NULL));
  for (i = 0; i < count; i++) check("allreduce", t, OPS[op], count, recv, i, WANT(i));
  CHECK(ncclAllReduce(send, send, count, t, rop, comm, NULL));
  for (i = 0; i < count; i++) check("allreduce in place", t, OPS[op], count, send, i, WANT(i));
  /* reduce */
  for (i = 0; i < count; i++) set(send, t, i, input(op, me, i));
  CHECK(ncclReduce(send, me == root ? recv : NULL, count, t, rop, root, comm, NULL));
  if (me == root)
    for (i = 0; i < count; i++) check("reduce", t, OPS[op], count, recv, i, WANT(i));
  CHECK(ncclReduce(send, send, count, t, rop, root, comm, NULL));
  if (me == root)
    for (i = 0; i < count; i++) check("reduce in place", t, OPS[op], count, send, i, WANT(i));
  /* reduce-scatter: block b of rank r's input is input(op, r, b * count + i) */
  for (i = 0; i < count * n; i++) set(send, t, i, input(op, me, i));
  CHECK(ncclReduceScatter(send, recv, count, t, rop, comm, NULL));
  for (i = 0; i < count; i++) check("reducescatter", t, OPS[op], count, recv, i, WANT(me * count + i));
  CHECK(ncclReduceScatter(send, (char *)send + me * count * type_size(t), count, t, rop, comm, NULL));
  for (i = 0; i < count; i++)
    check("reducescatter in place", t, OPS[op], count, send, me * count + i, WANT(me * count + i));
#undef WANT
  if (op == ncclNumOps) CHECK(ncclRedOpDestroy(rop, comm));
  free(send);
  free(recv);
}

/* Data movement: broadcast, all-gather, all-to-all, gather, scatter, send/recv. */
static void moving(ncclComm_t comm, int me, int n, ncclDataType_t t, size_t count) {
  size_t i, es = type_size(t);
  int r, root = 1 % n;
  void *send = alloc(t, count * n), *recv = alloc(t, count * n);
  char *sendc = send, *recvc = recv;
  /* value of element i of rank r's data */
#define V(r, i) ((double)(((r) * 7 + (i)) % 100))
  /* broadcast, and ncclBcast in place */
  for (i = 0; i < count; i++) set(send, t, i, me == root ? V(root, i) : 111);
  CHECK(ncclBroadcast(me == root ? send : NULL, recv, count, t, root, comm, NULL));
  for (i = 0; i < count; i++) check("broadcast", t, "-", count, recv, i, V(root, i));
  CHECK(ncclBcast(send, count, t, root, comm, NULL));
  for (i = 0; i < count; i++) check("bcast", t, "-", count, send, i, V(root, i));
  /* all-gather */
  for (i = 0; i < count; i++) set(send, t, i, V(me, i));
  CHECK(ncclAllGather(send, recv, count, t, comm, NULL));
  for (r = 0; r < n; r++)
    for (i = 0; i < count; i++) check("allgather", t, "-", count, recv, r * count + i, V(r, i));
  for (i = 0; i < count * n; i++) set(recv, t, i, 0);
  for (i = 0; i < count; i++) set(recv, t, me * count + i, V(me, i));
  CHECK(ncclAllGather(recvc + me * count * es, recv, count, t, comm, NULL));
  for (r = 0; r < n; r++)
    for (i = 0; i < count; i++) check("allgather in place", t, "-", count, recv, r * count + i, V(r, i));
  /* all-to-all: block j of rank r's send holds V(r * n + j, i) */
  for (r = 0; r < n; r++)
    for (i = 0; i < count; i++) set(send, t, r * count + i, V(me * n + r, i));
  CHECK(ncclAlltoAll(send, recv, count, t, comm, NULL));
  for (r = 0; r < n; r++)
    for (i = 0; i < count; i++) check("alltoall", t, "-", count, recv, r * count + i, V(r * n + me, i));
  /* gather onto root, and in place on the root */
  for (i = 0; i < count; i++) set(send, t, i, V(me, i));
  CHECK(ncclGather(send, me == root ? recv : NULL, count, t, root, comm, NULL));
  if (me == root)
    for (r = 0; r < n; r++)
      for (i = 0; i < count; i++) check("gather", t, "-", count, recv, r * count + i, V(r, i));
  if (me == root) {
    for (i = 0; i < count; i++) set(recv, t, root * count + i, V(me, i));
    CHECK(ncclGather(recvc + root * count * es, recv, count, t, root, comm, NULL));
    for (r = 0; r < n; r++)
      for (i = 0; i < count; i++) check("gather in place", t, "-", count, recv, r * count + i, V(r, i));
  } else {
    CHECK(ncclGather(send, NULL, count, t, root, comm, NULL));
  }
  /* scatter from root, and in place on the root */
  for (r = 0; r < n; r++)
    for (i = 0; i < count; i++) set(send, t, r * count + i, me == root ? V(r + 50, i) : 111);
  CHECK(ncclScatter(me == root ? send : NULL, recv, count, t, root, comm, NULL));
  for (i = 0; i < count; i++) check("scatter", t, "-", count, recv, i, V(me + 50, i));
  if (me == root) {
    CHECK(ncclScatter(send, sendc + root * count * es, count, t, root, comm, NULL));
    for (i = 0; i < count; i++) check("scatter in place", t, "-", count, send, root * count + i, V(root + 50, i));
  } else {
    CHECK(ncclScatter(NULL, recv, count, t, root, comm, NULL));
    for (i = 0; i < count; i++) check("scatter (in place elsewhere)", t, "-", count, recv, i, V(me + 50, i));
  }
  /* a ring of sends and receives, plus a send to self, in one group */
  for (i = 0; i < count; i++) set(send, t, i, V(me, i));
  CHECK(ncclGroupStart());
  CHECK(ncclSend(send, count, t, (me + 1) % n, comm, NULL));
  CHECK(ncclRecv(recv, count, t, (me + n - 1) % n, comm, NULL));
  CHECK(ncclSend(send, count, t, me, comm, NULL));
  CHECK(ncclRecv(recvc + count * es, count, t, me, comm, NULL));
  CHECK(ncclGroupEnd());
  for (i = 0; i < count; i++) check("sendrecv ring", t, "-", count, recv, i, V((me + n - 1) % n, i));
  for (i = 0; i < count; i++) check("sendrecv self", t, "-", count, recv, count + i, V(me, i));
#undef V
  free(send);
  free(recv);
}

/* PreMulSum with the scalar read when the collective runs (ncclScalarDevice). */
static void premulsum_deferred(ncclComm_t comm, int me, int n) {
  float scalar = 2, x[3] = {1, 2, 3}, y[3];
  ncclRedOp_t op;
  int i;
  CHECK(ncclRedOpCreatePreMulSum(&op, &scalar, ncclFloat32, ncclScalarDevice, comm));
  scalar = 4; /* read at the collective, not at creation */
  CHECK(ncclAllReduce(x, y, 3, ncclFloat32, op, comm, NULL));
  for (i = 0; i < 3; i++) EXPECT(y[i] == 4 * x[i] * n, "premulsum deferred: %g", y[i]);
  CHECK(ncclRedOpDestroy(op, comm));
  (void)me;
}

/* ncclCommSplit: colour by parity, key reversing the order; NOCOLOR gives NULL. */
static void split(ncclComm_t comm, int me, int n) {
  ncclComm_t sub, none;
  int size, rank, want_size = (n - me % 2 + 1) / 2, i;
  int64_t x, sum = 0;
  CHECK(ncclCommSplit(comm, me % 2, -me, &sub, NULL));
  CHECK(ncclCommCount(sub, &size));
  CHECK(ncclCommUserRank(sub, &rank));
  EXPECT(size == want_size, "split size %d, expected %d", size, want_size);
  EXPECT(rank == want_size - 1 - me / 2, "split rank %d", rank);
  x = me;
  CHECK(ncclAllReduce(&x, &x, 1, ncclInt64, ncclSum, sub, NULL));
  for (i = me % 2; i < n; i += 2) sum += i;
  EXPECT(x == sum, "split all-reduce %lld, expected %lld", (long long)x, (long long)sum);
  CHECK(ncclCommDestroy(sub));
  CHECK(ncclCommSplit(comm, me == 0 ? 0 : NCCL_SPLIT_NOCOLOR, 0, &none, NULL));
  EXPECT((me == 0) == (none != NULL), "NOCOLOR gives NULL");
  if (none) CHECK(ncclCommDestroy(none));
}

static int run_rank(int me, int n, ncclUniqueId id) {
  ncclComm_t comm;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  int v, count, rank, dev;
  ncclResult_t async;
  size_t k, t, counts[] = {0, 1, 4099};
  int op;
  config.blocking = 1;
  CHECK(ncclCommInitRankConfig(&comm, n, id, me, &config));
  CHECK(ncclGetVersion(&v));
  EXPECT(v == NCCL_VERSION_CODE, "version %d", v);
  CHECK(ncclCommCount(comm, &count));
  CHECK(ncclCommUserRank(comm, &rank));
  CHECK(ncclCommCuDevice(comm, &dev));
  EXPECT(count == n && rank == me && dev == -1, "count %d rank %d device %d", count, rank, dev);
  for (t = 0; t < NTYPES; t++)
    for (k = 0; k < sizeof counts / sizeof counts[0]; k++) {
      for (op = 0; op <= ncclNumOps; op++) reducing(comm, me, n, TYPES[t], counts[k], op);
      moving(comm, me, n, TYPES[t], counts[k]);
    }
  /* larger messages: several pipeline chunks */
  reducing(comm, me, n, ncclFloat32, 300007, ncclSum);
  reducing(comm, me, n, ncclInt64, 100003, ncclMax);
  moving(comm, me, n, ncclFloat64, 70001);
  premulsum_deferred(comm, me, n);
  split(comm, me, n);
  CHECK(ncclCommGetAsyncError(comm, &async));
  EXPECT(async == ncclSuccess, "async error %d", (int)async);
  CHECK(ncclCommFinalize(comm));
  CHECK(ncclCommDestroy(comm));
  return 0;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 2, r, status = 0;
  int fds[64][2];
  pid_t pids[64];
  ncclUniqueId id;
  deadline(120);
  EXPECT(n >= 1 && n <= 64, "nranks %d", n);
  for (r = 1; r < n; r++) {
    EXPECT(pipe(fds[r]) == 0, "pipe");
    pids[r] = fork();
    EXPECT(pids[r] >= 0, "fork");
    if (pids[r] == 0) {
      ssize_t got = 0;
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      close(fds[r][1]);
      while (got < (ssize_t)sizeof id) {
        ssize_t k = read(fds[r][0], (char *)&id + got, sizeof id - got);
        EXPECT(k > 0, "rank %d: reading the unique id", r);
        got += k;
      }
      exit(run_rank(r, n, id));
    }
    close(fds[r][0]);
  }
  CHECK(ncclGetUniqueId(&id));
  for (r = 1; r < n; r++) {
    EXPECT(write(fds[r][1], &id, sizeof id) == (ssize_t)sizeof id, "writing the unique id");
    close(fds[r][1]);
  }
  run_rank(0, n, id);
  for (r = 1; r < n; r++) {
    int st;
    EXPECT(waitpid(pids[r], &st, 0) == pids[r], "waitpid");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "rank %d failed (status %d)\n", r, st);
      status = 1;
    }
  }
  if (status == 0) printf("collectives: %d ranks OK\n", n);
  return status;
}
