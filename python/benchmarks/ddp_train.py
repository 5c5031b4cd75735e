"""DDP training step time, oxccl against Gloo, in the same run.

    python python/benchmarks/ddp_train.py -n 2 [--width 2560 --layers 4 --steps 5]

An MLP of `layers` square layers (2560 wide, 4 layers: 26 M parameters) on synthetic
data. Each rank times `steps` training steps with DDP on oxccl, on Gloo, and on DDP
without communication ("none": a communication hook that only averages the bucket in
place, so DDP's own work, copying gradients into buckets and back and averaging, is
the same), in interleaved rounds. It prints the median step time of each and the share
of a step spent waiting on communication, (step - step without communication) / step;
beside them, the time each backend takes to all-reduce every gradient once with
nothing else running (one float32 tensor of the model's size), and how much of that
DDP hid behind the backward pass: 1 - (step - step without communication) / alone.
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


def worker(rank, n, port, args, q):
    import oxccl.torch  # noqa: F401

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("oxccl", rank=rank, world_size=n, timeout=datetime.timedelta(seconds=600))
    gloo = dist.new_group(backend="gloo")
    layers = []
    for _ in range(args.layers):
        layers += [torch.nn.Linear(args.width, args.width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers)
    params = sum(p.numel() for p in model.parameters())
    ddps = {
        "oxccl": torch.nn.parallel.DistributedDataParallel(model, process_group=dist.group.WORLD),
        "gloo": torch.nn.parallel.DistributedDataParallel(model, process_group=gloo),
        "none": torch.nn.parallel.DistributedDataParallel(model, process_group=dist.group.WORLD),
    }

    def no_communication(state, bucket):
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer().div_(n))
        return fut

    ddps["none"].register_comm_hook(None, no_communication)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.width)

    def step(ddp):
        opt.zero_grad()
        ddp(x).square().mean().backward()
        opt.step()

    flat = torch.zeros(params)
    alone = {"oxccl": [], "gloo": []}
    times = {"oxccl": [], "gloo": [], "none": []}
    for ddp in ddps.values():
        step(ddp)  # warm-up
    for _ in range(args.rounds):
        for name, ddp in ddps.items():
            dist.barrier(group=gloo)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(ddp)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
        for name, group in (("oxccl", dist.group.WORLD), ("gloo", gloo)):
            dist.barrier(group=gloo)
            t0 = time.perf_counter()
            dist.all_reduce(flat, group=group)
            alone[name].append((time.perf_counter() - t0) * 1e3)
    if rank == 0:
        med = {k: statistics.median(v) for k, v in times.items()}
        q.put((params, med, {k: statistics.median(v) for k, v in alone.items()}))
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2)
    p.add_argument("--width", type=int, default=2560)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    port = 29000 + os.getpid() % 1000
    q = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(worker, args=(args.n, port, args, q), nprocs=args.n, start_method="spawn", join=True)
    params, t, alone = q.get()
    base = t["none"]
    print(f"# DDP, {args.n} processes, {params / 1e6:.1f} M parameters, batch {args.batch}, medians of {args.rounds} rounds")
    print(f"{'backend':<10}{'step ms':>10}{'comm wait':>11}{'all-reduce alone ms':>21}{'hidden':>8}")
    for name in ("oxccl", "gloo", "none"):
        if name == "none":
            print(f"{name:<10}{t[name]:10.1f}{0:10.0f}%")
            continue
        wait = max(0.0, t[name] - base)
        hidden = max(0.0, 1 - wait / alone[name])
        print(f"{name:<10}{t[name]:10.1f}{wait / t[name] * 100:10.0f}%{alone[name]:21.1f}{hidden * 100:7.0f}%")
    print(f"gloo/oxccl step time: {t['gloo'] / t['oxccl']:.2f}x")


if __name__ == "__main__":
    main()
