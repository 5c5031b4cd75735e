//! The API's promises beyond arithmetic: wrong arguments are errors that say what is
//! wrong (never panics), count 0 completes everywhere, forced algorithms that do not apply
//! are errors, mismatched calls are detected, abort unblocks a waiting rank.

mod common;

use std::time::Duration;

use common::run_ranks;
use oxccl::{Algo, Comm, Config, ErrorKind, ReduceOp};

const DEADLINE: Duration = Duration::from_secs(60);

fn invalid_arg(r: oxccl::Result<()>, needle: &str) {
    match r {
        Err(e) if e.kind() == ErrorKind::InvalidArgument => {
            let m = e.message().to_string();
            assert!(m.contains(needle), "message '{m}' lacks '{needle}'")
        }
        other => panic!("expected InvalidArgument containing '{needle}', got {other:?}"),
    }
}

#[test]
fn communicators_move_between_threads() {
    fn is_send<T: Send>() {}
    is_send::<Comm>();
    is_send::<oxccl::AbortHandle>();
}

#[test]
fn wrong_lengths_and_ranks_are_clear_errors() {
    // Errors are detected before any communication, so one rank of four can test them
    // alone without hanging.
    let mut comms = Comm::init_all(4).unwrap();
    let c = &mut comms[1];
    let (a, mut b) = (vec![0f32; 10], vec![0f32; 11]);
    invalid_arg(c.all_reduce(&a, &mut b, ReduceOp::Sum), "send buffer has 10 elements, recv buffer 11");
    let mut g = vec![0f32; 30];
    invalid_arg(c.all_gather(&a, &mut g), "recv buffer has 30 elements, all_gather needs 40 (10 per rank x 4 ranks)");
    invalid_arg(c.reduce_scatter(&g, &mut b, ReduceOp::Sum), "reduce_scatter needs 44 (11 per rank x 4 ranks)");
    invalid_arg(c.broadcast(&a, &mut b, 1), "root's send buffer has 10 elements");
    invalid_arg(c.broadcast_in_place(&mut b, 4), "root 4 is out of range for a communicator of 4 ranks");
    invalid_arg(c.reduce(&a, &mut b, ReduceOp::Max, 9), "root 9 is out of range");
    invalid_arg(c.send(&a, 4), "peer 4 is out of range");
    invalid_arg(c.all_to_all(&a, &mut [0f32; 10]), "does not split into 4 equal blocks");
    invalid_arg(c.all_gather_in_place(&mut b), "does not split into 4 equal blocks");
    invalid_arg(c.gather(&a, &mut b, 1), "gather needs 40");
    invalid_arg(c.scatter(&a, &mut b, 1), "scatter needs 44");
    // A PreMulSum scalar must have the call's data type.
    invalid_arg(c.all_reduce(&a, &mut [0f32; 10], ReduceOp::pre_mul_sum(2.0f64)), "PreMulSum scalar has type double");
    // Sends to self must pair with receives from self.
    match c.group(|g| g.send(&a, 1)) {
        Err(e) if e.kind() == ErrorKind::InvalidUsage => {
            let m = e.message().to_string();
            assert!(m.contains("sends to self"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(Comm::init_all(0), Err(ref e) if e.kind() == ErrorKind::InvalidArgument));
}

#[test]
fn count_zero_completes_on_every_rank() {
    run_ranks(3, &Config::new(), DEADLINE, |mut c| {
        let e: [f32; 0] = [];
        c.all_reduce(&e, &mut [], ReduceOp::Sum).unwrap();
        c.all_gather(&e, &mut []).unwrap();
        c.reduce_scatter(&e, &mut [], ReduceOp::Sum).unwrap();
        c.broadcast(&e, &mut [], 0).unwrap();
        c.all_to_all(&e, &mut []).unwrap();
        c.send(&e, (c.rank() + 1) % 3).unwrap();
        c.barrier().unwrap();
    });
}

#[test]
fn send_to_self_in_a_group_is_a_copy() {
    run_ranks(2, &Config::new(), DEADLINE, |mut c| {
        let me = c.rank();
        let a = vec![me as u32 + 7; 100];
        let mut b = vec![0u32; 100];
        c.group(|g| {
            g.send(&a, me)?;
            g.recv(&mut b, me)
        })
        .unwrap();
        assert_eq!(b, a);
    });
}

#[test]
fn forced_algorithm_that_does_not_apply_is_an_error() {
    let cfg = Config::new().algo(Algo::Doubling);
    run_ranks(2, &cfg, DEADLINE, |mut c| {
        let mut v = vec![1i32; 5];
        c.all_reduce_in_place(&mut v, ReduceOp::Sum).unwrap();
        assert_eq!(v, [2; 5]);
        match c.broadcast_in_place(&mut v, 0) {
            Err(e) if e.kind() == ErrorKind::InvalidUsage => {
                let m = e.message().to_string();
                assert!(m.contains("cannot run broadcast"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        // Barrier and point-to-point are not affected by a plain forced algorithm.
        c.barrier().unwrap();
    });
}

#[test]
fn mismatched_calls_are_detected_not_reduced() {
    let cfg = Config::new().timeout(Duration::from_secs(5));
    let out = run_ranks(2, &cfg, DEADLINE, |mut c| {
        let n = if c.rank() == 0 { 1000 } else { 1001 };
        let send = vec![1f32; n];
        let mut recv = vec![0f32; n];
        c.all_reduce(&send, &mut recv, ReduceOp::Sum)
    });
    // At least the rank that receives first sees the mismatch; nobody gets a result.
    let msgs: Vec<String> = out.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
    assert_eq!(msgs.len(), 2, "both ranks must fail: {out:?}");
    assert!(
        msgs.iter().any(|m| m.contains("count=1000") && m.contains("count=1001")),
        "the error names both calls: {msgs:?}"
    );
}

#[test]
fn a_lone_rank_times_out_naming_its_peer() {
    let cfg = Config::new().timeout(Duration::from_millis(300));
    let out = run_ranks(2, &cfg, DEADLINE, |mut c| {
        if c.rank() == 0 {
            let mut v = vec![1f64; 10];
            Some(c.all_reduce_in_place(&mut v, ReduceOp::Sum))
        } else {
            None
        }
    });
    match &out[0] {
        Some(Err(e)) if e.kind() == ErrorKind::Timeout => assert_eq!(e.waiting_for(), &[1]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn abort_unblocks_a_waiting_rank() {
    let mut comms = Comm::init_all(2).unwrap();
    let mut c0 = comms.remove(0);
    let h = c0.abort_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut v = vec![0u8; 4];
        let _ = tx.send(c0.all_reduce_in_place(&mut v, ReduceOp::Sum));
    });
    std::thread::sleep(Duration::from_millis(100));
    let t0 = std::time::Instant::now();
    h.abort();
    let r = rx.recv_timeout(DEADLINE).expect("deadline: the aborted rank is still blocked");
    assert!(matches!(r, Err(ref e) if e.kind() == ErrorKind::Aborted), "{r:?}");
    assert!(t0.elapsed() < Duration::from_millis(500), "abort took {:?}", t0.elapsed());
}

#[test]
fn collectives_and_point_to_point_in_one_group() {
    let out = run_ranks(3, &Config::new(), DEADLINE, |mut c| {
        let (me, n) = (c.rank(), c.size());
        let big = vec![me as f32 + 1.0; 100_000];
        let mut sum = vec![0f32; big.len()];
        let mine = [me as i64; 3];
        let mut all = [0i64; 9];
        let token = [me as u8; 70_000];
        let mut got = [0u8; 70_000];
        c.group(|g| {
            g.all_reduce(&big, &mut sum, ReduceOp::Sum)?;
            g.send(&token, (me + 1) % n)?;
            g.all_gather(&mine, &mut all)?;
            g.recv(&mut got, (me + n - 1) % n)
        })
        .unwrap();
        assert!(sum.iter().all(|&x| x == 6.0));
        assert_eq!(all, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
        assert!(got.iter().all(|&b| b as usize == (me + n - 1) % n));
    });
    let _ = out;
}

/// `Comm::split` as `ncclCommSplit`: groups by colour, ordered by key then parent rank,
/// no communicator for no colour, nested splits, children that outlive the parent.
#[test]
fn split_groups_by_colour_and_orders_by_key() {
    const N: usize = 6;
    run_ranks(N, &Config::new(), DEADLINE, |mut c| {
        let me = c.rank();
        // Colours {0, 3}, {1, 4}, {2, 5}; keys reversed, so the higher parent rank is
        // rank 0 of its group.
        let mut sub = c.split(Some((me % 3) as u32), -(me as i32)).unwrap().expect("a colour gives a communicator");
        assert_eq!((sub.size(), sub.rank()), (2, if me < 3 { 1 } else { 0 }));
        let mut x = [me as u64 * 10];
        sub.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
        assert_eq!(x[0], ((me % 3) * 10 + (me % 3 + 3) * 10) as u64);
        // Rank 0 of the group broadcasts its parent rank: that is the higher one.
        let mut who = [me as u32];
        sub.broadcast_in_place(&mut who, 0).unwrap();
        assert_eq!(who[0] as usize, me % 3 + 3);

        // Ranks 0 and 1 stay out; the other four form one group, equal keys ordered by
        // parent rank.
        let color = if me < 2 { None } else { Some(7) };
        let quad = c.split(color, 0).unwrap();
        assert_eq!(quad.is_some(), me >= 2);
        // The parent goes first; its children keep working.
        drop(c);
        if let Some(mut q) = quad {
            assert_eq!((q.size(), q.rank()), (4, me - 2));
            // A split of a split.
            let mut pair = q.split(Some((q.rank() / 2) as u32), 0).unwrap().unwrap();
            let mut y = [me as i32];
            pair.all_reduce_in_place(&mut y, ReduceOp::Max).unwrap();
            assert_eq!(y[0] as usize, if me < 4 { 3 } else { 5 });
            let mut z = [1i32];
            q.all_reduce_in_place(&mut z, ReduceOp::Sum).unwrap();
            assert_eq!(z[0], 4);
        }
        sub.barrier().unwrap();
    });
}

#[test]
fn split_with_a_bad_colour_fails_on_every_rank() {
    let out = run_ranks(3, &Config::new(), DEADLINE, |mut c| {
        let color = if c.rank() == 2 { Some(Comm::MAX_COLOR + 1) } else { Some(0) };
        match c.split(color, 0) {
            Err(e) if e.kind() == ErrorKind::InvalidArgument => e.message().to_string(),
            other => panic!("expected InvalidArgument, got {:?}", other.map(|c| c.map(|c| c.size()))),
        }
    });
    for m in out {
        assert!(m.contains("rank 2 gave colour 2147483648"), "{m}");
    }
}
