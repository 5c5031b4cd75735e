"""The rank side of the torch backend tests (see jobs.py)."""

from __future__ import annotations

import datetime
import os
import time

import torch
import torch.distributed as dist

import oxccl.torch  # noqa: F401  (registers "oxccl")
from jobs import emit

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int32, torch.int64]
DTYPES += [getattr(torch, d) for d in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, d)]
R = dist.ReduceOp


def init(rank, n, port, backend="oxccl", timeout=60):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=n, timeout=datetime.timedelta(seconds=timeout))


def val(rank, count, dtype):
    """1s and 2s: every sum, product and power-of-two average of up to 4 ranks is exact."""
    return ((torch.arange(count) + rank) % 2 + 1).to(dtype)


def ref(n, count, dtype, op):
    xs = [val(r, count, torch.float64) for r in range(n)]
    if op == R.SUM:
        out = sum(xs)
    elif op == R.PRODUCT:
        out = torch.stack(xs).prod(0)
    elif op == R.MAX:
        out = torch.stack(xs).amax(0)
    elif op == R.MIN:
        out = torch.stack(xs).amin(0)
    else:  # AVG
        s = sum(xs)
        out = torch.div(s, n, rounding_mode="trunc") if not dtype.is_floating_point else s / n
    return out.to(dtype)


def torch_ops(rank, n, port):
    init(rank, n, port)
    me, checked = rank, 0
    gloo = dist.new_group(backend="gloo")
    for dtype in DTYPES:
        f8 = dtype.itemsize == 1 and dtype.is_floating_point
        ops = [R.SUM, R.MAX, R.MIN] + ([] if f8 else [R.PRODUCT]) + ([R.AVG] if n != 3 else [])
        for count in (0, 1, 4097) + ((65_537,) if dtype in (torch.float32, torch.bfloat16) else ()):
            for op in ops:
                t = val(me, count, dtype)
                dist.all_reduce(t, op=op)
                assert torch.equal(t.to(torch.float64), ref(n, count, dtype, op).to(torch.float64)), (dtype, count, op)
                checked += 1
            out = torch.empty(count * n, dtype=dtype)
            dist.all_gather_into_tensor(out, val(me, count, dtype))
            assert torch.equal(out.float(), torch.cat([val(r, count, dtype) for r in range(n)]).float())
            outs = [torch.empty(count, dtype=dtype) for _ in range(n)]
            dist.all_gather(outs, val(me, count, dtype))
            assert all(torch.equal(outs[r].float(), val(r, count, dtype).float()) for r in range(n))
            rs = torch.empty(count, dtype=dtype)
            dist.reduce_scatter_tensor(rs, torch.cat([val(me + j, count, dtype) for j in range(n)]))
            assert torch.equal(rs.double(), sum(val(r + me, count, torch.float64) for r in range(n)).to(dtype).double())
            b = val(me, count, dtype) if me == n - 1 else torch.zeros(count, dtype=dtype)
            dist.broadcast(b, src=n - 1)
            assert torch.equal(b.float(), val(n - 1, count, dtype).float())
            checked += 4
    # The rest, on float32 and int64.
    for dtype in (torch.float32, torch.int64):
        t = val(me, 10, dtype)
        dist.reduce(t, dst=0)
        if me == 0:
            assert torch.equal(t, ref(n, 10, dtype, R.SUM))
        ins = [torch.full((3,), 10 * me + j, dtype=dtype) for j in range(n)]
        outs = [torch.empty(3, dtype=dtype) for _ in range(n)]
        dist.reduce_scatter(outs[0], [torch.full((3,), me + j, dtype=dtype) for j in range(n)])
        assert outs[0][0] == sum(r + me for r in range(n))
        dist.all_to_all(outs, ins)
        assert [o[0].item() for o in outs] == [10 * r + me for r in range(n)]
        # all_to_all_single, even and uneven: rank i sends i + j + 1 rows to rank j.
        x = torch.arange(4 * n, dtype=dtype) + 100 * me
        y = torch.empty(4 * n, dtype=dtype)
        dist.all_to_all_single(y, x)
        assert torch.equal(y, torch.cat([torch.arange(4 * me, 4 * me + 4, dtype=dtype) + 100 * r for r in range(n)]))
        ins_s = [me + j + 1 for j in range(n)]
        outs_s = [r + me + 1 for r in range(n)]
        x = torch.full((sum(ins_s), 2), me, dtype=dtype)
        y = torch.empty(sum(outs_s), 2, dtype=dtype)
        dist.all_to_all_single(y, x, outs_s, ins_s)
        assert torch.equal(y[:, 0], torch.cat([torch.full((outs_s[r],), r, dtype=dtype) for r in range(n)]))
        g = [torch.empty(2, dtype=dtype) for _ in range(n)] if me == 0 else None
        dist.gather(torch.full((2,), me, dtype=dtype), g, dst=0)
        if me == 0:
            assert [v[0].item() for v in g] == list(range(n))
        sc = torch.empty(2, dtype=dtype)
        dist.scatter(sc, [torch.full((2,), r * 7, dtype=dtype) for r in range(n)] if me == 0 else None, src=0)
        assert sc[0] == me * 7
        checked += 7
    # PREMUL_SUM, non-contiguous tensors (Gloo's treatment: handled by a copy), p2p.
    t = torch.full((5,), 2.0)
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(0.25))
    assert t[0] == 0.5 * n
    nc = torch.arange(12.0).reshape(3, 4).t() * (me + 1)
    dist.all_reduce(nc)
    assert torch.equal(nc, torch.arange(12.0).reshape(3, 4).t() * (n * (n + 1) / 2))
    big = 1 << 20
    send, recv = torch.full((big,), float(me)), torch.empty(big)
    reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, send, (me + 1) % n), dist.P2POp(dist.irecv, recv, (me - 1) % n)])
    for q in reqs:
        q.wait()
    assert recv[0] == (me - 1) % n and recv[-1] == (me - 1) % n
    if me == 0:
        dist.send(torch.arange(5.0), dst=1)
    elif me == 1:
        r1 = torch.empty(5)
        dist.recv(r1, src=0)
        assert torch.equal(r1, torch.arange(5.0))
    # async_op: Work.wait, get_future (with the output tensors), in order.
    ts = [torch.full((50_000,), float(me + k)) for k in range(4)]
    works = [dist.all_reduce(t, async_op=True) for t in ts]
    futs = [w.get_future() for w in works]
    for k, (w, f) in enumerate(zip(works, futs)):
        assert w.wait()
        assert f.wait()[0] is ts[k] and ts[k][0] == sum(r + k for r in range(n))
    # bool (reduced as uint8: MAX is or, MIN is and); an async op whose input only its
    # work holds.
    for op, want in ((R.MAX, [True, True, False]), (R.MIN, [n == 1, True, False])):
        flags = torch.tensor([me == 0, True, False])
        dist.all_reduce(flags, op=op)
        assert flags.tolist() == want, (op, flags)
    out = torch.empty(3 * n)
    w = dist.all_gather_into_tensor(out, torch.full((3,), float(me)), async_op=True)
    assert w.wait() and out.tolist() == [float(r) for r in range(n) for _ in range(3)]
    # A subgroup of ranks 0 and n-1, and its own async op.
    sub = dist.new_group([0, n - 1], backend="oxccl")
    if me in (0, n - 1):
        t = torch.tensor([me + 1.0])
        dist.all_reduce(t, group=sub, async_op=True).wait()
        assert t[0] == 1 + n
    # Bitwise agreement with Gloo (2 ranks) and across ranks: random float32 sums.
    torch.manual_seed(me)
    data = torch.randn(300_001)
    a, b = data.clone(), data.clone()
    dist.all_reduce(a)
    dist.all_reduce(b, group=gloo)
    everyone = [torch.empty_like(a) for _ in range(n)]
    dist.all_gather(everyone, a, group=gloo)
    assert all(torch.equal(e, a) for e in everyone), "ranks disagree"
    same_as_gloo = bool(torch.equal(a, b))
    if n == 2:
        assert same_as_gloo
    else:
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    # Argument errors: raised here, by name.
    errors = []
    for bad in (
        lambda: dist.all_reduce(torch.ones(2, dtype=torch.int16)),
        lambda: dist.all_gather_into_tensor(torch.empty(3 * n + 1), torch.ones(3)),
        lambda: dist.all_reduce(torch.ones(2), op=R.BAND),
        lambda: dist.all_gather([torch.empty(3)] * (n + 1), torch.ones(3)),
    ):
        try:
            bad()
        except (TypeError, ValueError, RuntimeError) as e:
            errors.append(str(e))
        else:
            raise AssertionError("a bad call did not raise")
    dist.barrier()
    dist.destroy_process_group()
    emit({"checked": checked, "errors": errors, "same_as_gloo": same_as_gloo})


def torch_mixed(rank, n, port):
    """ "cpu:oxccl,cuda:nccl" (without a GPU, NCCL cannot start: "cpu:oxccl,cuda:gloo"):
    CPU tensors go to oxccl."""
    mixed = "cpu:oxccl,cuda:nccl" if torch.cuda.is_available() else "cpu:oxccl,cuda:gloo"
    init(rank, n, port, backend=mixed)
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    be = dist.group.WORLD._get_backend(torch.device("cpu"))
    emit({"sum": t.item(), "backend": type(be).__name__, "cuda": torch.cuda.is_available()})


def torch_cuda(rank, n, port):
    """CUDA tensors on oxccl's device path (current stream), where there is a GPU."""
    if not torch.cuda.is_available():
        emit({"skipped": "no CUDA device"})
        return
    torch.cuda.set_device(0)
    init(rank, n, port)
    t = torch.full((1 << 20,), rank + 1.0, device="cuda")
    dist.all_reduce(t)
    o = torch.empty(2 * n, device="cuda", dtype=torch.bfloat16)
    dist.all_gather_into_tensor(o, torch.full((2,), rank, device="cuda", dtype=torch.bfloat16))
    torch.cuda.synchronize()
    emit({"sum": t[0].item(), "gathered": o.float().tolist()})


def torch_mismatch(rank, n, port):
    init(rank, n, port)
    try:
        dist.all_reduce(torch.ones(1000 + rank))
    except oxccl.OxcclError as e:
        emit({"error": str(e), "type": type(e).__name__})
        return
    raise AssertionError("mismatched sizes did not raise")


def torch_killed(rank, n, port):
    init(rank, n, port)
    dist.barrier()
    if rank == n - 1:
        os._exit(3)
    t0 = time.monotonic()
    w = dist.all_reduce(torch.ones(1 << 16), async_op=True)
    fut = w.get_future()
    try:
        w.wait()
    except oxccl.OxcclError as e:
        try:
            fut.wait()
            fut_err = ""
        except Exception as fe:  # noqa: BLE001
            fut_err = f"{type(fe).__name__}: {fe}"
        emit({"error": str(e), "future": fut_err, "seconds": time.monotonic() - t0})
        os._exit(0)  # the process group cannot be destroyed cleanly with a dead peer
    raise AssertionError("a killed rank did not make wait() raise")


def torch_abort(rank, n, port):
    init(rank, n, port)
    dist.barrier()
    be = dist.group.WORLD._get_backend(torch.device("cpu"))
    if rank == 0:
        be.comm.abort()
    else:
        time.sleep(1)
    try:
        dist.all_reduce(torch.ones(4))
    except oxccl.OxcclError as e:
        emit({"error": str(e), "type": type(e).__name__})
        os._exit(0)
    raise AssertionError("an aborted communicator did not raise")


def torch_timeout(rank, n, port):
    init(rank, n, port, timeout=3)
    dist.barrier()
    if rank == 1:
        time.sleep(8)
        os._exit(0)
    t0 = time.monotonic()
    try:
        dist.all_reduce(torch.ones(4))
    except oxccl.Timeout as e:
        emit({"error": str(e), "seconds": time.monotonic() - t0, "waiting_for": e.waiting_for, "waited": e.waited})
        os._exit(0)
    raise AssertionError("a stalled peer did not time out")


def train_ddp(rank, n, port):
    """DDP on oxccl and on Gloo from the same start: the parameters must match (exactly
    with 2 ranks), with the default bucketing and with a communication hook."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    init(rank, n, port)
    gloo = dist.new_group(backend="gloo")
    results = {}
    for hook in (False, True):
        params = {}
        for name, group in (("oxccl", None), ("gloo", gloo)):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
            ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=group, bucket_cap_mb=0.1)
            if hook:
                ddp.register_comm_hook(group or dist.group.WORLD, default_hooks.allreduce_hook)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
            torch.manual_seed(1 + rank)
            for _ in range(5):
                opt.zero_grad()
                loss = ddp(torch.randn(16, 64)).square().mean()
                loss.backward()
                opt.step()
            params[name] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        diff = (params["oxccl"] - params["gloo"]).abs().max().item()
        results["hook" if hook else "default"] = diff
        if n == 2:
            assert diff == 0.0, f"DDP (hook={hook}) differs from Gloo by {diff}"
        else:
            assert diff < 1e-5, f"DDP (hook={hook}) differs from Gloo by {diff}"
    dist.destroy_process_group()
    emit(results)


def train_fsdp(rank, n, port):
    """FSDP2 (fully_shard) on oxccl and on Gloo: the same parameters afterwards."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    init(rank, n, port)
    gloo = dist.new_group(backend="gloo")
    out = {}
    for name, group in (("oxccl", dist.group.WORLD), ("gloo", gloo)):
        mesh = DeviceMesh.from_group(group, "cpu")
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 16))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        torch.manual_seed(1 + rank)
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(8, 32)).square().mean().backward()
            opt.step()
        out[name] = torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()])
    diff = (out["oxccl"] - out["gloo"]).abs().max().item()
    if n == 2:
        assert diff == 0.0, f"FSDP2 differs from Gloo by {diff}"
    else:
        assert diff < 1e-5, f"FSDP2 differs from Gloo by {diff}"
    dist.destroy_process_group()
    emit({"diff": diff})
