"""torch.distributed collectives, oxccl against Gloo, in the same run.

    python python/benchmarks/collectives.py -n 2 [-b 8 -e 64M] [--rounds 5] [--ops all_reduce,...]

Starts N rank processes; each joins one process group on "oxccl" and one on "gloo"
(same ranks), then times every op and size on both, interleaved round by round, and
prints, per size, the median time of each (microseconds per call, float32, sum where it
applies) and the ratio Gloo / oxccl (above 1: oxccl is faster). Also prints
oxccl.Comm's own figure for all_reduce (the Python layer without torch) so the torch
layer's cost can be read against oxccl's all_reduce_perf.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def sizes(b, e):
    s = b
    while s <= e:
        yield s
        s *= 8 if s < 1 << 20 else 64


def parse_size(t):
    m = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(t[:-1]) * m[t[-1].upper()] if t[-1].upper() in m else int(t)


def iters_for(nbytes):
    return 2000 if nbytes <= 4096 else 200 if nbytes <= 1 << 20 else 5


def timed(fn, iters, group):
    dist.barrier(group=group)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters * 1e6


def make(op, nbytes, n, group):
    count = max(1, nbytes // 4)
    x = torch.ones(count)
    if op == "all_reduce":
        return lambda: dist.all_reduce(x, group=group)
    if op == "broadcast":
        return lambda: dist.broadcast(x, src=0, group=group)
    if op == "all_gather":
        c = max(1, count // n)
        i, o = torch.ones(c), torch.empty(c * n)
        return lambda: dist.all_gather_into_tensor(o, i, group=group)
    if op == "reduce_scatter":
        c = max(1, count // n)
        i, o = torch.ones(c * n), torch.empty(c)
        return lambda: dist.reduce_scatter_tensor(o, i, group=group)
    if op == "all_to_all":
        c = max(1, count // n) * n
        i, o = torch.ones(c), torch.empty(c)
        return lambda: dist.all_to_all_single(o, i, group=group)
    raise ValueError(op)


def worker(rank, n, port, args, q):
    import oxccl.torch  # noqa: F401

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("oxccl", rank=rank, world_size=n, timeout=datetime.timedelta(seconds=300))
    gloo = dist.new_group(backend="gloo")
    ox = dist.group.WORLD
    comm = ox._get_backend(torch.device("cpu")).comm
    rows = []
    for op in args.ops.split(","):
        for nbytes in sizes(args.b, args.e):
            if op == "reduce_scatter" and nbytes < 4 * n:
                continue
            it = iters_for(nbytes)
            f_ox, f_gl = make(op, nbytes, n, ox), make(op, nbytes, n, gloo)
            f_ox(), f_gl()  # warm-up
            t_ox, t_gl, t_raw = [], [], []
            raw = torch.ones(max(1, nbytes // 4))
            for _ in range(args.rounds):
                t_ox.append(timed(f_ox, it, gloo))
                t_gl.append(timed(f_gl, max(1, it // 4), gloo))
                if op == "all_reduce":
                    t_raw.append(timed(lambda: comm.all_reduce(raw), it, gloo))
            rows.append((op, nbytes, statistics.median(t_ox), statistics.median(t_gl), statistics.median(t_raw) if t_raw else None))
    if rank == 0:
        q.put(rows)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2)
    p.add_argument("-b", type=parse_size, default=8)
    p.add_argument("-e", type=parse_size, default=64 << 20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ops", default="all_reduce,broadcast,all_gather,reduce_scatter,all_to_all")
    args = p.parse_args()
    port = 29000 + os.getpid() % 1000
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(worker, args=(args.n, port, args, q), nprocs=args.n, start_method="spawn", join=True)
    rows = q.get()
    print(f"# {args.n} processes, float32, medians of {args.rounds} interleaved rounds (us per call)")
    print(f"{'op':<15}{'bytes':>11}{'oxccl':>12}{'gloo':>12}{'gloo/oxccl':>12}{'oxccl.Comm':>12}")
    for op, nb, o, g, r in rows:
        raw = f"{r:12.2f}" if r is not None else " " * 12
        print(f"{op:<15}{nb:>11}{o:12.2f}{g:12.2f}{g / o:11.1f}x{raw}")


if __name__ == "__main__":
    main()
