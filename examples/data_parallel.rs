//! Data-parallel training of a small MLP, as PyTorch's DistributedDataParallel does it:
//! every rank holds the whole model and a shard of each batch; gradients are packed into
//! buckets as back-propagation produces them, last layer first, and each full bucket is
//! averaged across ranks with a non-blocking all-reduce while the earlier layers are
//! still being back-propagated.
//!
//! ```text
//! cargo run --release --example data_parallel -- -t 2            # ranks as threads
//! target/release/oxccl-run -n 2 -- target/release/examples/data_parallel
//! ```
//!
//! The run trains the same model twice from the same seed: once overlapping the bucket
//! all-reduces with back-propagation ([`Comm::scope`]), once with every all-reduce after
//! the backward pass, and once more without any communication (the compute floor). It
//! asserts that the loss on a held-out batch falls by at least 10%, that every rank ends with bit-identical weights, and that
//! both schedules give the same bits; rank 0 prints the step times.
//!
//! Options: `-t N` ranks as threads (without a launcher; default 2), `-s STEPS` (40),
//! `-w WIDTH` hidden width (1024), `-l LAYERS` (4), `-B BATCH` per rank (32),
//! `-k KIB` bucket size cap in KiB (4096).

use std::time::{Duration, Instant};

use oxccl::{Comm, ReduceOp};

/// What the command line asks for.
#[derive(Clone, Copy)]
struct Opts {
    threads: Option<usize>,
    steps: usize,
    width: usize,
    layers: usize,
    batch: usize,
    bucket_bytes: usize,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts { threads: None, steps: 40, width: 1024, layers: 4, batch: 32, bucket_bytes: 4 << 20 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: usize = v.parse().map_err(|_| format!("{flag} {v}: expected a number"))?;
        match flag.as_str() {
            "-t" => o.threads = Some(n),
            "-s" => o.steps = n,
            "-w" => o.width = n,
            "-l" => o.layers = n,
            "-B" => o.batch = n,
            "-k" => o.bucket_bytes = n << 10,
            _ => return Err(format!("unknown option {flag}")),
        }
        if n == 0 {
            return Err(format!("{flag} must be at least 1"));
        }
    }
    if o.layers < 2 {
        return Err("-l: the model needs at least 2 layers".into());
    }
    Ok(o)
}

/// A small deterministic generator (splitmix64), so every rank draws the same weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Layer sizes: input, hidden layers of `width`, a narrow output.
fn dims(o: &Opts) -> Vec<usize> {
    let mut d = vec![256];
    d.extend(std::iter::repeat_n(o.width, o.layers - 1));
    d.push(16);
    d
}

/// One linear layer's parameters, `w` as `[out][in]` followed by the bias, in one vector
/// (so a layer's gradient is one contiguous piece of a bucket).
#[derive(Clone)]
struct Layer {
    inp: usize,
    out: usize,
    params: Vec<f32>,
    /// SGD momentum.
    velocity: Vec<f32>,
}

impl Layer {
    fn new(inp: usize, out: usize, rng: &mut Rng) -> Layer {
        let scale = (2.0 / inp as f32).sqrt();
        let mut params: Vec<f32> = (0..out * inp).map(|_| rng.uniform() * scale).collect();
        params.extend(std::iter::repeat_n(0.0, out));
        let velocity = vec![0.0; params.len()];
        Layer { inp, out, params, velocity }
    }

    fn len(&self) -> usize {
        self.out * (self.inp + 1)
    }

    fn w(&self, o: usize) -> &[f32] {
        &self.params[o * self.inp..(o + 1) * self.inp]
    }

    fn b(&self, o: usize) -> f32 {
        self.params[self.out * self.inp + o]
    }

    /// `x` is `[batch][inp]`; returns `[batch][out]`.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let batch = x.len() / self.inp;
        let mut z = vec![0f32; batch * self.out];
        for b in 0..batch {
            let xb = &x[b * self.inp..(b + 1) * self.inp];
            for o in 0..self.out {
                z[b * self.out + o] = dot(xb, self.w(o)) + self.b(o);
            }
        }
        z
    }

    /// Given the input `x` and the loss gradient `dz` at the output, writes the
    /// parameters' gradient into `grad` and returns the gradient at the input (unless
    /// this is the first layer).
    fn backward(&self, x: &[f32], dz: &[f32], grad: &mut [f32], want_dx: bool) -> Option<Vec<f32>> {
        let batch = x.len() / self.inp;
        grad.fill(0.0);
        let (gw, gb) = grad.split_at_mut(self.out * self.inp);
        for b in 0..batch {
            let xb = &x[b * self.inp..(b + 1) * self.inp];
            for o in 0..self.out {
                let d = dz[b * self.out + o];
                axpy(d, xb, &mut gw[o * self.inp..(o + 1) * self.inp]);
                gb[o] += d;
            }
        }
        want_dx.then(|| {
            let mut dx = vec![0f32; batch * self.inp];
            for b in 0..batch {
                for o in 0..self.out {
                    axpy(dz[b * self.out + o], self.w(o), &mut dx[b * self.inp..(b + 1) * self.inp]);
                }
            }
            dx
        })
    }
}

/// A dot product in eight lanes, so the compiler vectorises it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Which layers each bucket holds, filled from the last layer back (the order in which
/// back-propagation produces gradients), each bucket up to `cap` bytes but at least one
/// layer.
fn buckets(layers: &[Layer], cap: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for l in (0..layers.len()).rev() {
        let b = layers[l].len() * 4;
        match out.last_mut() {
            Some(cur) if bytes + b <= cap => {
                cur.push(l);
                bytes += b;
            }
            _ => {
                out.push(vec![l]);
                bytes = b;
            }
        }
    }
    out
}

/// How gradients reach the other ranks.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// Each bucket's all-reduce starts as soon as the bucket is full.
    Overlap,
    /// All all-reduces after the whole backward pass, one after another.
    AfterBackward,
    /// No communication: the compute floor (ranks drift apart; weights not compared).
    ComputeOnly,
}

/// A model and its bucketed gradient buffers.
struct Model {
    layers: Vec<Layer>,
    buckets: Vec<Vec<usize>>,
    grads: Vec<Vec<f32>>,
}

impl Model {
    fn new(o: &Opts) -> Model {
        let d = dims(o);
        let mut rng = Rng(42);
        let layers: Vec<Layer> = d.windows(2).map(|w| Layer::new(w[0], w[1], &mut rng)).collect();
        let buckets = buckets(&layers, o.bucket_bytes);
        let grads = buckets.iter().map(|ls| vec![0f32; ls.iter().map(|&l| layers[l].len()).sum()]).collect();
        Model { layers, buckets, grads }
    }

    /// Where layer `l`'s gradient sits: (bucket, offset).
    fn slot(&self, l: usize) -> (usize, usize) {
        for (b, ls) in self.buckets.iter().enumerate() {
            let mut off = 0;
            for &m in ls {
                if m == l {
                    return (b, off);
                }
                off += self.layers[m].len();
            }
        }
        unreachable!("every layer is in a bucket")
    }

    /// The output for a batch `x`.
    fn predict(&self, x: &[f32]) -> Vec<f32> {
        let nl = self.layers.len();
        let mut h = x.to_vec();
        for (l, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h);
            if l + 1 < nl {
                h.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        h
    }

    /// Mean squared error on a held-out batch (the same on every rank).
    fn eval_loss(&self, task: &Task) -> f32 {
        let (x, y) = task.batch(usize::MAX >> 24, usize::MAX >> 24, 256);
        let out = self.predict(&x);
        out.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / out.len() as f32
    }

    /// A hash of every parameter's bits.
    fn fingerprint(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for l in &self.layers {
            for p in &l.params {
                h = (h ^ u64::from(p.to_bits())).wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    }
}

/// The synthetic task: a fixed random linear "teacher" maps inputs to targets; the
/// student learns it. Each rank draws its own shard of each step's batch.
struct Task {
    teacher: Layer,
}

impl Task {
    fn new(o: &Opts) -> Task {
        let d = dims(o);
        let mut rng = Rng(7);
        Task { teacher: Layer::new(d[0], *d.last().unwrap(), &mut rng) }
    }

    fn batch(&self, step: usize, rank: usize, batch: usize) -> (Vec<f32>, Vec<f32>) {
        let mut rng = Rng(((step as u64) << 20) ^ rank as u64 ^ 0xdead_beef);
        let x: Vec<f32> = (0..batch * self.teacher.inp).map(|_| rng.uniform()).collect();
        let y = self.teacher.forward(&x);
        (x, y)
    }
}

/// One training step on this rank's shard of the batch.
fn step(comm: &mut Comm, m: &mut Model, task: &Task, o: &Opts, step: usize, mode: Mode) -> oxccl::Result<()> {
    const LR: f32 = 0.2;
    const MOMENTUM: f32 = 0.9;
    let (x, y) = task.batch(step, comm.rank(), o.batch);
    // Forward, keeping every layer's input.
    let mut acts = vec![x];
    let nl = m.layers.len();
    for (l, layer) in m.layers.iter().enumerate() {
        let mut z = layer.forward(acts.last().unwrap());
        if l + 1 < nl {
            z.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        acts.push(z);
    }
    let out = acts.pop().unwrap();
    let n = out.len() as f32;
    let dz: Vec<f32> = out.iter().zip(&y).map(|(a, b)| 2.0 * (a - b) / n).collect();

    // Backward, from the last layer: a bucket's all-reduce starts once its last layer
    // (in backward order) has its gradient.
    let layers = &m.layers;
    let buckets = &m.buckets;
    let slots: Vec<(usize, usize)> = (0..nl).map(|l| m.slot(l)).collect();
    let mut grads: Vec<&mut Vec<f32>> = m.grads.iter_mut().collect();
    let backward = |l: usize, dz: &[f32], g: &mut [f32]| -> Option<Vec<f32>> {
        let mut d = layers[l].backward(&acts[l], dz, g, l > 0)?;
        // Through the ReLU of layer l-1's output.
        d.iter_mut().zip(&acts[l]).for_each(|(d, a)| {
            if *a <= 0.0 {
                *d = 0.0
            }
        });
        Some(d)
    };
    match mode {
        Mode::Overlap => {
            comm.scope(|s| -> oxccl::Result<()> {
                let mut dz = dz;
                let mut works = Vec::new();
                for (b, g) in buckets.iter().zip(grads.drain(..)) {
                    for &l in b {
                        let (_, off) = slots[l];
                        if let Some(d) = backward(l, &dz, &mut g[off..off + layers[l].len()]) {
                            dz = d;
                        }
                    }
                    works.push(s.all_reduce_in_place(g, ReduceOp::Avg)?);
                }
                for w in works {
                    w.wait()?;
                }
                Ok(())
            })??;
        }
        Mode::AfterBackward | Mode::ComputeOnly => {
            let mut dz = dz;
            for (b, g) in buckets.iter().zip(grads.iter_mut()) {
                for &l in b {
                    let (_, off) = slots[l];
                    if let Some(d) = backward(l, &dz, &mut g[off..off + layers[l].len()]) {
                        dz = d;
                    }
                }
            }
            if mode == Mode::AfterBackward {
                for g in grads {
                    comm.all_reduce_in_place(g, ReduceOp::Avg)?;
                }
            }
        }
    }
    // SGD with momentum.
    for (l, layer) in m.layers.iter_mut().enumerate() {
        let (b, off) = slots[l];
        let g = &m.grads[b][off..off + layer.len()];
        for ((p, v), g) in layer.params.iter_mut().zip(layer.velocity.iter_mut()).zip(g) {
            *v = MOMENTUM * *v + g;
            *p -= LR * *v;
        }
    }
    Ok(())
}

/// What one training run measured on this rank.
struct RunResult {
    first_loss: f32,
    last_loss: f32,
    step_times: Vec<Duration>,
    fingerprint: u64,
}

fn train(comm: &mut Comm, o: &Opts, mode: Mode) -> oxccl::Result<RunResult> {
    let mut m = Model::new(o);
    let task = Task::new(o);
    let before = m.eval_loss(&task);
    let mut times = Vec::new();
    for s in 0..o.steps {
        comm.barrier()?; // steps start together, so each step's time is the slowest rank's
        let t = Instant::now();
        step(comm, &mut m, &task, o, s, mode)?;
        times.push(t.elapsed());
    }
    // Without communication the ranks' models drift apart: report their mean.
    let mut l = [before, m.eval_loss(&task)];
    comm.all_reduce_in_place(&mut l, ReduceOp::Avg)?;
    Ok(RunResult { first_loss: l[0], last_loss: l[1], step_times: times, fingerprint: m.fingerprint() })
}

fn median_ms(t: &[Duration]) -> f64 {
    // The first steps warm caches and links; the median of the rest.
    let mut v: Vec<f64> = t.iter().skip(t.len().min(3)).map(|d| d.as_secs_f64() * 1e3).collect();
    if v.is_empty() {
        v = t.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One rank's whole run; returns an error text on any failed check.
fn rank_main(mut comm: Comm, o: Opts) -> Result<(), String> {
    let err = |e: oxccl::Error| e.to_string();
    let (me, n) = (comm.rank(), comm.size());
    let model = Model::new(&o);
    if me == 0 {
        let params: usize = model.layers.iter().map(Layer::len).sum();
        let sizes: Vec<String> =
            model.grads.iter().map(|g| format!("{:.1} MiB", (g.len() * 4) as f64 / (1 << 20) as f64)).collect();
        println!(
            "# data_parallel: {n} ranks, {} layers {:?}, {params} parameters, batch {} per rank, {} steps",
            model.layers.len(),
            dims(&o),
            o.batch,
            o.steps
        );
        println!("# gradient buckets (backward order): {}", sizes.join(", "));
    }
    let mut results = Vec::new();
    for mode in [Mode::Overlap, Mode::AfterBackward, Mode::ComputeOnly] {
        let r = train(&mut comm, &o, mode).map_err(err)?;
        if mode != Mode::ComputeOnly {
            // Every rank must hold the same bits.
            let mine = [r.fingerprint];
            let mut all = vec![0u64; n];
            comm.all_gather(&mine, &mut all).map_err(err)?;
            if let Some(r2) = all.iter().position(|&f| f != mine[0]) {
                return Err(format!("{mode:?}: rank {me}'s weights differ from rank {r2}'s"));
            }
            // (NaN fails too.)
            if r.last_loss.partial_cmp(&(0.9 * r.first_loss)) != Some(std::cmp::Ordering::Less) {
                return Err(format!("{mode:?}: the loss did not fall: {} -> {}", r.first_loss, r.last_loss));
            }
        }
        // Step time: the slowest rank's median.
        let mut t = [median_ms(&r.step_times)];
        comm.all_reduce_in_place(&mut t, ReduceOp::Max).map_err(err)?;
        if me == 0 {
            println!(
                "{:<14} held-out loss {:.4} -> {:.4}   step {:8.2} ms (median, slowest rank)",
                format!("{mode:?}"),
                r.first_loss,
                r.last_loss,
                t[0]
            );
        }
        results.push((mode, r.fingerprint, t[0]));
    }
    if results[0].1 != results[1].1 {
        return Err("overlapped and after-backward schedules gave different weights".into());
    }
    if me == 0 {
        let (ov, after, comp) = (results[0].2, results[1].2, results[2].2);
        println!(
            "overlap speed-up: {:.2}x ({after:.2} ms -> {ov:.2} ms per step; compute alone {comp:.2} ms); \
             weights bit-identical on all ranks and in both schedules",
            after / ov
        );
    }
    Ok(())
}

/// Whether a launcher started this process as one rank of a job.
fn launched() -> bool {
    oxccl::internals::launcher::launched(|k| std::env::var(k).ok())
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("data_parallel: {e}");
            }
            eprintln!("usage: data_parallel [-t THREADS] [-s STEPS] [-w WIDTH] [-l LAYERS] [-B BATCH] [-k BUCKET_KIB]");
            std::process::exit(2);
        }
    };
    let failed = if launched() && o.threads.is_none() {
        // With the `mpi` feature, a bare mpirun works: MPI hands out the unique id.
        #[cfg(feature = "mpi")]
        let joined = Comm::from_env_or_mpi(&oxccl::Config::new());
        #[cfg(not(feature = "mpi"))]
        let joined = Comm::from_env();
        match joined {
            Ok(c) => rank_main(c, o).err().map(|e| vec![e]).unwrap_or_default(),
            Err(e) => vec![format!("joining the job: {e}")],
        }
    } else {
        match Comm::init_all(o.threads.unwrap_or(2)) {
            Ok(comms) => std::thread::scope(|t| {
                let hs: Vec<_> = comms.into_iter().map(|c| t.spawn(move || rank_main(c, o))).collect();
                hs.into_iter()
                    .filter_map(|h| match h.join() {
                        Ok(r) => r.err(),
                        Err(_) => Some("a rank panicked".into()),
                    })
                    .collect()
            }),
            Err(e) => vec![format!("creating the communicators: {e}")],
        }
    };
    if !failed.is_empty() {
        for e in &failed {
            eprintln!("data_parallel: FAILED: {e}");
        }
        std::process::exit(1);
    }
}
