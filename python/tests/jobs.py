"""The rank side of the multi-process tests: ``python -m jobs CASE RANK N PORT``.

Each case checks its results against a hand-computed reference or against Gloo in the
same job, raises on a difference, and ends with ``emit(obj)`` (what the test reads).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np


def emit(obj):
    print("RESULT " + json.dumps(obj), flush=True)


def inputs(rank, count, np_dtype):
    """Rank `rank`'s input: 1s and 2s, so that sums, products and averages of up to 4
    ranks are exact in every data type (fp8 included)."""
    return ((np.arange(count) + rank) % 2 + 1).astype(np_dtype)


# --- the buffer API -------------------------------------------------------------------


def plain_env(rank, n, port):
    os.environ.update(OXCCL_COMM_ID=f"127.0.0.1:{port}", OXCCL_RANK=str(rank), OXCCL_NRANKS=str(n))
    import oxccl

    return oxccl, oxccl.Comm.from_env(timeout=60)


def plain_ops(rank, n, port):
    oxccl, c = plain_env(rank, n, port)
    checked = 0
    for dt in (np.int8, np.uint8, np.int32, np.uint32, np.int64, np.uint64, np.float16, np.float32, np.float64):
        for count in (0, 1, 1000, 70_000):
            all_in = [inputs(r, count, dt) for r in range(n)]
            ref = {
                "sum": sum(a.astype(np.int64) for a in all_in),
                "max": np.maximum.reduce(all_in),
                "min": np.minimum.reduce(all_in),
                "prod": np.prod([a.astype(np.int64) for a in all_in], axis=0),
            }
            for op, want in ref.items():
                x = inputs(rank, count, dt)
                c.all_reduce(x, op=op)
                assert np.array_equal(x, np.asarray(want).astype(dt)), (dt, count, op)
                checked += 1
            x = inputs(rank, count, dt)
            y = np.empty(count * n, dt)
            c.all_gather(x, y)
            assert np.array_equal(y, np.concatenate(all_in)), (dt, count, "all_gather")
            big = np.concatenate([inputs(rank + j, count, dt) for j in range(n)])
            out = np.empty(count, dt)
            c.reduce_scatter(big, out)
            want = sum(inputs(r + rank, count, dt).astype(np.int64) for r in range(n)).astype(dt)
            assert np.array_equal(out, want), (dt, count, "reduce_scatter")
            b = inputs(rank, count, dt) if rank == 1 % n else np.zeros(count, dt)
            c.broadcast(b, root=1 % n)
            assert np.array_equal(b, inputs(1 % n, count, dt))
            checked += 3
    # all_to_all: block j of rank i holds 100 * i + j.
    s = np.repeat(np.arange(n, dtype=np.int32) + 100 * rank, 3)
    r = np.empty_like(s)
    c.all_to_all(s, r)
    assert np.array_equal(r, np.repeat(np.arange(n, dtype=np.int32) * 100 + rank, 3))
    # gather / scatter / reduce to root n-1.
    root = n - 1
    g = np.empty(2 * n, np.float64) if rank == root else None
    c.gather(np.full(2, rank, np.float64), g, root=root)
    if rank == root:
        assert np.array_equal(g, np.repeat(np.arange(n, dtype=np.float64), 2))
    sc = np.arange(2 * n, dtype=np.float32) if rank == root else None
    mine = np.empty(2, np.float32)
    c.scatter(sc, mine, root=root)
    assert np.array_equal(mine, np.arange(2 * rank, 2 * rank + 2, dtype=np.float32))
    red = np.full(4, rank + 1, np.int64)
    c.reduce(red, root=root)
    if rank == root:
        assert red[0] == n * (n + 1) // 2
    # A ring of sends and receives in one group, large enough to need the receiver.
    out = np.full(1 << 20, rank, np.float32)
    inp = np.empty(1 << 20, np.float32)
    c.group([("send", out, None, None, (rank + 1) % n), ("recv", None, inp, None, (rank - 1) % n)])
    assert inp[0] == (rank - 1) % n and inp[-1] == (rank - 1) % n
    # Asynchronous operations, in order, with the buffers kept by the communicator.
    works = []
    arrays = [np.full(100_000, rank + k, np.float32) for k in range(4)]
    for a in arrays:
        works.append(c.all_reduce(a, async_op=True))
    done = threading.Event()
    works[-1].on_complete(lambda exc: done.set() if exc is None else None)
    for k, w in enumerate(works):
        assert w.wait() is True and w.is_completed() and w.exception() is None
        assert arrays[k][0] == sum(r + k for r in range(n))
    assert done.wait(10)
    # PreMulSum and avg on floats.
    x = np.full(10, 2.0, np.float32)
    c.all_reduce(x, op=oxccl.PreMulSum(0.5))
    assert x[0] == n
    x = np.full(10, float(rank), np.float64)
    c.all_reduce(x, op="avg")
    assert x[0] == (n - 1) / 2
    torch_errors = torch_tensors(c, rank, n)
    # split: even and odd ranks.
    sub = c.split(rank % 2, rank)
    y = np.array([rank], np.int64)
    sub.all_reduce(y)
    assert y[0] == sum(r for r in range(n) if r % 2 == rank % 2)
    # Local argument errors: no communication, a clear exception.
    errors = []
    for bad in (
        lambda: c.all_reduce(np.ones(3, np.float32), np.ones(4, np.float32)),
        lambda: c.all_reduce(np.ones(3, np.int16)),
        lambda: c.all_reduce(b"read-only"),
        lambda: c.all_reduce(np.ones((4, 4), np.float32)[:, 1]),
        lambda: c.all_gather(np.ones(3, np.float32), np.ones(3 * n + 1, np.float32)),
        lambda: c.send(np.ones(3, np.float32), peer=n + 5),
        lambda: c.all_reduce(np.ones(3, np.float32), op="xor"),
    ):
        try:
            bad()
        except (TypeError, ValueError, oxccl.OxcclError) as e:
            errors.append(str(e))
        else:
            raise AssertionError("a bad call did not raise")
    c.barrier()
    c.finalize()
    emit({"checked": checked, "errors": errors, "torch_errors": torch_errors})


def torch_tensors(c, rank, n):
    """torch tensors through oxccl.Comm: plain CPU ones by their own attributes, the
    rest through DLPack; returns the errors of the ones oxccl cannot take."""
    try:
        import torch
    except ImportError:
        print("skipped: torch tensors through oxccl.Comm: torch is not installed")
        return None
    t = torch.full((7,), float(rank + 1), dtype=torch.bfloat16)
    c.all_reduce(t)
    assert t.tolist() == [n * (n + 1) / 2] * 7
    g = torch.empty(3 * n, dtype=torch.int64)
    c.all_gather(torch.full((3,), rank, dtype=torch.int64), g)
    assert g.tolist() == [r for r in range(n) for _ in range(3)]
    x = torch.full((1000,), float(rank))
    w = c.all_reduce(x, op="max", async_op=True)
    assert w.wait() and x[999] == n - 1
    # A Parameter (a Tensor subclass) goes through DLPack.
    p = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    c.all_reduce(p)
    assert p.tolist() == [n] * 3
    errors = []
    for bad in (torch.ones(4, 4)[:, 1], torch.ones(4, requires_grad=True), torch.ones(4, dtype=torch.int16)):
        try:
            c.all_reduce(bad)
        except (TypeError, ValueError, BufferError) as e:
            errors.append(str(e))
        else:
            raise AssertionError(f"a bad tensor did not raise: {bad}")
    return errors


def fields(e):
    """The error's fields, as the exception carries them."""
    return {k: getattr(e, k) for k in ("rank", "peer", "host", "pid", "call", "op", "waiting_for", "waited", "nccl_code")}


def plain_mismatch(rank, n, port):
    oxccl, c = plain_env(rank, n, port)
    x = np.ones(1000 + rank, np.float32)
    try:
        c.all_reduce(x)
    except oxccl.InvalidUsage as e:
        emit({"error": str(e), "type": type(e).__name__, "fields": fields(e)})
        return
    raise AssertionError("mismatched sizes did not raise")


def plain_killed(rank, n, port):
    oxccl, c = plain_env(rank, n, port)
    c.barrier()
    if rank == n - 1:
        os._exit(3)
    t0 = time.monotonic()
    try:
        c.all_reduce(np.ones(1 << 16, np.float32))
    except oxccl.RemoteError as e:
        emit({"error": str(e), "seconds": time.monotonic() - t0, "broken": c.is_broken, "fields": fields(e)})
        return
    raise AssertionError("a killed rank did not make the call raise")


def plain_abort(rank, n, port):
    oxccl, c = plain_env(rank, n, port)
    c.barrier()
    t0 = time.monotonic()
    if rank == 0:
        threading.Timer(0.5, c.abort).start()
        try:
            c.all_reduce(np.ones(8, np.float32))  # rank 1 never joins
        except oxccl.Aborted as e:
            emit({"error": str(e), "seconds": time.monotonic() - t0, "async": str(c.async_error())})
            return
        raise AssertionError("abort did not end the blocked call")
    time.sleep(2)
    try:
        c.all_reduce(np.ones(8, np.float32))
    except oxccl.OxcclError as e:
        emit({"error": str(e), "seconds": time.monotonic() - t0})
        return
    raise AssertionError("the peer's abort did not reach this rank")


if __name__ == "__main__":
    case, rank, n, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if case.startswith("torch_") or case.startswith("train_"):
        import torch_jobs

        getattr(torch_jobs, case)(rank, n, port)
    else:
        globals()[case](rank, n, port)
