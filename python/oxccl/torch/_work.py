"""The ``Work`` objects the oxccl backend returns to torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _unwrap(fut):
    exc, outputs = fut.value()
    if exc is not None:
        raise exc
    return outputs


class OxcclWork(dist._Work):
    """An oxccl operation as torch sees it.

    ``wait()`` blocks until the operation has completed (with the GIL released) and
    raises oxccl's error if it failed; ``get_future()`` returns a ``torch.futures.Future``
    completed with the output tensors, or with the error, when the operation completes.
    A send's or receive's work is issued with the other sends and receives waiting in
    its backend when it is first waited on or polled (``flush``).
    """

    def __init__(self, native, outputs, flush=None):
        super().__init__()
        # The native oxccl.Work, or None when complete from the start (a blocking call,
        # or device work ordered on the current stream).
        self._native = native
        self._outputs = outputs
        self._future = None
        # Issues the group this work belongs to (sends and receives not issued yet).
        self._flush = flush
        self._error = None

    def _bind(self, native):
        self._native = native
        self._flush = None
        if self._future is not None:
            self._arm(self._future)

    def _fail(self, exc):
        self._error = exc
        self._flush = None
        if self._future is not None:
            self._future.set_result((exc, None))

    def _issue(self):
        if self._flush is not None:
            self._flush()
        if self._error is not None:
            raise self._error

    def wait(self, timeout=None):
        self._issue()
        native = self._native
        if native is not None:
            if timeout is None or (hasattr(timeout, "total_seconds") and timeout.total_seconds() <= 0):
                native.wait()
            else:
                secs = timeout.total_seconds() if hasattr(timeout, "total_seconds") else timeout / 1000.0
                if not native.wait(secs):
                    raise RuntimeError(f"oxccl: the operation did not complete within {secs:.1f} s (work.wait timeout)")
        return True

    def is_completed(self):
        self._issue()
        return self._native is None or self._native.is_completed()

    def is_success(self):
        return self.is_completed() and self.exception() is None

    def exception(self):
        if self._error is not None:
            return self._error
        if self._native is None:
            return None
        return self._native.exception()

    def result(self):
        self.wait()
        return self._outputs

    def source_rank(self):
        raise RuntimeError("oxccl: source_rank is only defined for recv from any source, which oxccl does not offer")

    def synchronize(self):
        self.wait()

    def _arm(self, fut):
        outputs = self._outputs

        def done(exc):
            fut.set_result((exc, outputs))

        if self._native is None:
            done(None)
        else:
            self._native.on_complete(done)

    def get_future(self):
        # The future torch gets is the `then` of one completed with (error, outputs):
        # an error raised in a callback is recorded in the C++ future itself, so it
        # reaches waiters in C++ (DDP's reducer) and in Python alike, whereas
        # Future.set_exception only marks the Python wrapper at hand.
        if self._future is None:
            self._future = torch.futures.Future()
            self._result = self._future.then(_unwrap)
            if self._error is not None:
                self._future.set_result((self._error, None))
            elif self._flush is not None:
                self._flush()  # arms the future through _bind or _fail
            else:
                self._arm(self._future)
        return self._result


class DoneWork(dist._Work):
    """A work that completed before it was returned (blocking calls: torch waits on it
    only when ``async_op`` was false, so one object serves every such call)."""

    def wait(self, timeout=None):
        return True

    def is_completed(self):
        return True

    def is_success(self):
        return True

    def exception(self):
        return None

    def get_future(self):
        fut = torch.futures.Future()
        fut.set_result(None)
        return fut


def done_work():
    """The work every blocking call returns (torch waits on it only when ``async_op`` was
    false, so one object serves every such call): torch's own C++ work on a completed
    future where torch offers one, because torch's ``wait()`` on it stays in C++, whereas
    a Python ``Work`` costs a call back into Python; else a ``DoneWork``."""
    make = getattr(torch._C._distributed_c10d, "_create_work_from_future", None)
    if make is None:
        return DoneWork()
    fut = torch.futures.Future()
    fut.set_result(None)
    return make(fut)
