"""The ``torch.distributed`` backend ``"oxccl"``.

``import oxccl.torch`` registers it (installing the package also lets torch find it by
itself, through the ``torch.distributed.backends`` entry point), then::

    dist.init_process_group("oxccl")                       # CPU, and CUDA tensors
    dist.init_process_group("cpu:oxccl,cuda:nccl")         # oxccl for CPU tensors only
    dist.new_group([0, 1], backend="oxccl")

The backend is a Python subclass of torch's C++ ``Backend`` class, so DDP, FSDP2,
``batch_isend_irecv`` and every collective reach it. Rank 0 of each group creates oxccl's
unique id and hands it to the others through the ``Store`` torch gives the backend; the
group's ``timeout`` becomes the communicator's. Operations work on the tensors' own
memory; ``async_op=True`` runs them on oxccl's progress thread, so DDP's gradient
buckets are reduced while back-propagation goes on. Errors (a dead rank, a mismatched
call, a timeout, an abort) raise from the call, from ``Work.wait()`` and from the
``Future`` with oxccl's message.
"""

from __future__ import annotations

from ._backend import OxcclBackend, register
from ._work import OxcclWork

__all__ = ["OxcclBackend", "OxcclWork", "register"]

register()
