"""OxcclBackend: torch.distributed's collectives on an oxccl communicator."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import Backend as _CBackend

from .. import _oxccl
from ._work import OxcclWork, done_work

# oxccl's operation kinds (the native module's numbering).
AR, RED, BC, AG, RS, A2A, GATHER, SCATTER, SEND, RECV = range(10)

# torch dtype -> NCCL's data type code.
_DTYPES = {
    torch.int8: 0,
    torch.uint8: 1,
    torch.bool: 1,
    torch.int32: 2,
    torch.int64: 4,
    torch.float16: 6,
    torch.float32: 7,
    torch.float64: 8,
    torch.bfloat16: 9,
}
for _name, _code in (("uint32", 3), ("uint64", 5), ("float8_e4m3fn", 10), ("float8_e5m2", 11)):
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _code

_R = dist.ReduceOp.RedOpType
_OPS = {_R.SUM: 0, _R.PRODUCT: 1, _R.MAX: 2, _R.MIN: 3, _R.AVG: 4, _R.PREMUL_SUM: 5}
# torch's NCCL backend reduces bool as uint8 with these ops.
_BOOL_OPS = {_R.SUM: 2, _R.MAX: 2, _R.PRODUCT: 3, _R.MIN: 3}

_DONE = done_work()

# The lean path (see OxcclBackend._one): one contiguous CPU tensor of any dtype but bool
# (which reduces with other op codes), an op other than PREMUL_SUM (which has a scalar).
_LEAN = {d: c for d, c in _DTYPES.items() if d is not torch.bool}
_STRIDED = torch.strided
_SUM = _R.SUM
_PREMUL = _R.PREMUL_SUM


def _lean(t):
    """NCCL's dtype code of `t` when it takes the lean path, else None."""
    if t.is_cpu and t.layout is _STRIDED and t.is_contiguous():
        return _LEAN.get(t.dtype)
    return None


def _lean_op(redop, dtype):
    """NCCL's op code of `redop` on the lean path (None: PREMUL_SUM, or bool)."""
    if redop == _SUM:
        return 0
    if redop == _PREMUL:
        return None
    return _op(redop, dtype)[0]


def _op(redop, dtype):
    """(op code, scalar) for a torch ReduceOp (or RedOpType)."""
    kind = redop.op if hasattr(redop, "op") else redop
    if dtype == torch.bool:
        if kind not in _BOOL_OPS:
            raise ValueError(f"oxccl: {kind} is not defined for bool tensors (use SUM/MAX or PRODUCT/MIN)")
        return _BOOL_OPS[kind], None
    code = _OPS.get(kind)
    if code is None:
        raise ValueError(f"oxccl: reduction {kind} is not supported (SUM, AVG, PRODUCT, MIN, MAX and PREMUL_SUM are)")
    if code == 5:
        factor = redop.factor
        scalar = float(factor.item() if isinstance(factor, torch.Tensor) else factor)
        return 5, scalar
    return code, None


def _code(t, what):
    code = _DTYPES.get(t.dtype)
    if code is None:
        raise TypeError(
            f"oxccl: {what} has dtype {t.dtype}, which oxccl does not support "
            f"(supported: {', '.join(str(d) for d in _DTYPES)})"
        )
    if t.layout != torch.strided:
        raise ValueError(f"oxccl: {what} must be a dense (strided) tensor, got layout {t.layout}")
    return code


class _Plan:
    """The operations of one call: raw ops for the native module, tensors to keep, and
    copies to make after completion (into non-contiguous outputs)."""

    __slots__ = ("ops", "keep", "post", "device")

    def __init__(self):
        self.ops = []
        self.keep = []
        self.post = []
        self.device = None

    def dev(self, t):
        d = t.device
        if d.type == "cuda":
            idx = d.index if d.index is not None else torch.cuda.current_device()
        elif d.type == "cpu":
            idx = -1
        else:
            raise ValueError(f"oxccl: tensors on {d} are not supported (CPU and CUDA are)")
        if self.device is None:
            self.device = idx
        elif self.device != idx:
            raise ValueError("oxccl: all tensors of one call must be on the same device")
        return idx

    def src(self, t, what):
        """The address of input `t` (a contiguous copy if it is not contiguous)."""
        _code(t, what)
        self.dev(t)
        if not t.is_contiguous():
            t = t.contiguous()
        self.keep.append(t)
        return t.data_ptr()

    def dst(self, t, what):
        """The address output `t` receives at (a temporary, copied back, if `t` is not
        contiguous)."""
        _code(t, what)
        self.dev(t)
        if not t.is_contiguous():
            tmp = t.contiguous()
            self.post.append((t, tmp))
            t = tmp
        self.keep.append(t)
        return t.data_ptr()

    def add(self, kind, send, recv, count, dtype, op=0, scalar=None, root=0):
        self.ops.append((kind, send, recv, count, dtype, op, scalar, root))


def _check_list(tensors, n, what):
    if len(tensors) != n:
        raise ValueError(f"oxccl: {what} must hold {n} tensor(s), got {len(tensors)}")


def _same(a, b, what):
    if a.dtype != b.dtype:
        raise TypeError(f"oxccl: {what}: dtypes differ ({a.dtype} and {b.dtype})")


class OxcclBackend(_CBackend):
    """A torch.distributed backend on one oxccl communicator (one per group)."""

    def __init__(self, store, rank, size, timeout):
        super().__init__(rank, size)
        self._rank = rank
        self._size = size
        secs = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)
        key = "oxccl/unique_id"
        if rank == 0:
            uid = _oxccl.UniqueId()
            store.set(key, bytes(uid))
        else:
            uid = _oxccl.UniqueId.from_bytes(bytes(store.get(key)))
        self._comm = _oxccl.Comm.init_rank(uid, rank, size, timeout=secs if secs > 0 else None)
        # Sends and receives not issued yet (see _run).
        self._pending = []

    # What torch asks of a backend (properties: torch reads them with getattr).
    @property
    def supports_coalescing(self):
        # torch's C++ Backend does not hand _start_coalescing to a Python subclass;
        # batch_isend_irecv then issues its operations one by one, and _run groups them.
        return False

    @property
    def supports_splitting(self):
        return False

    @property
    def supports_time_estimate(self):
        return False

    @property
    def supports_shrinking(self):
        return False

    @property
    def supports_reconfigure(self):
        return False

    @property
    def supports_window(self):
        return False

    @property
    def supports_tensor_alloc(self):
        return False

    def getBackendName(self):
        return "oxccl"

    @property
    def comm(self):
        """The group's ``oxccl.Comm``."""
        return self._comm

    # -- running ---------------------------------------------------------------------

    def _one(self, kind, send, recv, count, code, op, root, opts, keep, outputs):
        """The lean path: one operation on contiguous CPU tensors, checked by the caller,
        straight to the native module without a plan. A blocking call returns the shared
        completed work (torch's wait on it costs nothing) and hands no tensors over: the
        caller holds them until the call returns."""
        if getattr(opts, "asyncOp", True):
            return OxcclWork(self._comm._launch1(kind, send, recv, count, code, op, root, True, keep), outputs)
        self._comm._launch1(kind, send, recv, count, code, op, root, False)
        return _DONE

    def _run(self, plan, async_op, outputs, p2p=False):
        if p2p:
            # Sends and receives wait here until a work of theirs is waited on (or
            # polled), or another operation is issued: then they run together, as one
            # group, so that a batch of isend/irecv (a ring, a pipeline exchange) cannot
            # deadlock in oxccl's in-order progress thread.
            w = OxcclWork(None, outputs, flush=self._flush)
            self._pending.append((plan, w))
            return w
        if self._pending:
            self._flush()
        dev = -1 if plan.device is None else plan.device
        stream = torch.cuda.current_stream(dev).cuda_stream if dev >= 0 else None
        post = plan.post
        native = self._comm._launch(plan.ops, dev, stream, bool(async_op) and not post and dev < 0, plan.keep)
        if post:
            for t, tmp in post:
                t.copy_(tmp)
        if native is None and not async_op:
            return _DONE
        return OxcclWork(native, outputs)

    def _flush(self):
        """Issues the sends and receives waiting in ``_pending`` as one group."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        plan = _Plan()
        for p, _ in pending:
            plan.ops.extend(p.ops)
            plan.keep.extend(p.keep)
            plan.post.extend(p.post)
            if p.device is not None:
                if plan.device is not None and plan.device != p.device:
                    err = ValueError("oxccl: sends and receives issued together mix devices")
                    for _, w in pending:
                        w._fail(err)
                    raise err
                plan.device = p.device
        dev = -1 if plan.device is None else plan.device
        stream = torch.cuda.current_stream(dev).cuda_stream if dev >= 0 else None
        try:
            native = self._comm._launch(plan.ops, dev, stream, not plan.post and dev < 0, plan.keep)
            if plan.post:
                for t, tmp in plan.post:
                    t.copy_(tmp)
        except Exception as e:
            for _, w in pending:
                w._fail(e)
            raise
        for _, w in pending:
            w._bind(native)

    # -- collectives ----------------------------------------------------------------

    def allreduce(self, tensors, opts=None):
        if opts is not None and len(tensors) == 1 and not self._pending:
            # The common case, in as few steps as it takes (_one, inlined); the same
            # checks as the general path below, which takes every other case.
            t = tensors[0]
            if t.is_cpu and t.layout is _STRIDED and t.is_contiguous():
                code = _LEAN.get(t.dtype)
                redop = opts.reduceOp
                op = 0 if redop == _SUM else _lean_op(redop, t.dtype) if code is not None else None
                if code is not None and op is not None:
                    p = t.data_ptr()
                    if getattr(opts, "asyncOp", True):
                        return OxcclWork(self._comm._launch1(AR, p, p, t.numel(), code, op, 0, True, t), tensors)
                    self._comm._launch1(AR, p, p, t.numel(), code, op, 0, False)
                    return _DONE
        opts = opts or dist.AllreduceOptions()
        plan = _Plan()
        for t in tensors:
            code = _code(t, "all_reduce tensor")
            op, scalar = _op(opts.reduceOp, t.dtype)
            p = plan.dst(t, "all_reduce tensor")
            plan.add(AR, p, p, t.numel(), code, op, scalar)
        return self._run(plan, getattr(opts, "asyncOp", True), tensors)

    def allreduce_coalesced(self, tensors, opts=None):
        return self.allreduce(tensors, opts or dist.AllreduceCoalescedOptions())

    def broadcast(self, tensors, opts=None):
        if opts is not None and len(tensors) == 1 and not self._pending:
            t = tensors[0]
            code = _lean(t)
            if code is not None:
                p = t.data_ptr()
                return self._one(BC, p, p, t.numel(), code, 0, opts.rootRank, opts, t, tensors)
        opts = opts or dist.BroadcastOptions()
        plan = _Plan()
        for t in tensors:
            code = _code(t, "broadcast tensor")
            p = plan.dst(t, "broadcast tensor")
            plan.add(BC, p, p, t.numel(), code, root=opts.rootRank)
        return self._run(plan, getattr(opts, "asyncOp", True), tensors)

    def reduce(self, tensors, opts=None):
        if opts is not None and len(tensors) == 1 and not self._pending:
            t = tensors[0]
            code = _lean(t)
            op = _lean_op(opts.reduceOp, t.dtype) if code is not None else None
            if op is not None:
                p = t.data_ptr()
                return self._one(RED, p, p, t.numel(), code, op, opts.rootRank, opts, t, tensors)
        opts = opts or dist.ReduceOptions()
        plan = _Plan()
        for t in tensors:
            code = _code(t, "reduce tensor")
            op, scalar = _op(opts.reduceOp, t.dtype)
            p = plan.dst(t, "reduce tensor")
            plan.add(RED, p, p, t.numel(), code, op, scalar, opts.rootRank)
        return self._run(plan, getattr(opts, "asyncOp", True), tensors)

    def _allgather_base(self, output, input, opts=None):
        opts = opts or dist.AllgatherOptions()
        _same(output, input, "all_gather_into_tensor")
        n = input.numel()
        if output.numel() != n * self._size:
            raise ValueError(
                f"oxccl: all_gather_into_tensor: output has {output.numel()} elements, "
                f"input {n} x {self._size} ranks = {n * self._size} expected"
            )
        code = _lean(input)
        if code is not None and _lean(output) is not None and not self._pending:
            return self._one(AG, input.data_ptr(), output.data_ptr(), n, code, 0, 0, opts, (input, output), [output])
        plan = _Plan()
        code = _code(input, "all_gather input")
        s = plan.src(input, "all_gather input")
        d = plan.dst(output, "all_gather output")
        plan.add(AG, s, d, n, code)
        return self._run(plan, getattr(opts, "asyncOp", True), [output])

    all_gather_single = _allgather_base

    def allgather_coalesced(self, output_lists, inputs, opts=None):
        works = [self.allgather([o], [i], opts) for o, i in zip(output_lists, inputs)]
        return works[-1] if works else _DONE

    def all_gather_single_coalesced(self, outputs, inputs, opts=None):
        opts = opts or dist.AllgatherOptions()
        plan = _Plan()
        for o, i in zip(outputs, inputs):
            _same(o, i, "all_gather_into_tensor_coalesced")
            if o.numel() != i.numel() * self._size:
                raise ValueError("oxccl: all_gather_into_tensor_coalesced: output size is not input size x world size")
            code = _code(i, "all_gather input")
            plan.add(AG, plan.src(i, "all_gather input"), plan.dst(o, "all_gather output"), i.numel(), code)
        return self._run(plan, getattr(opts, "asyncOp", True), outputs)

    allgather_into_tensor_coalesced = all_gather_single_coalesced

    def allgather(self, output_tensors, input_tensors, opts=None):
        opts = opts or dist.AllgatherOptions()
        _check_list(input_tensors, 1, "all_gather's input list")
        _check_list(output_tensors, 1, "all_gather's output list")
        outs, inp = output_tensors[0], input_tensors[0]
        _check_list(outs, self._size, "all_gather's output tensor list")
        plan = _Plan()
        code = _code(inp, "all_gather input")
        for o in outs:
            _same(o, inp, "all_gather")
            if o.numel() != inp.numel():
                raise ValueError(
                    f"oxccl: all_gather: every output tensor needs {inp.numel()} elements, got {o.numel()}"
                )
        # Every rank's input goes straight into its output tensor on every rank: one
        # group of sends and receives (with the copy to self), no staging buffer.
        s = plan.src(inp, "all_gather input")
        for peer, o in enumerate(outs):
            plan.add(SEND, s, 0, inp.numel(), code, root=peer)
            plan.add(RECV, 0, plan.dst(o, "all_gather output"), inp.numel(), code, root=peer)
        return self._run(plan, getattr(opts, "asyncOp", True), output_tensors)

    def _reduce_scatter_base(self, output, input, opts=None):
        opts = opts or dist.ReduceScatterOptions()
        _same(output, input, "reduce_scatter_tensor")
        n = output.numel()
        if input.numel() != n * self._size:
            raise ValueError(
                f"oxccl: reduce_scatter_tensor: input has {input.numel()} elements, "
                f"output {n} x {self._size} ranks = {n * self._size} expected"
            )
        code = _lean(input)
        if code is not None and _lean(output) is not None and not self._pending:
            op = _lean_op(opts.reduceOp, input.dtype)
            if op is not None:
                s, d = input.data_ptr(), output.data_ptr()
                return self._one(RS, s, d, n, code, op, 0, opts, (input, output), [output])
        plan = _Plan()
        code = _code(input, "reduce_scatter input")
        op, scalar = _op(opts.reduceOp, input.dtype)
        plan.add(RS, plan.src(input, "reduce_scatter input"), plan.dst(output, "reduce_scatter output"), n, code, op, scalar)
        return self._run(plan, getattr(opts, "asyncOp", True), [output])

    reduce_scatter_single = _reduce_scatter_base

    def reduce_scatter_single_coalesced(self, outputs, inputs, opts=None):
        opts = opts or dist.ReduceScatterOptions()
        plan = _Plan()
        for o, i in zip(outputs, inputs):
            _same(o, i, "reduce_scatter_tensor_coalesced")
            if i.numel() != o.numel() * self._size:
                raise ValueError("oxccl: reduce_scatter_tensor_coalesced: input size is not output size x world size")
            code = _code(i, "reduce_scatter input")
            op, scalar = _op(opts.reduceOp, i.dtype)
            plan.add(RS, plan.src(i, "reduce_scatter input"), plan.dst(o, "reduce_scatter output"), o.numel(), code, op, scalar)
        return self._run(plan, getattr(opts, "asyncOp", True), outputs)

    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        opts = opts or dist.ReduceScatterOptions()
        _check_list(output_tensors, 1, "reduce_scatter's output list")
        _check_list(input_tensors, 1, "reduce_scatter's input list")
        out, ins = output_tensors[0], input_tensors[0]
        _check_list(ins, self._size, "reduce_scatter's input tensor list")
        for i in ins:
            _same(out, i, "reduce_scatter")
            if i.numel() != out.numel():
                raise ValueError(f"oxccl: reduce_scatter: every input needs {out.numel()} elements, got {i.numel()}")
        # The reduction needs the blocks side by side: one copy, as Gloo makes.
        flat = torch.cat([i.reshape(-1) for i in ins]) if ins else out.new_empty(0)
        return self._reduce_scatter_base(out, flat, opts)

    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        opts = opts or dist.AllToAllOptions()
        _same(output, input, "all_to_all_single")
        n = self._size
        plan = _Plan()
        if not output_split_sizes and not input_split_sizes:
            if input.numel() != output.numel() or input.numel() % n:
                raise ValueError(
                    f"oxccl: all_to_all_single: input ({input.numel()}) and output ({output.numel()}) "
                    f"must have the same number of elements, divisible by {n}"
                )
            code = _lean(input)
            if code is not None and _lean(output) is not None and not self._pending:
                s, d = input.data_ptr(), output.data_ptr()
                return self._one(A2A, s, d, input.numel() // n, code, 0, 0, opts, (input, output), [output])
        code = _code(input, "all_to_all input")
        if not output_split_sizes and not input_split_sizes:
            plan.add(A2A, plan.src(input, "all_to_all input"), plan.dst(output, "all_to_all output"), input.numel() // n, code)
            return self._run(plan, getattr(opts, "asyncOp", True), [output])
        rows_in = input.size(0) if input.dim() else 1
        rows_out = output.size(0) if output.dim() else 1
        per_in = input.numel() // rows_in if rows_in else 0
        per_out = output.numel() // rows_out if rows_out else 0
        ins = list(input_split_sizes) or [rows_in // n] * n
        outs = list(output_split_sizes) or [rows_out // n] * n
        _check_list(ins, n, "input_split_sizes")
        _check_list(outs, n, "output_split_sizes")
        if sum(ins) != rows_in or sum(outs) != rows_out:
            raise ValueError(
                f"oxccl: all_to_all_single: split sizes add up to {sum(ins)} (input) and {sum(outs)} (output), "
                f"the tensors have {rows_in} and {rows_out} rows"
            )
        s = plan.src(input, "all_to_all input")
        d = plan.dst(output, "all_to_all output")
        esz = input.element_size()
        si = so = 0
        for peer in range(n):
            plan.add(SEND, s + si * per_in * esz, 0, ins[peer] * per_in, code, root=peer)
            plan.add(RECV, 0, d + so * per_out * esz, outs[peer] * per_out, code, root=peer)
            si += ins[peer]
            so += outs[peer]
        return self._run(plan, getattr(opts, "asyncOp", True), [output])

    all_to_all_single = alltoall_base

    def alltoall(self, output_tensors, input_tensors, opts=None):
        opts = opts or dist.AllToAllOptions()
        n = self._size
        _check_list(output_tensors, n, "all_to_all's output list")
        _check_list(input_tensors, n, "all_to_all's input list")
        plan = _Plan()
        for peer in range(n):
            i, o = input_tensors[peer], output_tensors[peer]
            _same(o, i, "all_to_all")
            code = _code(i, "all_to_all input")
            plan.add(SEND, plan.src(i, "all_to_all input"), 0, i.numel(), code, root=peer)
            plan.add(RECV, 0, plan.dst(o, "all_to_all output"), o.numel(), code, root=peer)
        return self._run(plan, getattr(opts, "asyncOp", True), output_tensors)

    def gather(self, output_tensors, input_tensors, opts=None):
        opts = opts or dist.GatherOptions()
        root = opts.rootRank
        _check_list(input_tensors, 1, "gather's input list")
        inp = input_tensors[0]
        code = _code(inp, "gather input")
        plan = _Plan()
        s = plan.src(inp, "gather input")
        if self._rank == root:
            _check_list(output_tensors, 1, "gather's output list on the root")
            outs = output_tensors[0]
            _check_list(outs, self._size, "gather's output tensor list on the root")
            for o in outs:
                _same(o, inp, "gather")
                if o.numel() != inp.numel():
                    raise ValueError(f"oxccl: gather: every output needs {inp.numel()} elements, got {o.numel()}")
            # The blocks land side by side, then go to the output tensors (one copy, as
            # Gloo makes).
            flat = inp.new_empty(inp.numel() * self._size)
            d = plan.dst(flat, "gather output")
            k = inp.numel()
            plan.post.extend((o, flat[i * k : (i + 1) * k].view(o.shape)) for i, o in enumerate(outs))
        else:
            if output_tensors and any(len(x) for x in output_tensors):
                raise ValueError("oxccl: gather: only the root passes output tensors")
            d = 0
        plan.add(GATHER, s, d, inp.numel(), code, root=root)
        return self._run(plan, getattr(opts, "asyncOp", True), output_tensors)

    def scatter(self, output_tensors, input_tensors, opts=None):
        opts = opts or dist.ScatterOptions()
        root = opts.rootRank
        _check_list(output_tensors, 1, "scatter's output list")
        out = output_tensors[0]
        code = _code(out, "scatter output")
        plan = _Plan()
        d = plan.dst(out, "scatter output")
        s = 0
        if self._rank == root:
            _check_list(input_tensors, 1, "scatter's input list on the root")
            ins = input_tensors[0]
            _check_list(ins, self._size, "scatter's input tensor list on the root")
            for i in ins:
                _same(out, i, "scatter")
                if i.numel() != out.numel():
                    raise ValueError(f"oxccl: scatter: every input needs {out.numel()} elements, got {i.numel()}")
            flat = torch.cat([i.reshape(-1) for i in ins]) if ins else out.new_empty(0)
            s = plan.src(flat, "scatter input")
        elif input_tensors and any(len(x) for x in input_tensors):
            raise ValueError("oxccl: scatter: only the root passes input tensors")
        plan.add(SCATTER, s, d, out.numel(), code, root=root)
        return self._run(plan, getattr(opts, "asyncOp", True), output_tensors)

    def send(self, tensors, dst, tag=0):
        plan = _Plan()
        for t in tensors:
            code = _code(t, "send tensor")
            plan.add(SEND, plan.src(t, "send tensor"), 0, t.numel(), code, root=dst)
        return self._run(plan, True, tensors, p2p=True)

    def recv(self, tensors, src, tag=0):
        plan = _Plan()
        for t in tensors:
            code = _code(t, "recv tensor")
            plan.add(RECV, 0, plan.dst(t, "recv tensor"), t.numel(), code, root=src)
        return self._run(plan, True, tensors, p2p=True)

    def recv_anysource(self, tensors, tag=0):
        raise RuntimeError("oxccl: recv from any source is not supported: name the source rank")

    def barrier(self, opts=None):
        if self._pending:
            self._flush()
        w = self._comm.barrier(async_op=True)
        async_op = getattr(opts, "asyncOp", True) if opts is not None else True
        if not async_op:
            w.wait()
            return _DONE
        return OxcclWork(w, [])

    def abort(self):
        self._comm.abort()

    def shutdown(self):
        self._comm.destroy()

    def get_error(self):
        return self._comm.async_error()


def _create(opts, backend_options=None):
    """The extended-API creator torch calls for each group (``register_backend``)."""
    return OxcclBackend(opts.store, opts.group_rank, opts.group_size, opts.timeout)


def register():
    """Registers the backend ``"oxccl"`` for CPU and CUDA devices (idempotent)."""
    if "OXCCL" not in dist.Backend._plugins:
        dist.Backend.register_backend("oxccl", _create, extended_api=True, devices=["cpu", "cuda"])
