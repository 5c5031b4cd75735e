//! An in-memory driver that runs the schedules of every rank at once, without threads or
//! memory, in a random interleaving, over bounded queues. Elements are symbolic: each
//! records which input element it stands for and which ranks contributed to it, so the
//! tests catch a lost, doubled or misplaced contribution, a deadlock, a link a stream did
//! not declare, and any out-of-bounds span.

use std::collections::{HashMap, HashSet, VecDeque};

use super::*;

/// A symbolic element: input index `idx` of the ranks in `mask`, finalized `fin` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sym {
    pub idx: usize,
    pub mask: u64,
    pub fin: u8,
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

struct SimStream {
    sched: Schedule,
    cur: Option<Step>,
    declared: HashSet<(Rank, u8, bool)>,
}

/// Runs `streams[r]` for every rank `r`; returns each rank's receive buffer.
pub fn run(
    n: usize,
    mut streams: Vec<Vec<Schedule>>,
    send: &[Vec<Sym>],
    recv_len: usize,
    reduces: bool,
    nslots: usize,
    seed: u64,
) -> Result<Vec<Vec<Option<Sym>>>, String> {
    let mut recv: Vec<Vec<Option<Sym>>> = vec![vec![None; recv_len]; n];
    let mut fifos: HashMap<(Rank, Rank, u8), VecDeque<Vec<Sym>>> = HashMap::new();
    let mut st: Vec<Vec<SimStream>> = streams
        .iter_mut()
        .enumerate()
        .map(|(me, v)| {
            v.drain(..)
                .map(|mut sched| {
                    let mut declared = HashSet::new();
                    sched.links(me, n, &mut |p, c, s| {
                        declared.insert((p, c, s));
                    });
                    let cur = sched.next_step();
                    SimStream { sched, cur, declared }
                })
                .collect()
        })
        .collect();
    let mut rng = Lcg(seed);
    loop {
        let mut progressed = false;
        let mut pending = 0;
        let start = rng.next() % n;
        for i in 0..n {
            let me = (start + i) % n;
            for s in st[me].iter_mut() {
                let Some(step) = s.cur else { continue };
                pending += 1;
                let mut ok = true;
                step.recv.for_each(me, n, |p| {
                    ok &= s.declared.contains(&(p, step.channel, false));
                });
                step.send.for_each(me, n, |p| {
                    ok &= s.declared.contains(&(p, step.channel, true));
                });
                if !ok {
                    return Err(format!("rank {me}: step {step:?} uses a link its stream did not declare"));
                }
                let ready = step.recv.all(me, n, |p| fifos.get(&(p, me, step.channel)).is_some_and(|q| !q.is_empty()))
                    && step.send.all(me, n, |p| fifos.get(&(me, p, step.channel)).is_none_or(|q| q.len() < nslots));
                // Randomly hold back ready steps to explore interleavings.
                if !ready || rng.next().is_multiple_of(3) {
                    continue;
                }
                let mut sources: Vec<(Rank, Vec<Sym>)> = Vec::new();
                let mut err = None;
                step.recv.for_each(me, n, |p| {
                    let m = fifos.get_mut(&(p, me, step.channel)).unwrap().pop_front().unwrap();
                    if m.len() != step.count {
                        err = Some(format!("rank {me} got {} elements from {p}, expected {}", m.len(), step.count));
                    }
                    sources.push((p, m));
                });
                if let Some(e) = err {
                    return Err(e);
                }
                if let Some(sp) = step.input {
                    let buf: Vec<Option<Sym>> = match sp.buf {
                        Buf::Send => send[me].iter().map(|s| Some(*s)).collect(),
                        Buf::Recv => recv[me].clone(),
                    };
                    let end = sp.offset + step.count;
                    if end > buf.len() {
                        return Err(format!("rank {me}: input {sp:?}+{} out of bounds {}", step.count, buf.len()));
                    }
                    let v: Option<Vec<Sym>> = buf[sp.offset..end].iter().copied().collect();
                    let v = v.ok_or_else(|| format!("rank {me}: input {sp:?} reads unwritten output"))?;
                    sources.push((me, v));
                }
                let result: Vec<Sym> = if step.count == 0 {
                    Vec::new()
                } else if sources.is_empty() {
                    return Err(format!("rank {me}: step with data but no source: {step:?}"));
                } else if reduces {
                    let mut acc = sources[0].1.clone();
                    for (_, src) in &sources[1..] {
                        for (a, b) in acc.iter_mut().zip(src) {
                            if a.idx != b.idx || a.mask & b.mask != 0 || a.fin + b.fin != 0 {
                                return Err(format!("rank {me}: bad combine {a:?} with {b:?} in {step:?}"));
                            }
                            a.mask |= b.mask;
                        }
                    }
                    if step.finalize {
                        acc.iter_mut().for_each(|a| a.fin += 1);
                    }
                    acc
                } else {
                    if sources.len() != 1 {
                        return Err(format!("rank {me}: copy step with {} sources: {step:?}", sources.len()));
                    }
                    sources.pop().unwrap().1
                };
                if let Some(sp) = step.output {
                    if sp.buf != Buf::Recv {
                        return Err(format!("rank {me}: output into the send buffer: {step:?}"));
                    }
                    if sp.offset + step.count > recv_len {
                        return Err(format!("rank {me}: output {sp:?}+{} out of bounds {recv_len}", step.count));
                    }
                    for (i, v) in result.iter().enumerate() {
                        recv[me][sp.offset + i] = Some(*v);
                    }
                }
                step.send.for_each(me, n, |p| {
                    fifos.entry((me, p, step.channel)).or_default().push_back(result.clone());
                });
                s.cur = s.sched.next_step();
                progressed = true;
            }
        }
        if pending == 0 {
            break;
        }
        if !progressed {
            // Random hold-back may stall a round; only a round where nothing is ready at all
            // is a deadlock.
            let any_ready = st.iter().enumerate().any(|(me, v)| {
                v.iter().any(|s| {
                    s.cur.is_some_and(|step| {
                        step.recv.all(me, n, |p| fifos.get(&(p, me, step.channel)).is_some_and(|q| !q.is_empty()))
                            && step
                                .send
                                .all(me, n, |p| fifos.get(&(me, p, step.channel)).is_none_or(|q| q.len() < nslots))
                    })
                })
            });
            if !any_ready {
                let stuck: Vec<String> = st
                    .iter()
                    .enumerate()
                    .flat_map(|(r, v)| v.iter().filter_map(move |s| s.cur.map(|c| format!("rank {r}: {c:?}"))))
                    .collect();
                return Err(format!("deadlock:\n{}", stuck.join("\n")));
            }
        }
    }
    if let Some(((s, d, c), q)) = fifos.iter().find(|(_, q)| !q.is_empty()) {
        return Err(format!("{} unread messages from {s} to {d} on channel {c}", q.len()));
    }
    Ok(recv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(rank: Rank, len: usize) -> Vec<Sym> {
        (0..len).map(|i| Sym { idx: i, mask: 1 << rank, fin: 0 }).collect()
    }

    /// Sizes of the send and receive buffers, and the expected receive buffer of `r`.
    fn expect(coll: &Collective, n: usize, r: Rank) -> (usize, usize, Vec<Option<Sym>>) {
        let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let red = |idx| Some(Sym { idx, mask: all, fin: 1 });
        let from = |idx, p: Rank| Some(Sym { idx, mask: 1 << p, fin: 0 });
        match *coll {
            Collective::AllReduce { count } => (count, count, (0..count).map(red).collect()),
            Collective::Reduce { count, root } => {
                (count, count, (0..count).map(|i| if r == root { red(i) } else { None }).collect())
            }
            Collective::Broadcast { count, root } => (count, count, (0..count).map(|i| from(i, root)).collect()),
            Collective::AllGather { count } => {
                (count, n * count, (0..n * count).map(|i| from(i % count.max(1), i / count.max(1))).collect())
            }
            Collective::ReduceScatter { count } => (n * count, count, (0..count).map(|i| red(r * count + i)).collect()),
            Collective::AllToAll { count } => (
                n * count,
                n * count,
                (0..n * count).map(|i| from(r * count + i % count.max(1), i / count.max(1))).collect(),
            ),
            Collective::Gather { count, root } => (
                count,
                n * count,
                (0..n * count)
                    .map(|i| if r == root { from(i % count.max(1), i / count.max(1)) } else { None })
                    .collect(),
            ),
            Collective::Scatter { count, root } => {
                (n * count, count, (0..count).map(|i| from(r * count + i, root)).collect())
            }
            _ => unreachable!(),
        }
    }

    fn check(coll: Collective, algo: Algo, n: usize, chunking: Chunking, seed: u64) {
        let mut streams = Vec::new();
        let mut sizes = (0, 0);
        let mut sends = Vec::new();
        let mut expected = Vec::new();
        for r in 0..n {
            let topo = Topo::new(r, (0..n).collect());
            let mut v = Vec::new();
            schedules(&coll, algo, &topo, chunking, &mut v);
            streams.push(v);
            let (s, rl, e) = expect(&coll, n, r);
            sizes = (s, rl);
            sends.push(input(r, s));
            expected.push(e);
        }
        for nslots in [2usize, 4] {
            let got = run(n, streams.clone(), &sends, sizes.1, coll.reduces(), nslots, seed)
                .unwrap_or_else(|e| panic!("{coll:?} {algo:?} n={n} {chunking:?}: {e}"));
            for r in 0..n {
                assert_eq!(got[r], expected[r], "{coll:?} {algo:?} n={n} rank {r} {chunking:?}");
            }
        }
    }

    const CHUNKS: [Chunking; 2] = [Chunking { chunk: 4, align: 1 }, Chunking { chunk: 8, align: 4 }];

    fn counts(c: &Chunking) -> Vec<usize> {
        vec![0, 1, 2, 3, c.chunk - 1, c.chunk, c.chunk + 1, 5 * c.chunk + 3, 17 * c.chunk]
    }

    #[test]
    fn every_collective_every_algorithm() {
        let mut seed = 1;
        for n in 1..=13 {
            for ch in CHUNKS {
                for count in counts(&ch) {
                    let mut colls = vec![
                        Collective::AllReduce { count },
                        Collective::AllGather { count },
                        Collective::ReduceScatter { count },
                        Collective::AllToAll { count },
                    ];
                    for root in [0, n / 2, n - 1] {
                        colls.push(Collective::Reduce { count, root });
                        colls.push(Collective::Broadcast { count, root });
                        colls.push(Collective::Gather { count, root });
                        colls.push(Collective::Scatter { count, root });
                    }
                    for coll in colls {
                        for algo in [Algo::Ring, Algo::Tree, Algo::OneShot, Algo::P2p, Algo::Doubling, Algo::Bruck] {
                            if algo.applies_to(&coll) {
                                seed += 1;
                                check(coll, algo, n, ch, seed);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rings_in_any_order() {
        // A permuted ring (as topology-aware ordering produces) must give the same result.
        let n = 6;
        let order = vec![3, 0, 5, 1, 4, 2];
        for coll in [
            Collective::AllReduce { count: 37 },
            Collective::AllGather { count: 9 },
            Collective::ReduceScatter { count: 9 },
            Collective::Broadcast { count: 20, root: 4 },
            Collective::Reduce { count: 20, root: 1 },
        ] {
            let mut streams = Vec::new();
            let mut sends = Vec::new();
            let mut expected = Vec::new();
            let mut rl = 0;
            for r in 0..n {
                let mut v = Vec::new();
                schedules(&coll, Algo::Ring, &Topo::new(r, order.clone()), Chunking { chunk: 4, align: 1 }, &mut v);
                streams.push(v);
                let (s, l, e) = expect(&coll, n, r);
                rl = l;
                sends.push(input(r, s));
                expected.push(e);
            }
            let got = run(n, streams, &sends, rl, coll.reduces(), 2, 7).unwrap();
            assert_eq!(got, expected, "{coll:?}");
        }
    }

    #[test]
    fn barrier_and_point_to_point() {
        for n in 2..=5 {
            let streams: Vec<Vec<Schedule>> = (0..n)
                .map(|r| {
                    let mut v = Vec::new();
                    schedules(&Collective::Barrier, Algo::P2p, &Topo::new(r, (0..n).collect()), CHUNKS[0], &mut v);
                    v
                })
                .collect();
            run(n, streams, &vec![vec![]; n], 0, false, 2, 3).unwrap();
        }
        // A ring of sends and receives, issued together as a group, must not deadlock even
        // when each message is many slots long.
        let n = 4;
        let count = 50;
        let streams: Vec<Vec<Schedule>> = (0..n)
            .map(|r| {
                let topo = Topo::new(r, (0..n).collect());
                let mut v = Vec::new();
                schedules(&Collective::Send { count, peer: (r + 1) % n }, Algo::P2p, &topo, CHUNKS[0], &mut v);
                schedules(&Collective::Recv { count, peer: (r + n - 1) % n }, Algo::P2p, &topo, CHUNKS[0], &mut v);
                v
            })
            .collect();
        let sends: Vec<Vec<Sym>> = (0..n).map(|r| input(r, count)).collect();
        let got = run(n, streams, &sends, count, false, 2, 5).unwrap();
        for (r, g) in got.iter().enumerate() {
            let p = (r + n - 1) % n;
            assert_eq!(g, &(0..count).map(|i| Some(Sym { idx: i, mask: 1 << p, fin: 0 })).collect::<Vec<_>>());
        }
    }

    #[test]
    fn hierarchical_all_reduce_over_hosts() {
        let layouts: Vec<Vec<Vec<Rank>>> = vec![
            vec![vec![0, 1], vec![2, 3]],
            vec![vec![0], vec![1, 2], vec![3, 4, 5]],
            vec![vec![0, 2, 4], vec![1, 3]],
        ];
        for hosts in layouts {
            let order: Vec<Rank> = hosts.iter().flatten().copied().collect();
            let n = order.len();
            for count in [1usize, 7, 33, 100] {
                for ch in CHUNKS {
                    let streams: Vec<Vec<Schedule>> = (0..n)
                        .map(|r| {
                            let mut v = Vec::new();
                            let topo = Topo::with_hosts(r, order.clone(), hosts.clone());
                            assert!(topo.hierarchical());
                            schedules(&Collective::AllReduce { count }, Algo::Hier, &topo, ch, &mut v);
                            v
                        })
                        .collect();
                    let sends: Vec<Vec<Sym>> = (0..n).map(|r| input(r, count)).collect();
                    let got = run(n, streams, &sends, count, true, 2, count as u64)
                        .unwrap_or_else(|e| panic!("{hosts:?}: {e}"));
                    let all = (1u64 << n) - 1;
                    for g in got {
                        assert_eq!(
                            g,
                            (0..count).map(|i| Some(Sym { idx: i, mask: all, fin: 1 })).collect::<Vec<_>>(),
                            "{hosts:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_simulator_catches_a_broken_schedule() {
        // A ring all-reduce whose ranks disagree on the count must not pass silently.
        let n = 3;
        let streams: Vec<Vec<Schedule>> = (0..n)
            .map(|r| {
                let mut v = Vec::new();
                let count = if r == 1 { 10 } else { 11 };
                schedules(
                    &Collective::AllReduce { count },
                    Algo::Ring,
                    &Topo::new(r, (0..n).collect()),
                    CHUNKS[0],
                    &mut v,
                );
                v
            })
            .collect();
        let sends: Vec<Vec<Sym>> = (0..n).map(|r| input(r, 11)).collect();
        assert!(run(n, streams, &sends, 11, true, 2, 9).is_err());
    }
}
