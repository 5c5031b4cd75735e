#!/usr/bin/env python3
"""The init model: how long oxccl's init takes, and what one rank holds, at 1k, 10k and
100k ranks, from costs measured on this host.

    scripts/init-model.py WORKDIR [--latency-us 10] [--gbps 25] [--cores 2]

WORKDIR (written by scripts/scale.sh) holds:
  info.N     the OXCCL_DEBUG=INFO output of an N-rank TCP job: each rank's init wall and
             CPU time, and the root's CPU time for the N arrivals;
  work       `examples/init_model` output: one rank's share of the init work that grows
             with the job (decoding every rank's blocks, hosts, ring, peers' addresses),
             timed on synthetic peers up to 100k ranks, with the heap it keeps;
  tcp        per-size job wall times and peak RSS (for the memory base).

The model (every rank on its own core, as in a cluster; L the one-way latency between
hosts, B the bandwidth of a rank's link to the bootstrap network, lg = ceil(log2 n)):

  root      n * c_root                   the root answers the n arrivals one by one
  partners  lg * 2L                      connect to rank + 2^k for each k (a round trip each)
  gathers   3 * lg * L                   two Bruck all-gathers and a barrier, one message
                                         each way per round
  bytes     (n - 1) * (s_info + s_addr) / B   every rank's two blocks reach every rank
  cpu       base + c_round * lg + work(n)    per-rank CPU: fixed costs, per round, and
                                         the work that grows with n (measured at n)

The CPU terms are calibrated here: c_root from the root's CPU per arrival, base and
c_round by least squares on the ranks' measured init CPU minus work(n). The check: the
same model with this host's constraint (n ranks share `cores` cores, so the CPU terms
of all ranks add up and the ranks start over the launcher's spread) against the
measured init wall time at 8..256 ranks.

Memory per rank: the RSS at 8 ranks (the fixed part: code, buffers of the links in use)
plus n times the heap kept per peer (measured by examples/init_model at n).
"""
import argparse
import math
import re
import statistics as st
import sys


def parse_info(path):
    """(median init wall ms, max init wall ms, median init cpu ms, root cpu ms, spread ms)."""
    walls, cpus = [], []
    root_cpu = spread = None
    for line in open(path, errors="replace"):
        m = re.search(r"init ([0-9.]+) ms \(cpu ([0-9.]+) ms\)", line)
        if m:
            walls.append(float(m.group(1)))
            cpus.append(float(m.group(2)))
        m = re.search(r"arrived over ([0-9.]+) ms.*root cpu ([0-9.]+) ms", line)
        if m:
            spread, root_cpu = float(m.group(1)), float(m.group(2))
    if not walls or root_cpu is None:
        return None
    return st.median(walls), max(walls), st.median(cpus), root_cpu, spread


def parse_work(path):
    work = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        n, cpu, kept, info, addr = line.split()
        work[int(n)] = (float(cpu), int(kept), int(info), int(addr))
    return work


def interp(work, n):
    """work(n), interpolated linearly between the measured sizes."""
    ns = sorted(work)
    if n in work:
        return work[n]
    lo = max([k for k in ns if k < n], default=ns[0])
    hi = min([k for k in ns if k > n], default=ns[-1])
    if lo == hi:
        return work[lo]
    f = (n - lo) / (hi - lo)
    return tuple(a + f * (b - a) for a, b in zip(work[lo], work[hi]))


def lg(n):
    return max(1, math.ceil(math.log2(n)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("--latency-us", type=float, default=10.0)
    ap.add_argument("--gbps", type=float, default=25.0)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--sizes", default="8 16 32 64 128 256")
    a = ap.parse_args()

    work = parse_work(f"{a.work}/work")
    meas = {}
    for n in map(int, a.sizes.split()):
        try:
            r = parse_info(f"{a.work}/info.{n}")
        except FileNotFoundError:
            r = None
        if r:
            meas[n] = r
    if len(meas) < 3:
        print("init model: fewer than 3 measured sizes; nothing to fit", file=sys.stderr)
        return 1
    rss8 = None
    try:
        peaks = {}
        for line in open(f"{a.work}/tcp"):
            p = line.split()
            if p[1] != "fail":
                peaks.setdefault(int(p[0]), []).append(float(p[2]))
        rss8 = st.median(peaks[min(peaks)]) * 1024 if peaks else None
    except (FileNotFoundError, KeyError):
        pass

    # Calibration.
    c_root = st.median(r[3] / n for n, r in meas.items())  # ms per arrival
    xs = [lg(n) for n in meas]
    ys = [r[2] - interp(work, n)[0] for n, r in meas.items()]
    mx, my = st.mean(xs), st.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    c_round = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    c_round = max(c_round, 0.0)
    base = max(my - c_round * mx, 0.0)

    def cpu(n):
        return base + c_round * lg(n) + interp(work, n)[0]

    out = []
    out.append("### Init model")
    out.append("")
    out.append(
        f"Calibrated on this host: the root spends **{c_root * 1e3:.0f} µs of CPU per arriving rank**; "
        f"a rank's init CPU is {base:.2f} ms + {c_round * 1e3:.0f} µs per round (ceil(log2 n) rounds) + the work "
        f"that grows with n, measured on synthetic peers ({interp(work, 1024)[0]:.2f} ms at 1k ranks, "
        f"{interp(work, 100000)[0]:.0f} ms at 100k: {interp(work, 100000)[0] / 1e5 * 1e3:.2f} µs per peer)."
    )
    out.append("")
    out.append("Check against this host (n ranks on "
               f"{a.cores} cores: every rank's CPU and the root's add up; ranks arrive over the launcher's spread):")
    out.append("")
    out.append("| ranks | rank CPU measured ms | model ms | root CPU ms | arrival spread ms | init wall max ms | model ms | model / measured |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    errs = []
    for n, (wmed, wmax, cmed, rcpu, spread) in sorted(meas.items()):
        host = spread + (n * cpu(n) + n * c_root) / a.cores
        errs.append(host / wmax)
        out.append(f"| {n} | {cmed:.2f} | {cpu(n):.2f} | {rcpu:.1f} | {spread:.0f} | {wmax:.0f} | {host:.0f} | {host / wmax:.2f} |")
    out.append("")
    out.append(
        f"Projection for a cluster (one rank per core; L = {a.latency_us:g} µs one way, "
        f"B = {a.gbps:g} Gb/s per rank on the bootstrap network; blocks of "
        f"{interp(work, 8)[2]:.0f} + {interp(work, 8)[3]:.0f} bytes per rank):"
    )
    out.append("")
    out.append("| ranks | root s | partners + rounds ms | bytes ms | rank CPU ms | **init s** | kept per peer B | **memory per rank MiB** |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    L = a.latency_us * 1e-3  # ms
    B = a.gbps * 1e9 / 8 / 1e3  # bytes per ms
    for n in (1024, 10_000, 100_000):
        _, kept, s_info, s_addr = interp(work, n)
        root = n * c_root
        rounds = lg(n) * 2 * L + 3 * lg(n) * L
        nbytes = (n - 1) * (s_info + s_addr) / B
        total = root + rounds + nbytes + cpu(n)
        mem = ((rss8 or 0) + kept) / 2**20
        out.append(f"| {n:,} | {root / 1e3:.2f} | {rounds:.2f} | {nbytes:.1f} | {cpu(n):.1f} | **{total / 1e3:.2f}** | {kept / n:.0f} | **{mem:.1f}** |")
    out.append("")
    out.append(
        "The root's serial answer dominates past a few thousand ranks (it is linear in n with "
        f"{c_root * 1e3:.0f} µs per rank here); everything else grows as log n or, for the bytes and "
        "the per-rank decoding, linearly with a small constant. Several roots, each answering "
        "a slice of the ranks (NCCL's `ncclCommInitRankScalable`), divide the first term."
    )
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
