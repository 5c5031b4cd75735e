"""The torch.distributed backend "oxccl": real rank processes, each job with a deadline,
against hand references and Gloo in the same job; DDP and FSDP2 parity; faults."""

import pytest

torch = pytest.importorskip("torch", reason="oxccl.torch tests need torch (scripts/test.sh installs it)")

from harness import run_job  # noqa: E402


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_collective_and_dtype(n):
    res = run_job("torch_ops", n, deadline=150)
    assert all(r["checked"] > 100 for r in res)
    errs = res[0]["errors"]
    assert "torch.int16" in errs[0]
    assert "expected" in errs[1]
    assert "not supported" in errs[2]
    if n == 2:
        assert all(r["same_as_gloo"] for r in res)


def test_mixed_cpu_oxccl_cuda_nccl():
    res = run_job("torch_mixed", 2, deadline=60)
    assert [r["sum"] for r in res] == [3.0, 3.0]
    assert res[0]["backend"] == "OxcclBackend"


def test_cuda_tensors_on_the_device_path():
    if not torch.cuda.is_available():
        print("skipped: test_cuda_tensors_on_the_device_path: no CUDA device here (scripts/gpu-check.sh runs it on a GPU)")
        pytest.skip("no CUDA device here (scripts/gpu-check.sh runs it on a GPU)")
    res = run_job("torch_cuda", 2, deadline=120)
    assert all(r["sum"] == 3.0 for r in res)


@pytest.mark.parametrize("n", [2, 3])
def test_ddp_matches_gloo(n):
    res = run_job("train_ddp", n, deadline=150)
    if n == 2:
        assert all(r["default"] == 0.0 and r["hook"] == 0.0 for r in res)


@pytest.mark.parametrize("n", [2, 3])
def test_fsdp2_matches_gloo(n):
    res = run_job("train_fsdp", n, deadline=150)
    if n == 2:
        assert all(r["diff"] == 0.0 for r in res)


def test_mismatched_sizes_raise_instead_of_aborting():
    res = run_job("torch_mismatch", 2, deadline=60)
    for r in res:
        assert r["type"] == "InvalidUsage" and "count=1000" in r["error"] and "count=1001" in r["error"]


def test_a_killed_rank_reaches_wait_and_the_future():
    res = run_job("torch_killed", 3, deadline=60, expect_fail={2})
    for r in res[:2]:
        assert "rank 2" in r["error"] and "rank 2" in r["future"], r
        assert r["seconds"] < 10


def test_an_aborted_communicator_raises():
    res = run_job("torch_abort", 2, deadline=60)
    assert res[0]["type"] == "Aborted"
    assert "rank 0" in res[1]["error"]


def test_the_group_timeout_is_the_communicators():
    res = run_job("torch_timeout", 2, deadline=60, expect_fail={1})
    assert "timeout" in res[0]["error"] and 2.5 < res[0]["seconds"] < 8
    # The exception's fields: the stalled rank, and about the group's 3 s.
    assert res[0]["waiting_for"] == [1] and 2.5 < res[0]["waited"] < 8, res[0]
