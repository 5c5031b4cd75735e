"""Runs a job of N rank processes with a deadline.

``run_job(case, n)`` starts ``python -m jobs CASE RANK N PORT`` N times (from this
folder), waits at most ``deadline`` seconds, kills every rank on a hang and fails with
their output, and returns each rank's result: the JSON object its last output line
holds (``jobs.emit``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(case, n, deadline=90, expect_fail=(), env=None):
    """Runs `case` on `n` ranks; ranks in `expect_fail` may exit non-zero."""
    port = free_port()
    e = dict(os.environ)
    e.update(env or {})
    e["PYTHONPATH"] = HERE + os.pathsep + e.get("PYTHONPATH", "")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jobs", case, str(r), str(n), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=e,
            cwd=HERE,
            text=True,
        )
        for r in range(n)
    ]
    end = time.monotonic() + deadline
    outs = [None] * n
    hung = False
    for r, p in enumerate(procs):
        try:
            outs[r], _ = p.communicate(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung = True
            break
    if hung:
        for p in procs:
            p.kill()
        for r, p in enumerate(procs):
            o, _ = p.communicate()
            outs[r] = (outs[r] or "") + (o or "")
        raise AssertionError(f"{case} on {n} ranks did not end within {deadline} s (a hang?):\n" + _show(outs))
    results = []
    for r, p in enumerate(procs):
        if p.returncode != 0 and r not in expect_fail:
            raise AssertionError(f"{case}: rank {r} exited with {p.returncode}:\n" + _show(outs))
        last = [line for line in (outs[r] or "").splitlines() if line.startswith("RESULT ")]
        results.append(json.loads(last[-1][7:]) if last else None)
    return results


def _show(outs):
    return "\n".join(f"--- rank {r}:\n{(o or '')[-3000:]}" for r, o in enumerate(outs))
