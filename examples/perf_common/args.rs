//! The command line: nccl-tests' flags (`-b -e -i -f -n -w -c -o -d -r -z -a -t -T -u
//! -N -J -h` and their long forms) and ours (`--plot`, `--plot-peer`, `--progress`) into
//! [`Opts`], with a message for every bad one, and the sizes a run sweeps ([`sizes`]).

use oxccl::DataType;

use super::check::OpKind;

/// Parsed flags.
#[derive(Clone, Debug)]
pub struct Opts {
    /// `-t`: ranks, as threads of this process (1 when each process is a rank).
    pub nthreads: usize,
    /// `-b`.
    pub min_bytes: usize,
    /// `-e`.
    pub max_bytes: usize,
    /// `-i`.
    pub step_bytes: usize,
    /// `-f`.
    pub step_factor: usize,
    /// `-n`.
    pub iters: usize,
    /// `-w`.
    pub warmup: usize,
    /// `-c`: checks per measurement.
    pub check: usize,
    /// `-o`: `None` is `all`.
    pub op: Option<OpKind>,
    /// `-d`: `None` is `all`.
    pub dtype: Option<DataType>,
    /// `-r`: `None` (`-1` or `all`) is every rank in turn, as nccl-tests' `-r -1`.
    pub root: Option<usize>,
    /// `-z`: 1 adds a barrier after every timed call, inside the clock (nccl-tests'
    /// blocking mode: wait for completion, then a barrier). oxccl's calls always block
    /// (they return when this rank's part is done), so the "wait for completion" half is
    /// there in both modes.
    pub blocking: u32,
    /// `-a`: 0 rank 0, 1 average, 2 min, 3 max.
    pub average: u32,
    /// `-T`: seconds (0: no timeout); `None`: oxccl's default (or `OXCCL_TIMEOUT`).
    pub timeout: Option<f64>,
    /// `-u`: elements by which buffers are misaligned.
    pub unalign: usize,
    /// `-N`: times the size sweep runs (0: forever).
    pub cycles: usize,
    /// `-J`: the JSON results file asked for.
    pub json: Option<String>,
    /// `--plot`: the SVG file to draw busbw into.
    pub plot: Option<String>,
    /// `--plot-peer`: other results to draw beside ours, each `file[:label]`.
    pub plot_peers: Vec<String>,
    /// `--progress`: show (1) or never show (0) progress notes; `None`: only where a
    /// person watches ([`super::output::shows_progress`]).
    pub progress: Option<bool>,
}

/// Why the command line does not start a run.
#[derive(Debug)]
pub(super) enum CliError {
    Help,
    Bad(String),
}

pub(super) fn usage(prog: &str, default_ranks: usize) -> String {
    format!(
        "USAGE: {prog} \n\t\
[-t,--nthreads <num threads>] ranks, as threads of this process (default: {default_ranks}) \n\t\
[-g,--ngpus <gpus per thread>] (only 1) \n\t\
[-b,--minbytes <min size in bytes>] \n\t\
[-e,--maxbytes <max size in bytes>] \n\t\
[-i,--stepbytes <increment size>] \n\t\
[-f,--stepfactor <increment factor>] \n\t\
[-n,--iters <iteration count>] \n\t\
[-m,--agg_iters <aggregated iteration count>] (only 1) \n\t\
[-w,--warmup_iters <warmup iteration count>] \n\t\
[-N,--run_cycles <cycle count> run & print each cycle (default: 1; 0=infinite)] \n\t\
[-c,--check <check iteration count>] \n\t\
[-o,--op <sum/prod/min/max/avg/mulsum/all>] \n\t\
[-d,--datatype <int8/uint8/int32/uint32/int64/uint64/half/float/double/bfloat16/f8e4m3/f8e5m2/all>] \n\t\
[-r,--root <root> (broadcast, reduce; default: 0; -1 or all: every rank in turn)] \n\t\
[-z,--blocking <0/1> 1: a barrier after each call, timed (oxccl calls always block until this rank \
is done, so 0 and 1 differ only by the barrier; default: 0)] \n\t\
[-T,--timeout <time in seconds> (0: none; default: OXCCL_TIMEOUT or 600)] \n\t\
[-a,--average <0/1/2/3> report average iteration time <0=RANK0/1=AVG/2=MIN/3=MAX>] \n\t\
[-u,--unalign <index of first element> Misalign source and destination buffers (default: 0)] \n\t\
[-J,--output_file <file.json> write the results as JSON (rank 0; an existing file is kept and \
file.0, file.1, ... used instead)] \n\t\
[--plot <file.svg> draw busbw against size into an SVG file (rank 0, at the end)] \n\t\
[--plot-peer <file[:label]> add other results to the plot: CSV with size,busbw or \
size,time_us,algbw,busbw columns (header optional), or JSON from -J; may be repeated] \n\t\
[--progress <0/1> 1: a note after the row being measured, erased when it ends (default: only when \
standard output is a terminal and no launcher started this process)] \n\t\
[-h,--help]\n\
Sizes take K, M, G suffixes (powers of 1024).\n\
Under a launcher (oxccl-run, mpirun, srun, torchrun), each process is one rank: use -t 1.\n"
    )
}

/// nccl-tests' size syntax: a number, optionally followed by K, M or G (binary).
pub(super) fn parse_size(v: &str) -> Option<usize> {
    let v = v.trim();
    let (num, mul) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1u64 << 10),
        'm' | 'M' => (&v[..v.len() - 1], 1 << 20),
        'g' | 'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    let x: f64 = num.trim().parse().ok()?;
    if !x.is_finite() || x < 0.0 {
        return None;
    }
    let b = x * mul as f64;
    (b < 1e18).then_some(b as usize)
}

/// An integer, decimal or 0x hexadecimal (strtol with base 0, without its leniency).
pub(super) fn parse_int(v: &str) -> Option<i64> {
    let v = v.trim();
    let (neg, d) = match v.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, v.strip_prefix('+').unwrap_or(v)),
    };
    let x = if let Some(h) = d.strip_prefix("0x").or_else(|| d.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()?
    } else {
        d.parse::<i64>().ok()?
    };
    Some(if neg { -x } else { x })
}

/// The options: short letter (if any) and long name.
pub(super) const FLAGS: &[(Option<char>, &str)] = &[
    (Some('t'), "nthreads"),
    (Some('g'), "ngpus"),
    (Some('b'), "minbytes"),
    (Some('e'), "maxbytes"),
    (Some('i'), "stepbytes"),
    (Some('f'), "stepfactor"),
    (Some('n'), "iters"),
    (Some('m'), "agg_iters"),
    (Some('w'), "warmup_iters"),
    (Some('N'), "run_cycles"),
    (Some('c'), "check"),
    (Some('o'), "op"),
    (Some('d'), "datatype"),
    (Some('r'), "root"),
    (Some('z'), "blocking"),
    (Some('T'), "timeout"),
    (Some('a'), "average"),
    (Some('u'), "unalign"),
    (Some('J'), "output_file"),
    (None, "plot"),
    (None, "plot-peer"),
    (None, "progress"),
];

pub(super) fn parse_args(args: &[String], default_ranks: usize) -> Result<Opts, CliError> {
    let mut o = Opts {
        nthreads: default_ranks,
        min_bytes: 32 << 20,
        max_bytes: 32 << 20,
        step_bytes: 1 << 20,
        step_factor: 1,
        iters: 20,
        warmup: 5,
        check: 1,
        op: Some(OpKind::Sum),
        dtype: Some(DataType::Float32),
        root: Some(0),
        blocking: 0,
        average: 1,
        timeout: None,
        unalign: 0,
        cycles: 1,
        json: None,
        plot: None,
        plot_peers: Vec::new(),
        progress: None,
    };
    let bad = |m: String| CliError::Bad(m);
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let (name, inline): (&'static str, Option<String>) = if let Some(long) = a.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            if name == "help" {
                return Err(CliError::Help);
            }
            match FLAGS.iter().find(|(_, l)| *l == name) {
                Some((_, l)) => (*l, val),
                None => return Err(bad(format!("invalid option '--{name}'"))),
            }
        } else if let Some(short) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            let c = short.chars().next().unwrap();
            if c == 'h' {
                return Err(CliError::Help);
            }
            let Some((_, l)) = FLAGS.iter().find(|(f, _)| *f == Some(c)) else {
                return Err(bad(format!("invalid option '-{c}'")));
            };
            let rest = &short[c.len_utf8()..];
            (*l, (!rest.is_empty()).then(|| rest.to_string()))
        } else {
            return Err(bad(format!("unexpected argument '{a}'")));
        };
        let shown = match FLAGS.iter().find(|(_, l)| *l == name) {
            Some((Some(c), _)) => format!("-{c}"),
            _ => format!("--{name}"),
        };
        let val = match inline {
            Some(v) => v,
            None if i < args.len() => {
                i += 1;
                args[i - 1].clone()
            }
            None => return Err(bad(format!("option '{shown}' needs a value"))),
        };
        let int = |what: &str, lo: i64, hi: i64| -> Result<i64, CliError> {
            match parse_int(&val) {
                Some(x) if (lo..=hi).contains(&x) => Ok(x),
                _ => Err(bad(format!("invalid value '{val}' for '{what}' (expected an integer in {lo}..={hi})"))),
            }
        };
        let size = |what: &str| -> Result<usize, CliError> {
            parse_size(&val).ok_or_else(|| bad(format!("invalid size specified for '{what}': '{val}'")))
        };
        let path = |what: &str| -> Result<String, CliError> {
            if val.is_empty() { Err(bad(format!("'{what}' needs a file name"))) } else { Ok(val.clone()) }
        };
        match name {
            "nthreads" => o.nthreads = int(name, 1, 4096)? as usize,
            "ngpus" => {
                int(name, 1, 1)?;
            }
            "minbytes" => o.min_bytes = size(name)?,
            "maxbytes" => o.max_bytes = size(name)?,
            "stepbytes" => o.step_bytes = size(name)?,
            "stepfactor" => o.step_factor = int(name, 1, 1 << 30)? as usize,
            "iters" => o.iters = int(name, 1, 1 << 40)? as usize,
            "agg_iters" => {
                int(name, 1, 1)?;
            }
            "warmup_iters" => o.warmup = int(name, 0, 1 << 40)? as usize,
            "run_cycles" => o.cycles = int(name, 0, 1 << 40)? as usize,
            "check" => o.check = int(name, 0, 1 << 20)? as usize,
            "op" => {
                o.op = match val.as_str() {
                    "all" => None,
                    s => Some(OpKind::parse(s).ok_or_else(|| {
                        bad(format!("invalid op '{s}' (expected sum, prod, max, min, avg, mulsum or all)"))
                    })?),
                }
            }
            "datatype" => {
                o.dtype = match val.as_str() {
                    "all" => None,
                    s => Some(s.parse::<DataType>().map_err(bad)?),
                }
            }
            "root" => {
                o.root = match val.trim() {
                    "all" | "-1" => None,
                    _ => Some(int("root (or -1 or all: every rank)", 0, i32::MAX as i64)? as usize),
                }
            }
            "blocking" => o.blocking = int(name, 0, 1)? as u32,
            "timeout" => {
                let t: f64 = val
                    .parse()
                    .ok()
                    .filter(|t: &f64| t.is_finite() && *t >= 0.0)
                    .ok_or_else(|| bad(format!("invalid timeout '{val}' (seconds)")))?;
                o.timeout = Some(t);
            }
            "average" => o.average = int(name, 0, 3)? as u32,
            "unalign" => o.unalign = int(name, 0, 1 << 20)? as usize,
            "output_file" => o.json = Some(path(name)?),
            "plot" => o.plot = Some(path(name)?),
            "plot-peer" => o.plot_peers.push(path(name)?),
            "progress" => o.progress = Some(int(name, 0, 1)? == 1),
            _ => unreachable!("option {name} has no handler"),
        }
    }
    if o.min_bytes > o.max_bytes {
        return Err(bad(format!("invalid sizes for 'minbytes' and 'maxbytes': {} > {}", o.min_bytes, o.max_bytes)));
    }
    if o.step_factor <= 1 && o.step_bytes == 0 && o.min_bytes < o.max_bytes {
        return Err(bad("stepbytes must be positive when stepfactor is 1 (it would never reach maxbytes)".into()));
    }
    if !o.plot_peers.is_empty() && o.plot.is_none() {
        return Err(bad("--plot-peer needs --plot <file.svg>".into()));
    }
    Ok(o)
}

/// The sizes swept, in bytes (before rounding to whole elements), as nccl-tests steps:
/// by factor when it is above 1, else by increment.
pub(super) fn sizes(o: &Opts) -> Vec<usize> {
    let mut v = Vec::new();
    let mut s = o.min_bytes;
    while s <= o.max_bytes {
        v.push(s);
        // After 0 comes 1 with a factor (0 x factor would repeat 0 forever).
        let next = if o.step_factor > 1 {
            s.checked_mul(o.step_factor).map(|x| x.max(1))
        } else {
            s.checked_add(o.step_bytes)
        };
        match next {
            Some(n) if n > s => s = n,
            _ => break,
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn parse(s: &str) -> Result<Opts, CliError> {
        parse_args(&args(s), 2)
    }

    fn bad(s: &str) -> String {
        match parse(s) {
            Err(CliError::Bad(m)) => m,
            other => panic!("{s:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn the_scripts_command_line_parses() {
        let o = parse("-b 8 -e 256K -f 8 -t 3 -d all -o all -n 2 -w 1 -c 1").unwrap();
        assert_eq!((o.min_bytes, o.max_bytes, o.step_factor, o.nthreads), (8, 256 << 10, 8, 3));
        assert_eq!((o.dtype, o.op, o.iters, o.warmup, o.check), (None, None, 2, 1, 1));
    }

    #[test]
    fn defaults_and_long_forms() {
        let o = parse("").unwrap();
        assert_eq!((o.nthreads, o.root, o.blocking, o.average, o.cycles), (2, Some(0), 0, 1, 1));
        assert_eq!((o.json.as_deref(), o.plot.as_deref()), (None, None));
        let o = parse("--minbytes=1K --maxbytes 2M --stepbytes 512 --stepfactor 1 --root all --blocking 1").unwrap();
        assert_eq!((o.min_bytes, o.max_bytes, o.step_bytes, o.step_factor), (1024, 2 << 20, 512, 1));
        assert_eq!((o.root, o.blocking), (None, 1));
        let o =
            parse("-r -1 -a 3 -T 2.5 -z0 -J out.json --plot p.svg --plot-peer a.csv:MPI --plot-peer b.json").unwrap();
        assert_eq!((o.root, o.average, o.timeout, o.blocking), (None, 3, Some(2.5), 0));
        assert_eq!((o.json.as_deref(), o.plot.as_deref()), (Some("out.json"), Some("p.svg")));
        assert_eq!(o.plot_peers, ["a.csv:MPI", "b.json"]);
        assert_eq!(parse("-r 2").unwrap().root, Some(2));
        assert!(matches!(parse("-h"), Err(CliError::Help)));
        assert!(matches!(parse("-b 8 --help"), Err(CliError::Help)));
    }

    #[test]
    fn bad_command_lines_say_why() {
        assert_eq!(bad("-x 1"), "invalid option '-x'");
        assert_eq!(bad("--bogus 1"), "invalid option '--bogus'");
        assert_eq!(bad("-b"), "option '-b' needs a value");
        assert_eq!(bad("--plot"), "option '--plot' needs a value");
        assert!(bad("-b 8Q").contains("invalid size"), "{}", bad("-b 8Q"));
        assert!(bad("-n zero").contains("iters"));
        assert!(bad("-z 2").contains("blocking"));
        assert!(bad("-a 4").contains("average"));
        assert!(bad("-r x").contains("root"));
        assert!(bad("-T -1").contains("timeout"));
        assert!(bad("-b 1M -e 1K").contains("maxbytes"));
        assert!(bad("--plot-peer a.csv").contains("--plot"));
        assert!(bad("stray").contains("unexpected argument"));
        assert!(bad("-f 1 -i 0 -b 8 -e 64").contains("stepbytes"));
    }

    #[test]
    fn sizes_step_as_nccl_tests() {
        assert_eq!(sizes(&parse("-b 8 -e 256K -f 8").unwrap()), [8, 64, 512, 4096, 32768, 262144]);
        assert_eq!(sizes(&parse("-b 8 -e 100 -f 2").unwrap()), [8, 16, 32, 64]);
        assert_eq!(sizes(&parse("-b 0 -e 4 -f 2").unwrap()), [0, 1, 2, 4]);
        assert_eq!(sizes(&parse("-b 1K -e 4K -f 1 -i 1K").unwrap()), [1024, 2048, 3072, 4096]);
        assert_eq!(sizes(&parse("-b 5 -e 5").unwrap()), [5]);
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("-1"), None);
    }

    #[test]
    fn progress_flag() {
        assert_eq!(parse("--progress 1").unwrap().progress, Some(true));
        assert_eq!(parse("--progress=0").unwrap().progress, Some(false));
        assert_eq!(parse("").unwrap().progress, None);
        assert!(bad("--progress 2").contains("progress"));
    }
}
