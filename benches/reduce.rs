//! Reduction kernels against a plain copy, at the selected SIMD level (`OXCCL_SIMD`).
//!
//! GB/s counts bytes read plus bytes written: 2x the buffer for a copy, 3x for a binary
//! op (`dst = a + b`, out of place). Two buffer sizes: 64 MiB per operand (far beyond
//! the caches: the DRAM-bound case) and 256 KiB (cache-resident).
//!
//! Criterion's groups come first; then a summary table from a quick timing loop of its
//! own (cases interleaved, median of several repetitions, same process), with each sum's
//! rate as a fraction of the copy rate. The machine is shared and noisy: compare ratios
//! within one run, and runs with each other, rather than single figures.
//!
//! Run with `cargo bench --bench reduce`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use oxccl::DataType;
use oxccl::internals::reduce::{BinOp, Level, copy, kernels, store_fence};

/// Large buffers: 64 MiB per operand.
const LARGE: usize = 64 << 20;
/// Cache-resident buffers: 256 KiB per operand.
const SMALL: usize = 256 << 10;
/// Repetitions of the summary loop (median taken).
const REPS: usize = 15;

/// Three operand buffers of `bytes` bytes each, filled and touched (no page faults while
/// timing). Every 16-bit half holds a value in [0.5, 2) as f16 and a normal value as
/// bf16, so the same bytes are ordinary numbers as f32, bf16 and f16.
struct Buffers {
    a: Vec<u8>,
    b: Vec<u8>,
    dst: Vec<u8>,
}

impl Buffers {
    fn new(bytes: usize) -> Buffers {
        let mut x = 0x9e37_79b9u32;
        let mut fill = || {
            let mut v = vec![0u8; bytes];
            for h in v.chunks_exact_mut(2) {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let half = 0x3800 | ((x >> 16) as u16 & 0x07ff);
                h.copy_from_slice(&half.to_le_bytes());
            }
            v
        };
        Buffers { a: fill(), b: fill(), dst: fill() }
    }
}

/// One measured operation.
#[derive(Clone, Copy)]
enum Case {
    /// `ptr::copy_nonoverlapping` (the C library's memcpy).
    Memcpy,
    /// `oxccl::internals::reduce::copy` with non-temporal stores.
    CopyNt,
    /// `dst = a + b` of `dtype`, with non-temporal stores or not.
    Sum(DataType, bool),
}

impl Case {
    fn name(self) -> String {
        match self {
            Case::Memcpy => "memcpy".into(),
            Case::CopyNt => "copy_nt".into(),
            Case::Sum(dt, nt) => format!("{}_sum{}", short(dt), if nt { "_nt" } else { "" }),
        }
    }

    /// Bytes read plus written for buffers of `bytes` bytes.
    fn traffic(self, bytes: usize) -> usize {
        match self {
            Case::Memcpy | Case::CopyNt => 2 * bytes,
            Case::Sum(..) => 3 * bytes,
        }
    }

    /// Runs the operation once over `buf`.
    fn run(self, buf: &mut Buffers, level: Level) {
        let bytes = buf.a.len();
        let (a, b, d) = (buf.a.as_ptr(), buf.b.as_ptr(), buf.dst.as_mut_ptr());
        // SAFETY: the three buffers are distinct allocations of `bytes` bytes; every
        // kernel reads and writes `bytes / size` elements.
        unsafe {
            match self {
                Case::Memcpy => std::ptr::copy_nonoverlapping(a, d, bytes),
                Case::CopyNt => {
                    copy(d, a, bytes, true);
                    store_fence();
                }
                Case::Sum(dt, nt) => {
                    let k = kernels(dt, level);
                    let f = if nt { k.binary_nt } else { k.binary }[BinOp::Sum as usize];
                    f(d, a, b, bytes / dt.size());
                    if nt {
                        store_fence();
                    }
                }
            }
        }
        black_box(&mut buf.dst);
    }
}

fn short(dt: DataType) -> &'static str {
    match dt {
        DataType::Float32 => "f32",
        DataType::Bfloat16 => "bf16",
        DataType::Float16 => "f16",
        _ => dt.name(),
    }
}

const SUMS: [DataType; 3] = [DataType::Float32, DataType::Bfloat16, DataType::Float16];

/// The cases measured at a size: streaming stores only make sense beyond the cache.
fn cases(bytes: usize) -> Vec<Case> {
    let mut v = vec![Case::Memcpy];
    if bytes == LARGE {
        v.push(Case::CopyNt);
        v.extend(SUMS.map(|dt| Case::Sum(dt, true)));
    }
    v.extend(SUMS.map(|dt| Case::Sum(dt, false)));
    v
}

fn criterion_groups(c: &mut Criterion, level: Level) {
    for (label, bytes) in [("64MiB", LARGE), ("256KiB", SMALL)] {
        let mut buf = Buffers::new(bytes);
        let mut g: BenchmarkGroup<WallTime> = c.benchmark_group(format!("reduce/{level}/{label}"));
        if bytes == LARGE {
            g.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
        } else {
            g.sample_size(20).measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(200));
        }
        for case in cases(bytes) {
            g.throughput(Throughput::Bytes(case.traffic(bytes) as u64));
            g.bench_function(case.name(), |bch| bch.iter(|| case.run(&mut buf, level)));
        }
        g.finish();
    }
}

/// Median GB/s of each case at one size, from interleaved repetitions.
fn quick_rates(bytes: usize, level: Level) -> Vec<(Case, f64)> {
    let mut buf = Buffers::new(bytes);
    let cases = cases(bytes);
    // Enough inner iterations that one sample moves at least 192 MiB (a few ms).
    let inner = (LARGE / bytes).max(1);
    let mut samples = vec![Vec::new(); cases.len()];
    for case in &cases {
        case.run(&mut buf, level); // warm up: caches, page tables, CPU frequency
    }
    for _ in 0..REPS {
        for (case, s) in cases.iter().zip(&mut samples) {
            let t = Instant::now();
            for _ in 0..inner {
                case.run(&mut buf, level);
            }
            let secs = t.elapsed().as_secs_f64() / inner as f64;
            s.push(case.traffic(bytes) as f64 / secs / 1e9);
        }
    }
    cases
        .into_iter()
        .zip(samples)
        .map(|(c, mut s)| {
            s.sort_by(f64::total_cmp);
            (c, s[s.len() / 2])
        })
        .collect()
}

fn summary(level: Level) {
    println!();
    println!("summary: level {level}, median of {REPS} interleaved reps; GB/s = (bytes read + written) / time");
    println!("{:<9} {:<9} {:>8} {:>16} {:>16} {:>16}", "operand", "stores", "memcpy", "f32 sum", "bf16 sum", "f16 sum");
    for (label, bytes) in [("64 MiB", LARGE), ("256 KiB", SMALL)] {
        let rates = quick_rates(bytes, level);
        let rate = |want: &str| rates.iter().find(|(c, _)| c.name() == want).map(|r| r.1);
        let copy = rate("memcpy").unwrap();
        let stores: &[(&str, &str)] =
            if bytes == LARGE { &[("nt", "_nt"), ("temporal", "")] } else { &[("temporal", "")] };
        for (store, suffix) in stores {
            let cell = |dt| {
                let r = rate(&format!("{}_sum{suffix}", short(dt))).unwrap();
                format!("{r:6.2} ({:4.2})", r / copy)
            };
            println!(
                "{label:<9} {store:<9} {copy:8.2} {:>16} {:>16} {:>16}",
                cell(DataType::Float32),
                cell(DataType::Bfloat16),
                cell(DataType::Float16)
            );
        }
        if let Some(nt) = rate("copy_nt") {
            println!("{label:<9} (oxccl::internals::reduce::copy with nt: {nt:.2} GB/s, {:.2} of memcpy)", nt / copy);
        }
    }
    println!("(ratio) = sum rate / memcpy rate, both counting bytes read + written");
}

fn main() {
    let level = Level::selected();
    let mut c = Criterion::default().without_plots().configure_from_args();
    criterion_groups(&mut c, level);
    c.final_summary();
    // `cargo test --benches` runs this without `--bench`: skip the timing loop there.
    if std::env::args().any(|a| a == "--bench") {
        summary(level);
    }
}
