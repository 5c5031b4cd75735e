"""Where the time of one small torch.distributed all_reduce goes, layer by layer.

    python python/benchmarks/layers.py -n 2 [--bytes 8] [--iters 20000] [--rounds 5]

Starts N rank processes on one process group over "oxccl", one over "gloo" and one over
"noop": a Python subclass of torch's C++ Backend, registered the same way as oxccl's,
whose all_reduce does nothing and returns a completed Work. The noop group's figure is
the floor that torch's own dispatch into any Python backend costs. Then, in interleaved
rounds, it times (float32, sum, in place; median microseconds per call):

    dist.all_reduce  noop        torch's dispatch into a Python Backend, nothing else
                                 (the completed work it returns is torch's C++ Work)
    dist.all_reduce  noop-py     the same, returning a Python subclass of Work
    dist.all_reduce  oxccl       what a torch user gets
    backend.allreduce            oxccl's Backend called directly (no torch dispatch)
    Comm.all_reduce  numpy       oxccl.Comm on a numpy array (buffer protocol)
    Comm.all_reduce  torch       oxccl.Comm on a torch tensor (DLPack)
    dist.all_reduce  gloo        the peer

Compare with `oxccl-run -n N -- all_reduce_perf -b 8 -e 8` (oxccl without Python).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._C._distributed_c10d import Backend as _CBackend


class PyDoneWork(dist._Work):
    """A completed work defined in Python (torch's wait on it calls back into Python)."""

    def wait(self, timeout=None):
        return True


class NoopBackend(_CBackend):
    """A backend whose all_reduce returns at once: the cost of torch's dispatch alone.
    Its completed work is torch's own C++ work on a completed future (``cxx=True``) or a
    Python subclass of Work."""

    def __init__(self, rank, size, cxx):
        super().__init__(rank, size)
        fut = torch.futures.Future()
        fut.set_result(None)
        self._done = torch._C._distributed_c10d._create_work_from_future(fut) if cxx else PyDoneWork()

    supports_coalescing = property(lambda self: False)
    supports_splitting = property(lambda self: False)
    supports_time_estimate = property(lambda self: False)
    supports_shrinking = property(lambda self: False)
    supports_reconfigure = property(lambda self: False)
    supports_window = property(lambda self: False)
    supports_tensor_alloc = property(lambda self: False)

    def getBackendName(self):
        return "noop"

    def allreduce(self, tensors, opts=None):
        return self._done

    def barrier(self, opts=None):
        return self._done


def timed(fn, iters, sync):
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters * 1e6


def worker(rank, n, port, args, q):
    import oxccl
    import oxccl.torch  # noqa: F401

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    for name, cxx in (("noop", True), ("noopy", False)):
        dist.Backend.register_backend(
            name, lambda o, _b=None, c=cxx: NoopBackend(o.group_rank, o.group_size, c), extended_api=True, devices=["cpu"]
        )
    dist.init_process_group("oxccl", rank=rank, world_size=n, timeout=datetime.timedelta(seconds=300))
    ox = dist.group.WORLD
    gloo = dist.new_group(backend="gloo")
    noop = dist.new_group(backend="noop")
    noopy = dist.new_group(backend="noopy")
    be = ox._get_backend(torch.device("cpu"))
    comm = be.comm
    count = max(1, args.bytes // 4)
    t = torch.ones(count)
    a = np.ones(count, np.float32)
    opts = dist.AllreduceOptions()
    opts.asyncOp = False

    def sync():
        dist.barrier(group=gloo)

    cases = {
        "dist.all_reduce noop": (lambda: dist.all_reduce(t, group=noop), args.iters),
        "dist.all_reduce noop-py": (lambda: dist.all_reduce(t, group=noopy), args.iters),
        "dist.all_reduce oxccl": (lambda: dist.all_reduce(t, group=ox), args.iters),
        "backend.allreduce": (lambda: be.allreduce([t], opts), args.iters),
        "Comm.all_reduce numpy": (lambda: comm.all_reduce(a), args.iters),
        "Comm.all_reduce torch": (lambda: comm.all_reduce(t), args.iters),
        "dist.all_reduce gloo": (lambda: dist.all_reduce(t, group=gloo), max(1, args.iters // 40)),
    }
    for fn, _ in cases.values():
        for _ in range(100):
            fn()
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, (fn, it) in cases.items():
            times[k].append(timed(fn, it, sync))
    if rank == 0:
        q.put({k: statistics.median(v) for k, v in times.items()})
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2)
    p.add_argument("--bytes", type=int, default=8)
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    port = 29000 + os.getpid() % 1000
    q = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(worker, args=(args.n, port, args, q), nprocs=args.n, start_method="spawn", join=True)
    t = q.get()
    print(f"# {args.n} processes, {args.bytes} B float32 sum, medians of {args.rounds} interleaved rounds")
    for k, v in t.items():
        print(f"{k:<24}{v:10.2f} us")


if __name__ == "__main__":
    main()
