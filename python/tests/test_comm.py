"""oxccl.Comm over numpy buffers: real rank processes (2, 3 and 4), each job with a
deadline; results against hand-computed references; faults."""

import pytest

from harness import run_job


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_op_and_dtype_against_a_hand_reference(n):
    res = run_job("plain_ops", n, deadline=120)
    assert all(r["checked"] > 100 for r in res)
    errs = res[0]["errors"]
    assert "recv buffer has 4 elements, 3 expected" in errs[0]
    assert "format \"h\"" in errs[1]
    assert "not writable" in errs[2] or "read-only" in errs[2]
    assert "contiguous" in errs[3]
    assert "peer" in errs[5] and "out of range" in errs[5]
    assert "unknown op" in errs[6]
    terrs = res[0]["torch_errors"]
    if terrs is None:
        print("skipped: torch tensors through oxccl.Comm: torch is not installed")
    else:
        assert "not contiguous" in terrs[0]
        assert "gradient" in terrs[1]
        assert "no oxccl data type" in terrs[2]


def test_mismatched_sizes_raise_on_every_rank():
    res = run_job("plain_mismatch", 2, deadline=60)
    for rank, r in enumerate(res):
        assert r["type"] == "InvalidUsage"
        assert "count=1000" in r["error"] and "count=1001" in r["error"], r["error"]
        # The exception's fields: this rank, the other, the first call; NCCL's
        # ncclInvalidUsage is 5.
        f = r["fields"]
        assert (f["rank"], f["peer"], f["call"], f["op"], f["nccl_code"]) == (rank, 1 - rank, "all_reduce", 1, 5), f


def test_a_killed_rank_is_named_by_the_others():
    res = run_job("plain_killed", 3, deadline=60, expect_fail={2})
    for rank, r in enumerate(res[:2]):
        assert "rank 2" in r["error"], r["error"]
        assert r["seconds"] < 10 and r["broken"]
        # The fields: who saw it, who died (its host and pid), in the all_reduce after
        # the barrier; NCCL's ncclRemoteError is 6.
        f = r["fields"]
        assert (f["rank"], f["peer"], f["call"], f["op"], f["nccl_code"]) == (rank, 2, "all_reduce", 2, 6), f
        assert isinstance(f["host"], str) and isinstance(f["pid"], int), f


def test_abort_ends_a_blocked_call_and_reaches_the_peer():
    res = run_job("plain_abort", 2, deadline=60)
    assert res[0]["seconds"] < 5 and "abort" in res[0]["error"].lower()
    assert "Aborted" in res[0]["async"] or "abort" in res[0]["async"].lower()
    assert "rank 0" in res[1]["error"], res[1]["error"]
