//! `--plot`: busbw against message size as an SVG picture, with `plotters` (SVG backend
//! only: text is SVG text, so no font files or system libraries are needed).
//!
//! x: size in bytes on a log2 axis, ticks at powers of two labelled with K/M/G; y: busbw
//! in GB/s from 0. One line per (type, op, root) of this run, out-of-place solid and
//! in-place dashed in the same colour; then one line per peer's series (`--plot-peer`),
//! solid with square marks. The legend has its own panel right of the chart, so it never
//! covers data.

use std::collections::BTreeMap;

use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;

use super::args::parse_size;
use super::report::Row;

/// One line of the picture.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (size in bytes, busbw in GB/s), sizes > 0.
    pub points: Vec<(f64, f64)>,
    /// In-place results: dashed.
    pub dashed: bool,
    /// A peer's results (square marks); ours have round marks.
    pub peer: bool,
    /// Lines of one colour share this key (a row's two halves).
    pub color_key: String,
}

/// Our lines: per (type, op, root), out-of-place then in-place (when measured).
pub fn series_of_rows(rows: &[Row]) -> Vec<Series> {
    // Rows by (type, op, root), in order of first appearance.
    type Key<'r> = (&'r str, &'r str, i64);
    let mut groups: Vec<(Key<'_>, Vec<&Row>)> = Vec::new();
    for r in rows {
        let key = (r.dtype, r.op, r.root);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => groups.push((key, vec![r])),
        }
    }
    let several = groups.len() > 1;
    let roots = groups.iter().map(|((_, _, root), _)| root).collect::<std::collections::BTreeSet<_>>().len() > 1;
    let mut out = Vec::new();
    for ((dtype, op, root), rows) in groups {
        let mut name = String::from("oxccl");
        if several {
            name += &format!(" {dtype}");
            if op != "none" {
                name += &format!(" {op}");
            }
            if roots {
                name += &format!(" root {root}");
            }
        }
        let key = format!("{dtype} {op} {root}");
        for in_place in [false, true] {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.size > 0)
                .filter_map(|r| {
                    let m = if in_place { r.in_place } else { r.out_of_place }?;
                    m.busbw.is_finite().then_some((r.size as f64, m.busbw))
                })
                .collect();
            if !points.is_empty() {
                let label = format!("{name}, {}", if in_place { "in-place" } else { "out-of-place" });
                out.push(Series { label, points, dashed: in_place, peer: false, color_key: key.clone() });
            }
        }
    }
    out
}

/// Results from `file[:label]`: CSV (`size,busbw` or `size,time_us,algbw,busbw`, header
/// optional, `#` comments) or JSON as `-J` writes it (or nccl-tests' `-J`), one line per
/// (type, op, root) it holds, out-of-place busbw (in-place where out-of-place is
/// missing). The label defaults to the collective and rank count a JSON file names, else
/// the file's name. Lines from oxccl's JSON get round marks, others (CSV, nccl-tests'
/// JSON) square ones.
pub fn load_peer(spec: &str) -> Result<Vec<Series>, String> {
    let (path, label) = match spec.rsplit_once(':') {
        Some((p, l)) if !std::path::Path::new(spec).exists() && !p.is_empty() => (p, Some(l.to_string())),
        _ => (spec, None),
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("--plot-peer {path}: {e}"))?;
    let stem = std::path::Path::new(path).file_stem().map_or(path.to_string(), |s| s.to_string_lossy().into_owned());
    let trimmed = text.trim_start();
    let series = if trimmed.starts_with('{') {
        peer_json(&text, label, &stem)
    } else {
        peer_csv(&text, label.unwrap_or(stem)).map(|s| vec![s])
    }
    .map_err(|e| format!("--plot-peer {path}: {e}"))?;
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(format!("--plot-peer {path}: no results with a size above 0"));
    }
    Ok(series)
}

fn peer_csv(text: &str, label: String) -> Result<Series, String> {
    let mut cols: Option<(usize, usize)> = None;
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = if line.contains(',') {
            line.split(',').map(str::trim).collect()
        } else {
            line.split_whitespace().collect()
        };
        let (si, bi) = match cols {
            Some(c) => c,
            None => {
                let c = if parse_size(fields[0]).is_none() {
                    // A header: find the columns by name.
                    let find = |names: &[&str]| {
                        fields.iter().position(|f| {
                            let f = f.to_ascii_lowercase();
                            names
                                .iter()
                                .any(|n| f == *n || f.starts_with(&format!("{n}(")) || f.starts_with(&format!("{n}_")))
                        })
                    };
                    let s = find(&["size", "bytes"]).ok_or("the header names no size column")?;
                    let b = find(&["busbw", "bus_bw"]).ok_or("the header names no busbw column")?;
                    cols = Some((s, b));
                    continue;
                } else {
                    match fields.len() {
                        2 => (0, 1),
                        4 => (0, 3),
                        n => {
                            return Err(format!(
                                "line {}: {n} columns; expected size,busbw or size,time_us,algbw,busbw (or a header)",
                                i + 1
                            ));
                        }
                    }
                };
                cols = Some(c);
                c
            }
        };
        let get = |k: usize| fields.get(k).copied().unwrap_or("");
        let size = parse_size(get(si)).ok_or_else(|| format!("line {}: bad size '{}'", i + 1, get(si)))?;
        let bw: f64 = get(bi).parse().map_err(|_| format!("line {}: bad busbw '{}'", i + 1, get(bi)))?;
        if size > 0 && bw.is_finite() {
            points.push((size as f64, bw));
        }
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Series { color_key: format!("peer {label}"), label, points, dashed: false, peer: true })
}

fn peer_json(text: &str, label: Option<String>, stem: &str) -> Result<Vec<Series>, String> {
    use serde_json::Value;
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let results = doc.get("results").and_then(Value::as_array).ok_or("no \"results\" list")?;
    let ours = doc.get("oxccl_version").is_some();
    let label = label.unwrap_or_else(|| {
        let coll = doc.get("collective").and_then(Value::as_str);
        let n = doc.get("config").and_then(|c| c.get("nranks")).and_then(Value::as_u64);
        match (coll, n) {
            (Some(c), Some(n)) => format!("{c}, {n} ranks"),
            (Some(c), None) => c.to_string(),
            _ => stem.to_string(),
        }
    });
    let text_of = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let mut groups: BTreeMap<(String, String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut order = Vec::new();
    for r in results {
        let size = r.get("size").and_then(Value::as_f64).ok_or("a result without a size")?;
        let bw = |k: &str| r.get(k).and_then(|h| h.get("bus_bw")).and_then(Value::as_f64);
        let Some(bw) = bw("out_of_place").or_else(|| bw("in_place")) else {
            continue;
        };
        let key = (text_of(r.get("type")), text_of(r.get("redop")), text_of(r.get("root")));
        if !order.contains(&key) {
            order.push(key.clone());
        }
        if size > 0.0 {
            groups.entry(key).or_default().push((size, bw));
        }
    }
    let several = order.len() > 1;
    Ok(order
        .into_iter()
        .map(|key| {
            let mut points = groups.remove(&key).unwrap_or_default();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (t, op, root) = &key;
            let label = if several {
                let op = if op == "none" { String::new() } else { format!(" {op}") };
                let root = if root == "-1" || root.is_empty() { String::new() } else { format!(" root {root}") };
                format!("{label} {t}{op}{root}")
            } else {
                label.clone()
            };
            Series { color_key: format!("peer {label}"), label, points, dashed: false, peer: !ours }
        })
        .collect())
}

/// Bytes with binary units, as the axis shows them: `512 B`, `4 KiB`, `16 MiB`,
/// `1.5 GiB`.
pub fn size_label(b: f64) -> String {
    for (u, k) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        let k = k as f64;
        if b >= k {
            let v = b / k;
            return if (v - v.round()).abs() < 1e-9 { format!("{} {u}", v.round()) } else { format!("{v:.1} {u}") };
        }
    }
    format!("{} B", b.round())
}

/// Tableau 10: distinct, and readable on white.
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn color(i: usize, n: usize) -> RGBColor {
    if n <= PALETTE.len() {
        let (r, g, b) = PALETTE[i];
        RGBColor(r, g, b)
    } else {
        // More lines than the palette: hues spread around the circle.
        let (r, g, b) = HSLColor(0.9 * i as f64 / n as f64, 0.75, 0.42).rgb();
        RGBColor(r, g, b)
    }
}

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 640;
const LEGEND_ROW: i32 = 22;
const CHAR_W: f64 = 8.0; // the average width of a 17 pt (14 px in the SVG) sans-serif character

/// Draws `series` into the SVG file `path`.
pub fn draw(path: &str, title: &str, series: &[Series]) -> Result<(), String> {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut xmin, mut xmax, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for &(x, y) in pts {
        xmin = xmin.min(x.log2());
        xmax = xmax.max(x.log2());
        ymax = ymax.max(y);
    }
    if !xmin.is_finite() {
        (xmin, xmax) = (3.0, 27.0); // nothing to draw: an empty chart of 8 B .. 128 MB
    }
    // Colours: one per key, in order of first appearance.
    let mut keys_seen: Vec<&str> = Vec::new();
    for s in series {
        if !keys_seen.contains(&s.color_key.as_str()) {
            keys_seen.push(&s.color_key);
        }
    }
    let col = |s: &Series| {
        let i = keys_seen.iter().position(|k| *k == s.color_key).unwrap_or(0);
        color(i, keys_seen.len())
    };

    // The legend panel: as many columns as the rows need.
    let per_col = ((HEIGHT as i32 - 80) / LEGEND_ROW).max(1) as usize;
    let ncols = series.len().div_ceil(per_col).max(1);
    let longest = series.iter().map(|s| s.label.chars().count()).max().unwrap_or(0);
    let col_w = (50.0 + longest as f64 * CHAR_W) as u32;
    let legend_w = if series.is_empty() { 0 } else { col_w * ncols as u32 + 10 };
    let width = WIDTH.max(legend_w + 800);

    let (mut lo, mut hi) = (xmin.floor(), xmax.ceil());
    if hi - lo < 2.0 {
        lo -= 1.0;
        hi += 1.0;
    }
    // A tick per power of two, or per 2nd, 5th or 10th when that is too many to read
    // (labels are up to ~60 px wide: at most one per 68 px of the plotting area). These
    // steps divide 10, so 1 KiB, 1 MiB, ... always get a tick; the axis ends on ticks.
    let max_ticks = ((width - legend_w).saturating_sub(130) / 68).clamp(2, 14) as f64;
    let need = (hi - lo) / max_ticks;
    let step = [1.0, 2.0, 5.0, 10.0, 20.0].into_iter().find(|&s| s >= need).unwrap_or(need.ceil());
    if step <= 2.0 {
        (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
    }
    let first = (lo / step).ceil() * step;
    let keys: Vec<f64> = (0..).map(|i| first + i as f64 * step).take_while(|&k| k <= hi).collect();
    let ytop = if ymax > 0.0 { nice_ceil(ymax * 1.05) } else { 1.0 };
    // Decimals for the y labels: enough for a tenth of the axis.
    let ydec = (-(ytop / 10.0).log10().floor()).max(0.0) as usize;

    let e = |e: &dyn std::fmt::Display| e.to_string();
    let area = SVGBackend::new(path, (width, HEIGHT)).into_drawing_area();
    area.fill(&WHITE).map_err(|x| e(&x))?;
    let (chart_area, legend_area) = area.split_horizontally(width - legend_w);
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .margin_right(40)
        .x_label_area_size(56)
        .y_label_area_size(76)
        .build_cartesian_2d(SizeAxis { lo, hi, keys }, 0f64..ytop)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("message size (bytes, log scale)")
        .y_desc("busbw (GB/s)")
        .x_label_formatter(&|v| size_label(v.exp2()))
        .y_label_formatter(&|v| format!("{v:.ydec$}"))
        .y_labels(10)
        .axis_desc_style(("sans-serif", 20))
        .label_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(|x| e(&x))?;

    for s in series {
        let c = col(s);
        let style = c.stroke_width(2);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x.log2(), y)).collect();
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 7, 5, style)).map_err(|x| e(&x))?;
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(|x| e(&x))?;
        }
        if s.peer {
            chart
                .draw_series(pts.iter().map(|&p| EmptyElement::at(p) + Rectangle::new([(-3, -3), (3, 3)], c.filled())))
                .map_err(|x| e(&x))?;
        } else if !s.dashed {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(|x| e(&x))?;
        } else {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.stroke_width(1)))).map_err(|x| e(&x))?;
        }
    }

    // The legend: a line sample (solid or dashed, with its mark) and the label.
    let font = ("sans-serif", 17).into_font().color(&BLACK);
    for (i, s) in series.iter().enumerate() {
        let (cx, row) = ((i / per_col) as i32 * col_w as i32, (i % per_col) as i32);
        let y = 60 + row * LEGEND_ROW;
        let c = col(s);
        let (x0, x1) = (cx + 6, cx + 40);
        if s.dashed {
            for seg in [(x0, x0 + 9), (x0 + 13, x0 + 22), (x0 + 26, x1)] {
                legend_area
                    .draw(&PathElement::new(vec![(seg.0, y), (seg.1, y)], c.stroke_width(2)))
                    .map_err(|x| e(&x))?;
            }
        } else {
            legend_area.draw(&PathElement::new(vec![(x0, y), (x1, y)], c.stroke_width(2))).map_err(|x| e(&x))?;
        }
        let mid = ((x0 + x1) / 2, y);
        if s.peer {
            legend_area
                .draw(&Rectangle::new([(mid.0 - 3, y - 3), (mid.0 + 3, y + 3)], c.filled()))
                .map_err(|x| e(&x))?;
        } else if s.dashed {
            legend_area.draw(&Circle::new(mid, 3, c.stroke_width(1))).map_err(|x| e(&x))?;
        } else {
            legend_area.draw(&Circle::new(mid, 3, c.filled())).map_err(|x| e(&x))?;
        }
        legend_area.draw(&Text::new(s.label.clone(), (x1 + 8, y - 7), font.clone())).map_err(|x| e(&x))?;
    }
    area.present().map_err(|x| e(&x))?;
    Ok(())
}

/// The x axis: log2 of the size, linear in that, with ticks (and grid lines) at `keys`.
struct SizeAxis {
    lo: f64,
    hi: f64,
    keys: Vec<f64>,
}

impl Ranged for SizeAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (f * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        self.keys.clone()
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for SizeAxis {
    fn format(v: &f64) -> String {
        size_label(v.exp2())
    }
}

/// The smallest of 1, 2, 2.5, 5 x 10^k at or above `v`: an axis end with round ticks.
fn nice_ceil(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// The usage of `perf_plot`.
const PLOT_USAGE: &str = "USAGE: perf_plot -o <out.svg> [--title <text>] <file[:label]>...
Draws busbw against message size (log scale) into an SVG file, one line per input (per
type, op and root when a file holds several): JSON written by the *_perf examples' -J
(or by nccl-tests' -J), or CSV with size,busbw or size,time_us,algbw,busbw columns
(header optional). The label defaults to the collective and rank count of a JSON file,
else the file's name.
";

/// What `perf_plot`'s command line asks for: the SVG file, the title and the inputs.
#[derive(Debug, PartialEq, Eq)]
pub struct PlotArgs {
    /// `-o`: the SVG file to write.
    pub output: String,
    /// `--title`.
    pub title: String,
    /// The inputs, `file[:label]`.
    pub inputs: Vec<String>,
}

/// Parses `perf_plot`'s arguments (without the program name). `Ok(None)`: `-h`.
pub fn parse_plot_args(args: &[String]) -> Result<Option<PlotArgs>, String> {
    let (mut output, mut title, mut inputs) = (None, None, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("option '{name}' needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "-o" | "--output" => output = Some(value(a)?),
            "--title" => title = Some(value(a)?),
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("invalid option '{s}'")),
            s => inputs.push(s.to_string()),
        }
    }
    let output = output.ok_or("no output file (-o <out.svg>)")?;
    if inputs.is_empty() {
        return Err("no input files".into());
    }
    Ok(Some(PlotArgs { output, title: title.unwrap_or_else(|| "oxccl: busbw".into()), inputs }))
}

/// `perf_plot`'s whole run: exits 0 when the picture is written, 1 when an input or the
/// output fails, 2 on a bad command line.
pub fn plot_main() -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse_plot_args(&args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{PLOT_USAGE}");
            std::process::exit(0);
        }
        Err(m) => {
            eprint!("perf_plot: {m}\n{PLOT_USAGE}");
            std::process::exit(2);
        }
    };
    let mut series = Vec::new();
    for spec in &a.inputs {
        match load_peer(spec) {
            Ok(s) => series.extend(s),
            Err(m) => {
                eprintln!("perf_plot: {}", m.trim_start_matches("--plot-peer "));
                std::process::exit(1);
            }
        }
    }
    if let Err(m) = draw(&a.output, &a.title, &series) {
        eprintln!("perf_plot: cannot draw {}: {m}", a.output);
        std::process::exit(1);
    }
    println!("perf_plot: {} line{} drawn to {}", series.len(), if series.len() == 1 { "" } else { "s" }, a.output);
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("oxccl-perf-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn size_labels() {
        assert_eq!(size_label(8.0), "8 B");
        assert_eq!(size_label(1024.0), "1 KiB");
        assert_eq!(size_label(1536.0), "1.5 KiB");
        assert_eq!(size_label((16 << 20) as f64), "16 MiB");
        assert_eq!(size_label((1u64 << 30) as f64), "1 GiB");
    }

    #[test]
    fn peer_csv_with_and_without_header() {
        let p = tmp("peer.csv");
        std::fs::write(&p, "# from Open MPI\nsize,time_us,algbw,busbw\n8,1,0.1,0.2\n1K,2,0.5,0.75\n0,1,0,0\n").unwrap();
        let s = load_peer(&format!("{}:Open MPI", p.display())).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].label, "Open MPI");
        assert_eq!(s[0].points, [(8.0, 0.2), (1024.0, 0.75)]);
        assert!(s[0].peer);
        std::fs::write(&p, "64 1.5\n8 0.5\n").unwrap();
        let s = load_peer(p.to_str().unwrap()).unwrap();
        assert_eq!((s[0].label.as_str(), s[0].points.as_slice()), ("peer", &[(8.0, 0.5), (64.0, 1.5)][..]));
        std::fs::write(&p, "8,1,2\n").unwrap();
        assert!(load_peer(p.to_str().unwrap()).unwrap_err().contains("3 columns"));
        assert!(load_peer("/nonexistent/x.csv").is_err());
    }

    #[test]
    fn plot_args() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let p = parse_plot_args(&a("-o x.svg a.json b.csv:MPI")).unwrap().unwrap();
        assert_eq!((p.output.as_str(), p.inputs.len()), ("x.svg", 2));
        assert!(parse_plot_args(&a("a.json")).unwrap_err().contains("-o"));
        assert!(parse_plot_args(&a("-o x.svg")).unwrap_err().contains("input"));
        assert!(parse_plot_args(&a("-o x.svg -q a.json")).unwrap_err().contains("invalid option"));
        assert_eq!(parse_plot_args(&a("-h")).unwrap(), None);
    }

    /// The picture is an SVG with its axis titles, binary size ticks and legend as text.
    #[test]
    fn draws_an_svg() {
        let p = tmp("busbw.svg");
        let pts: Vec<(f64, f64)> = (3..=20).map(|k| ((1u64 << k) as f64, k as f64 / 4.0)).collect();
        let ours = Series {
            label: "oxccl, out-of-place".into(),
            points: pts.clone(),
            dashed: false,
            peer: false,
            color_key: "a".into(),
        };
        let peer = Series { label: "MPI".into(), points: pts, dashed: false, peer: true, color_key: "b".into() };
        draw(p.to_str().unwrap(), "all_reduce_perf: busbw", &[ours, peer]).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for t in
            ["busbw (GB/s)", "message size (bytes, log scale)", "1 KiB", "1 MiB", "16 B", "oxccl, out-of-place", "MPI"]
        {
            assert!(svg.contains(t), "no {t:?} in the SVG");
        }
    }
}
