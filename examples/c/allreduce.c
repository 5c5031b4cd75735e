/* The smallest complete oxccl program in C: two ranks, driven by one thread as NCCL
 * drives GPUs, sum their buffers.
 *
 *   cc allreduce.c $(pkg-config --cflags --libs oxccl) -o allreduce && ./allreduce
 */
#include <stdio.h>

#include <nccl.h>

#define N 2
#define COUNT 4

int main(void) {
  ncclComm_t comms[N];
  float bufs[N][COUNT];
  int i, j;
  ncclResult_t r = ncclCommInitAll(comms, N, NULL);
  if (r != ncclSuccess) {
    fprintf(stderr, "ncclCommInitAll: %s: %s\n", ncclGetErrorString(r), ncclGetLastError(NULL));
    return 1;
  }
  for (i = 0; i < N; i++)
    for (j = 0; j < COUNT; j++) bufs[i][j] = (float)(i + j);

  /* One call per rank; the group runs them together. */
  ncclGroupStart();
  for (i = 0; i < N; i++) ncclAllReduce(bufs[i], bufs[i], COUNT, ncclFloat, ncclSum, comms[i], NULL);
  r = ncclGroupEnd();
  if (r != ncclSuccess) {
    fprintf(stderr, "ncclGroupEnd: %s: %s\n", ncclGetErrorString(r), ncclGetLastError(NULL));
    return 1;
  }

  for (j = 0; j < COUNT; j++) printf("%g ", bufs[0][j]); /* 1 3 5 7 */
  printf("\n");
  for (i = 0; i < N; i++) ncclCommDestroy(comms[i]);
  return 0;
}
