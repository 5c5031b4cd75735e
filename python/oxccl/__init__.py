"""oxccl: collective communication (all-reduce, broadcast, all-gather, ...) for Python.

A communicator (:class:`Comm`) runs collectives and send/recv between ranks (processes
of one host over shared memory, or of several hosts over TCP or InfiniBand) on any
contiguous buffer: objects with the buffer protocol (numpy arrays, bytearray,
memoryview) or DLPack (torch tensors, cupy, jax), without copying. Calls release the GIL
while they wait; errors raise :class:`OxcclError` subclasses whose message is oxccl's
(which rank, which call, why).

``import oxccl.torch`` registers the ``torch.distributed`` backend ``"oxccl"``.

Example, under ``torchrun``, ``mpirun`` or ``oxccl-run``::

    import numpy as np, oxccl
    comm = oxccl.Comm.from_env()
    x = np.full(1024, comm.rank, dtype=np.float32)
    comm.all_reduce(x)            # in place: every element is 0 + 1 + ... + (size-1)
"""

from ._oxccl import (
    UNIQUE_ID_BYTES,
    Aborted,
    Comm,
    CommSystemError,
    InternalError,
    InvalidArgument,
    InvalidUsage,
    OxcclError,
    PreMulSum,
    RemoteError,
    Timeout,
    UniqueId,
    Work,
    __version__,
)

#: Reduction ops, by the names :class:`Comm` accepts (``PreMulSum(s)`` is the sixth).
SUM = "sum"
PROD = "prod"
MAX = "max"
MIN = "min"
AVG = "avg"

__all__ = [
    "AVG",
    "Aborted",
    "Comm",
    "CommSystemError",
    "InternalError",
    "InvalidArgument",
    "InvalidUsage",
    "MAX",
    "MIN",
    "OxcclError",
    "PROD",
    "PreMulSum",
    "RemoteError",
    "SUM",
    "Timeout",
    "UNIQUE_ID_BYTES",
    "UniqueId",
    "Work",
    "__version__",
]
