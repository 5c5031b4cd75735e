"""torch.distributed collectives, oxccl against Gloo, in the same run.

    python python/benchmarks/collectives.py -n 2 [--sizes 8,1M,64M] [--rounds 3] [--ops all_reduce,...]

Starts N rank processes; each joins one process group on "oxccl", one on "gloo" and one
on "noop" (a Python subclass of torch's C++ Backend registered the same way as oxccl's,
whose collectives do nothing: torch's own dispatch into a Python backend, the floor any
such backend pays). Rank 0 also runs oxccl's own `*_perf` example for the op under
`oxccl-run -n N` (from target/release, when built: `cargo build --release --bin
oxccl-run --examples`). Every op and size is timed on all four in interleaved rounds;
the script prints the medians (microseconds per call, float32, sum where it applies):

    oxccl, gloo      the op through torch.distributed on each backend, and their ratio
    perf             oxccl's *_perf time for the same size (in place for all_reduce and
                     broadcast, as torch runs them; out of place for the others)
    floor            the noop backend: torch's dispatch alone
    layers           oxccl - perf: what Python and torch add to oxccl's own call
    ours             oxccl - perf - floor: what the oxccl package adds beyond torch's floor

Sizes are bytes as nccl-tests counts them (the larger buffer of the op).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._C._distributed_c10d import Backend as _CBackend

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The perf example of each op, and which of its columns matches torch's call.
PERF = {
    "all_reduce": ("all_reduce_perf", "in_place"),
    "broadcast": ("broadcast_perf", "in_place"),
    "all_gather": ("all_gather_perf", "out_of_place"),
    "reduce_scatter": ("reduce_scatter_perf", "out_of_place"),
    "all_to_all": ("alltoall_perf", "out_of_place"),
}


# torch 2.14 names all_gather_into_tensor all_gather_single (the old name warns).
ALL_GATHER = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)


class NoopBackend(_CBackend):
    """Collectives that return at once: what torch's dispatch costs without a backend."""

    def __init__(self, rank, size):
        super().__init__(rank, size)
        fut = torch.futures.Future()
        fut.set_result(None)
        self._done = torch._C._distributed_c10d._create_work_from_future(fut)

    supports_coalescing = property(lambda self: False)
    supports_splitting = property(lambda self: False)
    supports_time_estimate = property(lambda self: False)
    supports_shrinking = property(lambda self: False)
    supports_reconfigure = property(lambda self: False)
    supports_window = property(lambda self: False)
    supports_tensor_alloc = property(lambda self: False)

    def getBackendName(self):
        return "noop"

    def _done_(self, *args):
        return self._done

    allreduce = broadcast = barrier = _done_
    _allgather_base = all_gather_single = _reduce_scatter_base = reduce_scatter_single = _done_
    alltoall_base = all_to_all_single = _done_


def parse_size(t):
    m = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(t[:-1]) * m[t[-1].upper()] if t[-1].upper() in m else int(t)


def timed(fn, iters, sync):
    sync()
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
        return lambda: ALL_GATHER(o, i, group=group)
    if op == "reduce_scatter":
        c = max(1, count // n)
        i, o = torch.ones(c * n), torch.empty(c)
        return lambda: REDUCE_SCATTER(o, i, group=group)
    if op == "all_to_all":
        c = max(1, count // n) * n
        i, o = torch.ones(c), torch.empty(c)
        return lambda: dist.all_to_all_single(o, i, group=group)
    raise ValueError(op)


def perf_time(op, nbytes, n, iters):
    """oxccl's own *_perf time for `op` at `nbytes` on `n` processes (None if not built)."""
    exe, column = PERF[op]
    run, path = os.path.join(ROOT, "target/release/oxccl-run"), os.path.join(ROOT, "target/release/examples", exe)
    if not (os.path.exists(run) and os.path.exists(path)):
        return None
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "perf.json")
        cmd = [run, "-n", str(n), "--timeout", "120", "--", path, "-t", "1", "-b", str(nbytes), "-e", str(nbytes)]
        cmd += ["-n", str(iters), "-w", str(max(2, iters // 10)), "-c", "0", "-J", out]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)["results"][0][column]["time"]


def worker(rank, n, port, args, q):
    import oxccl.torch  # noqa: F401

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.Backend.register_backend(
        "noop", lambda o, _b=None: NoopBackend(o.group_rank, o.group_size), extended_api=True, devices=["cpu"]
    )
    dist.init_process_group("oxccl", rank=rank, world_size=n, timeout=datetime.timedelta(seconds=300))
    gloo = dist.new_group(backend="gloo")
    noop = dist.new_group(backend="noop")
    ox = dist.group.WORLD

    def sync():
        dist.barrier(group=gloo)

    # Every group's first calls, and the processes' first seconds, are slower: warm up.
    for g in (ox, gloo, noop):
        w = torch.ones(2)
        for _ in range(200):
            dist.all_reduce(w, group=g)
    rows = []
    for op in args.ops.split(","):
        for nbytes in args.sizes:
            if op in ("reduce_scatter", "all_gather", "all_to_all") and nbytes < 4 * n:
                continue
            fns = {"oxccl": make(op, nbytes, n, ox), "gloo": make(op, nbytes, n, gloo), "floor": make(op, nbytes, n, noop)}
            # Iterations from a warm-up, so that each measurement takes about --budget
            # seconds; rank 0 decides for everyone.
            its = torch.zeros(3, dtype=torch.int64)
            for k, (name, fn) in enumerate(fns.items()):
                fn()
                t = timed(fn, 3, sync) * 1e-6
                its[k] = max(3, min(args.max_iters, int(args.budget / max(t, 1e-7))))
            dist.broadcast(its, 0, group=gloo)
            perf_iters = int(its[0])
            times = {k: [] for k in (*fns, "perf")}
            for _ in range(args.rounds):
                for k, (name, fn) in enumerate(fns.items()):
                    times[name].append(timed(fn, int(its[k]), sync))
                sync()
                if rank == 0 and args.perf:
                    p = perf_time(op, nbytes, n, perf_iters)
                    if p is not None:
                        times["perf"].append(p)
                sync()
            rows.append((op, nbytes, {k: statistics.median(v) if v else None for k, v in times.items()}))
    if rank == 0:
        q.put(rows)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2)
    p.add_argument("--sizes", default="8,64,512,4K,32K,256K,1M,8M,64M", help="bytes, comma-separated (K, M suffixes)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.05, help="seconds per measurement (sets the iterations)")
    p.add_argument("--max-iters", type=int, default=20000)
    p.add_argument("--ops", default="all_reduce,broadcast,all_gather,reduce_scatter,all_to_all")
    p.add_argument("--no-perf", dest="perf", action="store_false", help="skip oxccl's *_perf examples")
    args = p.parse_args()
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    port = 29000 + os.getpid() % 1000
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(worker, args=(args.n, port, args, q), nprocs=args.n, start_method="spawn", join=True)
    rows = q.get()
    if args.perf and all(r[2]["perf"] is None for r in rows):
        print("# skipped: oxccl's *_perf examples (not built: cargo build --release --bin oxccl-run --examples)")
    print(f"# {args.n} processes, float32, medians of {args.rounds} interleaved rounds (us per call)")
    head = ("op", "bytes", "oxccl", "gloo", "gloo/oxccl", "perf", "floor", "layers", "ours")
    print(f"{head[0]:<15}{head[1]:>10}" + "".join(f"{h:>11}" for h in head[2:]))

    def f(v):
        return f"{v:11.2f}" if v is not None else f"{'-':>11}"

    for op, nb, t in rows:
        o, g, perf, floor = t["oxccl"], t["gloo"], t["perf"], t["floor"]
        layers = o - perf if perf is not None else None
        ours = layers - floor if layers is not None else None
        print(f"{op:<15}{nb:>10}{f(o)}{f(g)}{g / o:10.1f}x{f(perf)}{f(floor)}{f(layers)}{f(ours)}")


if __name__ == "__main__":
    main()
