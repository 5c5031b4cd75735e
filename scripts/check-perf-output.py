#!/usr/bin/env python3
"""Checks what one run of a *_perf example wrote: its table (as it reached a file), its -J
JSON and its --plot SVG, against nccl-tests' format and against each other.

    check-perf-output.py NAME MODE TABLE [--json FILE] [--svg FILE] [--rows N] [--ranks N]
                         [--label TEXT]

MODE says how the table reached the file:
  file      redirected stdout (mpirun, oxccl-run): the bytes must be nccl-tests' table
            and nothing else: printable ASCII and newlines, every line a '#' line or a
            data row of nccl-tests' columns;
  log       as `file`, with stderr sent to the same file and OXCCL_DEBUG=INFO: log lines
            are allowed, but only whole (a log line inside a row breaks that row);
  pty       recorded from a pseudo-terminal (`script`) with a launcher in between: the
            terminal's CR before each newline is removed, then as `file`;
  terminal  recorded from a pseudo-terminal with no launcher: progress notes must have
            been shown, and the screen they leave (backspaces and overwrites applied)
            must be the table, with no trace of them.

The JSON must hold the table's rows: the same size, count, type, op and root, and
numbers that print as the table's text (nccl-tests' getFloatStr, re-implemented here);
the SVG must draw each row's busbw at its size, read back through the axes' tick labels.
Exits 1 with every problem found, 0 when all hold.
"""

import json
import math
import re
import sys

TYPES = {"int8", "uint8", "int32", "uint32", "int64", "uint64", "half", "float", "double",
         "bfloat16", "f8e4m3", "f8e5m2"}
OPS = {"sum", "prod", "max", "min", "avg", "mulsum", "none"}

# nccl-tests' row: "%12li  %12li  %8s  %6s  %6s", then per half "  %7s  %6s  %6s" and
# the #wrong column ("  %6g", or "    N/A" when not checked / no in-place form).
HEAD = [("size", 12), ("count", 12), ("type", 8), ("redop", 6), ("root", 6)]
HALF = [("time", 7), ("algbw", 6), ("busbw", 6)]


def fail(problems, msg):
    problems.append(msg)


def parse_row(line):
    """The row's fields as {name: text}, or None when the line is not a data row."""
    fields = {}
    pos = 0
    cols = list(HEAD)
    for p in ("o", "i"):
        cols += [(p + k, w) for k, w in HALF] + [(p + "wrong", 6)]
    for i, (name, width) in enumerate(cols):
        if i > 0:
            if line[pos:pos + 2] != "  ":
                return None
            pos += 2
        if name.endswith("wrong") and line[pos:pos + 5] == "  N/A":
            fields[name] = "N/A"
            pos += 5
            continue
        if len(line) < pos + width:
            return None
        # A number wider than its column pushes the rest right (C's %*s does too).
        while pos + width < len(line) and line[pos + width] != " ":
            width += 1
        value = line[pos:pos + width].lstrip(" ")
        if not value or " " in value:
            return None
        fields[name] = value
        pos += width
    return fields if pos == len(line) else None


def row_values(f):
    """Checks each field's form; returns problems."""
    bad = []
    num = re.compile(r"^-?(\d+(\.\d+)?|\d\.\d+e[+-]\d\d|\d+e[+-]\d\d|nan|inf)$")
    if not f["size"].isdigit() or not f["count"].isdigit():
        bad.append("size and count must be integers")
    if f["type"] not in TYPES:
        bad.append(f"unknown type {f['type']!r}")
    if f["redop"] not in OPS:
        bad.append(f"unknown op {f['redop']!r}")
    if not re.fullmatch(r"-?\d+", f["root"]):
        bad.append(f"root {f['root']!r} is not an integer")
    for p in ("o", "i"):
        for k, _ in HALF:
            v = f[p + k]
            if v != "N/A" and not num.match(v):
                bad.append(f"{k} {v!r} is not a number")
        w = f[p + "wrong"]
        if w != "N/A" and not w.isdigit():
            bad.append(f"#wrong {w!r} is not a count")
    return bad


def render_terminal(raw):
    """The screen left by `raw` on a terminal: CR, BS and overwriting applied; trailing
    blanks (the erased notes' spaces) dropped."""
    lines, cur, col = [], [], 0
    for ch in raw:
        if ch == "\n":
            lines.append("".join(cur).rstrip(" "))
            cur, col = [], 0
        elif ch == "\r":
            col = 0
        elif ch == "\b":
            col = max(0, col - 1)
        else:
            if col < len(cur):
                cur[col] = ch
            else:
                cur.extend(" " * (col - len(cur)))
                cur.append(ch)
            col += 1
    if cur:
        lines.append("".join(cur).rstrip(" "))
    return lines


def float_str(v, width):
    """nccl-tests' getFloatStr as the examples print it: the most decimals (2, 1, 0) that
    fit the column, else %e."""
    for p in (2, 1, 0):
        s = f"{v:>{width}.{p}f}"
        if len(s) <= width:
            return s.strip()
    return ("%.*e" % (1 if width >= 7 else 0, v)).strip()


def check_table(name, mode, raw_bytes, problems):
    """The data rows of the table, each as its fields; problems appended."""
    if mode in ("file", "log"):
        odd = sorted({b for b in raw_bytes if b != 0x0A and not 0x20 <= b < 0x7F})
        if odd:
            fail(problems, f"bytes other than printable ASCII and newlines: {[hex(b) for b in odd]}")
    text = raw_bytes.decode("ascii", errors="replace")
    if mode == "pty":
        text = text.replace("\r\n", "\n")
        odd = sorted({c for c in text if c != "\n" and not " " <= c <= "~"})
        if odd:
            fail(problems, f"characters other than printable ASCII and newlines: {odd}")
    if mode == "terminal":
        if "[row 1/" not in text:
            fail(problems, "no progress note was shown on the terminal (expected without a launcher)")
        lines = render_terminal(text)
        if lines and lines[-1] == "":
            lines.pop()
    else:
        if not text.endswith("\n"):
            fail(problems, "the output does not end with a newline")
        lines = text.split("\n")[:-1]
    rows = []
    log_line = re.compile(r"^[^\s:]+:\d+ oxccl (INFO|WARN) \S")
    for n, line in enumerate(lines, 1):
        if line.startswith("#"):
            if "[row" in line:
                fail(problems, f"line {n}: a progress note: {line!r}")
            continue
        f = parse_row(line)
        if f is None:
            if mode == "log" and log_line.match(line):
                continue
            fail(problems, f"line {n} is neither a comment nor a data row in nccl-tests' columns: {line!r}")
            continue
        for b in row_values(f):
            fail(problems, f"line {n}: {b}: {line!r}")
        rows.append(f)
    comments = [l for l in lines if l.startswith("#")]
    for want in (f"# Collective test starting: {name}", f"# Collective test concluded: {name}"):
        if want not in comments:
            fail(problems, f"no line {want!r}")
    if not any(re.fullmatch(r"# Out of bounds values : 0 OK", l) for l in comments):
        fail(problems, "no line '# Out of bounds values : 0 OK'")
    return rows, comments


def check_json(path, name, rows, comments, problems):
    with open(path) as fh:
        doc = json.load(fh)
    if doc.get("collective") != name:
        fail(problems, f"{path}: collective {doc.get('collective')!r}, expected {name!r}")
    res = doc.get("results", [])
    if len(res) != len(rows):
        fail(problems, f"{path}: {len(res)} results, the table has {len(rows)} rows")
    for i, (r, f) in enumerate(zip(res, rows)):
        where = f"{path}: result {i} (size {f['size']})"
        for key, col, conv in (("size", "size", int), ("count", "count", int), ("type", "type", str),
                               ("redop", "redop", str), ("root", "root", int)):
            if r.get(key) != conv(f[col]):
                fail(problems, f"{where}: {key} {r.get(key)!r}, the table says {f[col]!r}")
        for half, p in (("out_of_place", "o"), ("in_place", "i")):
            m = r.get(half)
            if f[p + "time"] == "N/A":
                if m is not None:
                    fail(problems, f"{where}: {half} is {m}, the table says N/A")
                continue
            if m is None:
                fail(problems, f"{where}: {half} is missing")
                continue
            for key, col, width in (("time", "time", 7), ("alg_bw", "algbw", 6), ("bus_bw", "busbw", 6)):
                v = m.get(key)
                shown = "nan" if v is None else float_str(v, width)
                if shown != f[p + col]:
                    fail(problems, f"{where}: {half}.{key} {v} prints as {shown!r}, the table says {f[p + col]!r}")
            table_wrong = None if f[p + "wrong"] == "N/A" else int(f[p + "wrong"])
            if m.get("nwrong") != table_wrong:
                fail(problems, f"{where}: {half}.nwrong {m.get('nwrong')}, the table says {f[p + 'wrong']}")
    avg = [l for l in comments if l.startswith("# Avg bus bandwidth")]
    bw = doc.get("average_bus_bandwidth", {}).get("bandwidth")
    if not avg or bw is None or avg[0].split(":", 1)[1].split()[0] != "%g" % bw:
        fail(problems, f"{path}: average busbw {bw} does not print as the table's {avg}")
    if doc.get("out_of_bounds", {}).get("count") != 0:
        fail(problems, f"{path}: out_of_bounds {doc.get('out_of_bounds')}")
    return doc


def size_of_label(label):
    m = re.fullmatch(r"(\d+) (B|KiB|MiB|GiB|TiB)", label)
    if not m:
        return None
    return int(m.group(1)) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB"].index(m.group(2))


def fit(pairs):
    """Least-squares line through (x, y) pairs: (slope, intercept)."""
    n = len(pairs)
    mx = sum(p[0] for p in pairs) / n
    my = sum(p[1] for p in pairs) / n
    sxx = sum((p[0] - mx) ** 2 for p in pairs)
    slope = sum((p[0] - mx) * (p[1] - my) for p in pairs) / sxx
    return slope, my - slope * mx


def check_svg(path, doc, name, threads, problems):
    with open(path) as fh:
        svg = fh.read()
    ranks = doc["config"]["nranks"]
    title = f"{name}: busbw, {ranks} rank{'' if ranks == 1 else 's'} ({'threads' if threads else 'processes'})"
    if title not in svg:
        fail(problems, f"{path}: no title {title!r}")
    texts = [(dict(re.findall(r'([\w-]+)="([^"]*)"', a)), t.strip())
             for a, t in re.findall(r"<text([^>]*)>([^<]*)</text>", svg)]
    xticks = [(math.log2(size_of_label(t)), float(a["x"])) for a, t in texts if size_of_label(t)]
    yticks = [(float(t), float(a["y"])) for a, t in texts
              if a.get("text-anchor") == "end" and re.fullmatch(r"\d+(\.\d+)?", t)]
    if len(xticks) < 2 or len(yticks) < 2:
        fail(problems, f"{path}: cannot read the axes ({len(xticks)} size ticks, {len(yticks)} busbw ticks)")
        return
    (ax, bx), (ay, by) = fit(xticks), fit(yticks)  # pixel = a * value + b
    right = max(x for _, x in xticks) + 1
    circles = [dict(re.findall(r'([\w-]+)="([^"]*)"', a)) for a in re.findall(r"<circle([^>]*)/>", svg)]
    circles = [c for c in circles if float(c["cx"]) <= right]
    px_bw = abs(1 / ay)  # busbw per pixel
    for half, filled in (("out_of_place", True), ("in_place", False)):
        want = sorted((r["size"], r[half]["bus_bw"]) for r in doc["results"]
                      if r["size"] > 0 and r.get(half) and r[half].get("bus_bw") is not None)
        got = sorted(((float(c["cx"]) - bx) / ax, (float(c["cy"]) - by) / ay) for c in circles
                     if (c.get("fill", "none") != "none") == filled)
        if len(got) != len(want):
            fail(problems, f"{path}: {len(got)} {half} points drawn, the table has {len(want)} rows with a size")
            continue
        for (size, bw), (lx, y) in zip(want, got):
            if abs(lx - math.log2(size)) > 0.05 or abs(y - bw) > 1.5 * px_bw:
                fail(problems, f"{path}: {half} point of {size} B, {bw:.4g} GB/s is drawn at "
                               f"{2 ** lx:.4g} B, {y:.4g} GB/s")


def main(argv):
    name, mode, table = argv[0], argv[1], argv[2]
    opts = dict(zip(argv[3::2], argv[4::2]))
    problems = []
    with open(table, "rb") as fh:
        raw = fh.read()
    rows, comments = check_table(name, mode, raw, problems)
    if "--rows" in opts and len(rows) != int(opts["--rows"]):
        fail(problems, f"{len(rows)} data rows, expected {opts['--rows']}")
    doc = None
    if "--json" in opts:
        doc = check_json(opts["--json"], name, rows, comments, problems)
        if "--ranks" in opts and doc["config"]["nranks"] != int(opts["--ranks"]):
            fail(problems, f"{doc['config']['nranks']} ranks in the JSON, expected {opts['--ranks']}")
    if "--svg" in opts and doc is not None:
        check_svg(opts["--svg"], doc, name, doc["config"]["ranks_are"] == "threads", problems)
    label = opts.get("--label", mode)
    if problems:
        print(f"FAILED: {name} ({label}, {table}):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"{name} ({label}): {len(rows)} rows in nccl-tests' columns"
          + (", JSON agrees" if "--json" in opts else "") + (", plot agrees" if "--svg" in opts else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
