//! What rank 0 keeps of a run besides the table: its rows, for `-J` (a JSON document)
//! and `--plot` (an SVG picture of busbw), written when the run ends.
//!
//! The JSON follows nccl-tests' `-J` layout (its version 3 keys: `config`, `devices`,
//! `results` with `size`, `count`, `type`, `redop`, `root`, `out_of_place` and
//! `in_place` each `{time, alg_bw, bus_bw, nwrong}`, `out_of_bounds`,
//! `average_bus_bandwidth`), so tools written for one read the other, with a few keys of
//! ours (`collective`, `nranks`, `ranks_are`, `oxccl_version`). Differences: `root` is a
//! number (nccl-tests writes the table's padded text), `in_place` is `null` for
//! collectives without an in-place form, and the document is written whole at the end
//! (also when the run stops on an error, which then appears under `errors`), so the file
//! is always valid JSON.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::sync::Mutex;

use super::args::Opts;
use super::output::err;
use super::plot::{self, Series};
use super::ranks::Device;

/// One half of a row: the out-of-place or the in-place measurement.
#[derive(Clone, Copy, Debug)]
pub struct Meas {
    /// Time per call, in microseconds.
    pub time_us: f64,
    /// Algorithm bandwidth, GB/s.
    pub algbw: f64,
    /// Bus bandwidth, GB/s.
    pub busbw: f64,
    /// Wrong elements over all ranks; `None` when not checked (`-c 0`).
    pub wrong: Option<u64>,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// The size column, bytes.
    pub size: usize,
    /// The count column, elements.
    pub count: usize,
    /// Type name (`float`).
    pub dtype: &'static str,
    /// Op name (`sum`, `none`).
    pub op: &'static str,
    /// Root, -1 for collectives without one.
    pub root: i64,
    /// Out-of-place half.
    pub out_of_place: Option<Meas>,
    /// In-place half; stays `None` for collectives without an in-place form.
    pub in_place: Option<Meas>,
}

/// Rank 0's record of the run.
pub struct Report {
    prog: &'static str,
    nranks: usize,
    processes: bool,
    /// The JSON file, already created (so its name is known and reserved), and its name.
    json: Option<(File, String)>,
    /// The SVG file to draw, and the peers' lines (read before the run).
    plot: Option<(String, Vec<Series>)>,
    /// The document's keys before `results`, rendered when the run starts.
    head: String,
    rows: Vec<Row>,
    errors: Vec<String>,
}

static REPORT: Mutex<Option<Report>> = Mutex::new(None);

/// Prepares rank 0's report when `-J` or `--plot` asks for one: creates the JSON file
/// (nccl-tests' way: never over an existing file, trying `file.0`, `file.1`, ...) and
/// reads the peers' results. Returns the lines to print under the header. Nothing is
/// prepared (and nothing printed) without either flag.
pub fn prepare(
    prog: &'static str,
    opts: &Opts,
    args: &[String],
    devices: &[Device],
    processes: bool,
) -> Result<String, String> {
    if opts.json.is_none() && opts.plot.is_none() {
        return Ok(String::new());
    }
    let mut note = String::new();
    let json = match &opts.json {
        Some(path) => {
            let (file, name) = create_new(path)?;
            let _ = writeln!(note, "# Writing JSON output to {name}");
            Some((file, name))
        }
        None => None,
    };
    let plot = match &opts.plot {
        Some(path) => {
            let mut peers = Vec::new();
            for spec in &opts.plot_peers {
                peers.extend(plot::load_peer(spec)?);
            }
            // Fail now rather than after the run when the picture cannot be written.
            File::create(path).map_err(|e| format!("cannot write the plot to {path}: {e}"))?;
            let _ = writeln!(note, "# Drawing busbw to {path}");
            Some((path.clone(), peers))
        }
        None => None,
    };
    let head = render_head(prog, opts, args, devices, processes);
    let report =
        Report { prog, nranks: devices.len(), processes, json, plot, head, rows: Vec::new(), errors: Vec::new() };
    *REPORT.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    Ok(note)
}

/// Creates `path`, or the first of `path.0`, `path.1`, ... that does not exist.
fn create_new(path: &str) -> Result<(File, String), String> {
    let mut name = path.to_string();
    for i in 0..1000 {
        match File::options().write(true).create_new(true).open(&name) {
            Ok(f) => return Ok((f, name)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => name = format!("{path}.{i}"),
            Err(e) => return Err(format!("cannot create the JSON output {name}: {e}")),
        }
    }
    Err(format!("cannot create the JSON output {path}: {path}.0 to {path}.999 exist too"))
}

/// Runs `f` on the report, if there is one. Called by rank 0 only.
fn with(f: impl FnOnce(&mut Report)) {
    if let Some(r) = REPORT.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        f(r);
    }
}

/// A new row (its two halves follow).
pub fn start_row(row: Row) {
    with(|r| r.rows.push(row));
}

/// One half of the last row.
pub fn set_meas(in_place: bool, m: Meas) {
    with(|r| {
        if let Some(row) = r.rows.last_mut() {
            if in_place {
                row.in_place = Some(m);
            } else {
                row.out_of_place = Some(m);
            }
        }
    });
}

/// Writes the JSON document and the plot at the end of a completed run. Returns the
/// problems met (an unwritable file, ...), to print.
pub fn finish(errors: u64, bw: f64, bw_ok: Option<bool>) -> Vec<String> {
    let Some(r) = REPORT.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return Vec::new();
    };
    let tail = format!(
        "  \"out_of_bounds\": {{\"count\": {errors}, \"okay\": {}}},\n  \"average_bus_bandwidth\": {{\"bandwidth\": {}, \"okay\": {}}},\n",
        errors == 0,
        num(bw),
        match bw_ok {
            None => "\"unchecked\"".to_string(),
            Some(ok) => ok.to_string(),
        }
    );
    r.write(&tail)
}

/// Writes what there is after an error that ends the run (`msg`), so the JSON file is
/// complete and says why it ends early. Never blocks: from a panic, a report held by the
/// panicking thread is left alone.
pub fn abort(msg: &str) {
    let Ok(mut guard) = REPORT.try_lock() else {
        return;
    };
    if let Some(mut r) = guard.take() {
        r.errors.push(msg.trim_end().to_string());
        let prog = r.prog;
        for p in r.write("") {
            err(&format!("{prog}: {p}"));
        }
    }
}

impl Report {
    /// Writes the document (with `tail`, the summary keys) and the plot.
    fn write(mut self, tail: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some((mut file, name)) = self.json.take() {
            let doc = self.render(tail);
            if let Err(e) = file.write_all(doc.as_bytes()).and_then(|_| file.sync_all()) {
                problems.push(format!("cannot write the JSON output {name}: {e}"));
            }
        }
        if let Some((path, peers)) = self.plot.take() {
            let mut series = plot::series_of_rows(&self.rows);
            series.extend(peers);
            let title = format!(
                "{}: busbw, {} rank{} ({})",
                self.prog,
                self.nranks,
                if self.nranks == 1 { "" } else { "s" },
                if self.processes { "processes" } else { "threads" }
            );
            if let Err(e) = plot::draw(&path, &title, &series) {
                problems.push(format!("cannot draw the plot {path}: {e}"));
            }
        }
        problems
    }

    fn render(&self, tail: &str) -> String {
        let mut s = self.head.clone();
        s += "  \"results\": [";
        for (i, row) in self.rows.iter().enumerate() {
            s += if i == 0 { "\n    " } else { ",\n    " };
            let half = |m: &Option<Meas>| match m {
                None => "null".to_string(),
                Some(m) => format!(
                    "{{\"time\": {}, \"alg_bw\": {}, \"bus_bw\": {}, \"nwrong\": {}}}",
                    num(m.time_us),
                    num(m.algbw),
                    num(m.busbw),
                    m.wrong.map_or("null".to_string(), |w| w.to_string())
                ),
            };
            let _ = write!(
                s,
                "{{\"size\": {}, \"count\": {}, \"type\": {}, \"redop\": {}, \"root\": {}, \"out_of_place\": {}, \"in_place\": {}}}",
                row.size,
                row.count,
                quote(row.dtype),
                quote(row.op),
                row.root,
                half(&row.out_of_place),
                half(&row.in_place)
            );
        }
        s += if self.rows.is_empty() { "],\n" } else { "\n  ],\n" };
        s += tail;
        if !self.errors.is_empty() {
            let errs: Vec<String> = self.errors.iter().map(|e| quote(e)).collect();
            let _ = writeln!(s, "  \"errors\": [{}],", errs.join(", "));
        }
        let _ = writeln!(s, "  \"end_time\": {}", quote(&utc_now()));
        s += "}\n";
        s
    }
}

/// The keys before `results`: what was run, how, and on which ranks.
fn render_head(prog: &str, o: &Opts, args: &[String], devices: &[Device], processes: bool) -> String {
    let ver = env!("CARGO_PKG_VERSION");
    let mut s = String::from("{\n");
    let _ = writeln!(s, "  \"version\": 3,");
    let _ = writeln!(s, "  \"collective\": {},", quote(prog));
    let _ = writeln!(s, "  \"oxccl_version\": {},", quote(ver));
    let _ = writeln!(s, "  \"start_time\": {},", quote(&utc_now()));
    let all: Vec<String> = std::iter::once(prog).chain(args.iter().map(|a| a.as_str())).map(quote).collect();
    let _ = writeln!(s, "  \"args\": [{}],", all.join(", "));
    let opt_str = |v: Option<String>| v.map_or("\"all\"".to_string(), |v| quote(&v));
    let step = if o.step_factor > 1 {
        format!("\"step_factor\": {}", o.step_factor)
    } else {
        format!("\"step_bytes\": {}", o.step_bytes)
    };
    let _ = writeln!(
        s,
        "  \"config\": {{\"nranks\": {}, \"ranks_are\": {}, \"nthreads\": {}, \"ngpus\": 1, \
\"minimum_bytes\": {}, \"maximum_bytes\": {}, {step}, \"warmup_iters\": {}, \"iterations\": {}, \
\"aggregated_iterations\": 1, \"validation\": {}, \"graph\": 0, \"blocking_collectives\": {}, \
\"blocking\": {}, \"average\": {}, \"unalign\": {}, \"run_cycles\": {}, \"datatype\": {}, \"op\": {}, \
\"root\": {}}},",
        devices.len(),
        quote(if processes { "processes" } else { "threads" }),
        o.nthreads,
        o.min_bytes,
        o.max_bytes,
        o.warmup,
        o.iters,
        o.check,
        o.blocking != 0,
        o.blocking,
        o.average,
        o.unalign,
        o.cycles,
        opt_str(o.dtype.map(|d| d.name().to_string())),
        opt_str(o.op.map(|op| op.name().to_string())),
        o.root.map_or("-1".to_string(), |r| r.to_string()),
    );
    s += "  \"devices\": [";
    for (r, d) in devices.iter().enumerate() {
        s += if r == 0 { "\n    " } else { ",\n    " };
        let _ = write!(
            s,
            "{{\"rank\": {r}, \"group\": 0, \"pid\": {}, \"hostname\": {}, \"device\": {}, \"device_info\": {}}}",
            d.pid,
            quote(&d.host),
            d.dev,
            quote(&d.what)
        );
    }
    s += if devices.is_empty() { "],\n" } else { "\n  ],\n" };
    s
}

/// `v` as a JSON string.
pub fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s += "\\\"",
            '\\' => s += "\\\\",
            '\n' => s += "\\n",
            '\r' => s += "\\r",
            '\t' => s += "\\t",
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// `v` as a JSON number (`null` when not finite).
pub fn num(v: f64) -> String {
    if v.is_finite() { format!("{v}") } else { "null".to_string() }
}

/// Now, as `2026-12-01T09:30:00Z`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's rows through `prepare`, `start_row`, `set_meas` and `finish` make a JSON
    /// document that parses, with the values given.
    #[test]
    fn json_output_parses_and_holds_the_rows() {
        let dir = std::env::temp_dir().join(format!("oxccl-perf-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.json");
        let _ = std::fs::remove_file(&path);
        let args: Vec<String> = ["-b", "8", "-J", path.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
        let opts = super::super::args::parse_args(&args, 2).unwrap();
        let devices = vec![
            Device { pid: 1, host: "h\"1".into(), dev: 0, what: "CPU thread, x".into() },
            Device { pid: 1, host: "h\"1".into(), dev: 1, what: "CPU thread, x".into() },
        ];
        let note = prepare("all_gather_perf", &opts, &args, &devices, false).unwrap();
        assert!(note.contains("Writing JSON output to"), "{note}");
        for (size, wrong) in [(0usize, 0u64), (1024, 3)] {
            start_row(Row {
                size,
                count: size / 8,
                dtype: "float",
                op: "none",
                root: -1,
                out_of_place: None,
                in_place: None,
            });
            let m = Meas { time_us: 12.5, algbw: size as f64 / 12.5e3, busbw: f64::NAN, wrong: Some(wrong) };
            set_meas(false, m);
            set_meas(true, Meas { wrong: None, ..m });
        }
        assert!(finish(1, 0.25, None).is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert_eq!(doc["collective"], "all_gather_perf");
        assert_eq!(doc["config"]["nranks"], 2);
        assert_eq!(doc["config"]["minimum_bytes"], 8);
        assert_eq!(doc["devices"][1]["hostname"], "h\"1");
        let r = &doc["results"];
        assert_eq!(r.as_array().unwrap().len(), 2);
        assert_eq!(r[1]["size"], 1024);
        assert_eq!(r[1]["out_of_place"]["time"], 12.5);
        assert_eq!(r[1]["out_of_place"]["nwrong"], 3);
        assert!(r[1]["out_of_place"]["bus_bw"].is_null(), "NaN is written as null");
        assert!(r[1]["in_place"]["nwrong"].is_null());
        assert_eq!(doc["out_of_bounds"]["count"], 1);
        assert_eq!(doc["average_bus_bandwidth"]["bandwidth"], 0.25);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(num(f64::INFINITY), "null");
        assert_eq!(num(1.5), "1.5");
    }
}
