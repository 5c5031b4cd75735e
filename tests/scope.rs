//! Non-blocking operations ([`Comm::scope`]): several outstanding operations complete in
//! issue order with the right results, communicators progress independently (opposite
//! issue orders on two communicators do not deadlock), a handle can be polled and waited
//! with a limit, argument errors come back at issue, and failures of operations whose
//! handles were dropped surface when the scope ends.

mod common;

use std::time::Duration;

use common::run_ranks;
use oxccl::{Comm, Config, ErrorKind, ReduceOp};

const DEADLINE: Duration = Duration::from_secs(60);

/// Rank `r`'s input element `i` for buffer `b`: small integers, exact in f32 sums.
fn val(b: usize, r: usize, i: usize) -> f32 {
    ((b * 31 + r * 7 + i) % 97) as f32
}

#[test]
fn outstanding_operations_complete_in_order_with_right_results() {
    const N: usize = 3;
    run_ranks(N, &Config::new(), DEADLINE, |mut c| {
        let me = c.rank();
        // Sizes from one element to past the slot size, so some operations take several
        // chunks while others queue behind them.
        let sizes = [1usize, 1000, 70_000, 3, 300_000, 64];
        let mut bufs: Vec<Vec<f32>> =
            sizes.iter().enumerate().map(|(b, &n)| (0..n).map(|i| val(b, me, i)).collect()).collect();
        let gsend: Vec<u32> = (0..5000).map(|i| (i * N + me) as u32).collect();
        let mut gathered = vec![0u32; 5000 * N];
        let mut bc = if me == 1 { (0..4096u64).collect::<Vec<_>>() } else { vec![0u64; 4096] };
        c.scope(|s| {
            let mut works = Vec::new();
            for b in bufs.iter_mut() {
                works.push(s.all_reduce_in_place(b, ReduceOp::Sum).unwrap());
            }
            let g = s.all_gather(&gsend, &mut gathered).unwrap();
            let w_bc = s.broadcast_in_place(&mut bc, 1).unwrap();
            // Wait in reverse: the last issued completing means all before it completed.
            let bc = w_bc.wait().unwrap();
            assert!(works.iter().all(|w| w.is_completed()), "an earlier operation is still pending");
            assert!(bc.iter().enumerate().all(|(i, &x)| x == i as u64), "broadcast");
            let gathered = g.wait().unwrap();
            for r in 0..N {
                let blk = &gathered[r * 5000..(r + 1) * 5000];
                assert!(blk.iter().enumerate().all(|(i, &x)| x == (i * N + r) as u32), "all_gather block {r}");
            }
            for (b, w) in works.into_iter().enumerate().rev() {
                let got = w.wait().unwrap();
                for (i, &x) in got.iter().enumerate() {
                    let want: f32 = (0..N).map(|r| val(b, r, i)).sum();
                    assert_eq!(x, want, "buffer {b} element {i}");
                }
            }
        })
        .unwrap();
        // The blocking API works after a scope, on the same communicator.
        let mut x = [me as u64 + 1];
        c.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
        assert_eq!(x[0], 6);
    });
}

#[test]
fn every_collective_has_a_non_blocking_form() {
    const N: usize = 4;
    run_ranks(N, &Config::new(), DEADLINE, |mut c| {
        let me = c.rank();
        let send: Vec<i64> = (0..8).map(|i| (me * 100 + i) as i64).collect();
        let (mut ar, mut red, mut bc, mut ag) = (vec![0i64; 8], vec![0i64; 8], vec![0i64; 8], vec![0i64; 8 * N]);
        let (mut rs, mut a2a, mut got) = (vec![0i64; 2], vec![0i64; 8], vec![0i64; 8]);
        c.scope(|s| {
            let w1 = s.all_reduce(&send, &mut ar, ReduceOp::Max).unwrap();
            let w2 = s.reduce(&send, &mut red, ReduceOp::Sum, 2).unwrap();
            let w3 = s.broadcast(&send, &mut bc, 3).unwrap();
            let w4 = s.all_gather(&send, &mut ag).unwrap();
            let w5 = s.reduce_scatter(&send, &mut rs, ReduceOp::Min).unwrap();
            let w6 = s.all_to_all(&send, &mut a2a).unwrap();
            // A ring of sends and receives: a send and a receive issued separately are
            // separate operations, so the send must not wait for the receive's peer.
            let (to, from) = ((me + 1) % N, (me + N - 1) % N);
            let (w7, w8) = if me % 2 == 0 {
                (Some(s.send(&send, to).unwrap()), s.recv(&mut got, from).unwrap())
            } else {
                let w8 = s.recv(&mut got, from).unwrap();
                (Some(s.send(&send, to).unwrap()), w8)
            };
            let w9 = s.barrier().unwrap();
            let ar = w1.wait().unwrap();
            assert_eq!(ar, &[300, 301, 302, 303, 304, 305, 306, 307]);
            let red = w2.wait().unwrap();
            if me == 2 {
                let want: Vec<i64> = (0..8).map(|i| (0..N).map(|r| (r * 100 + i) as i64).sum()).collect();
                assert_eq!(red, &want[..]);
            }
            assert_eq!(w3.wait().unwrap(), &[300, 301, 302, 303, 304, 305, 306, 307]);
            let ag = w4.wait().unwrap();
            assert!(ag.iter().enumerate().all(|(j, &x)| x == ((j / 8) * 100 + j % 8) as i64));
            assert_eq!(w5.wait().unwrap(), &[(2 * me) as i64, (2 * me + 1) as i64]);
            let a2a = w6.wait().unwrap();
            let want: Vec<i64> = (0..8).map(|j| ((j / 2) * 100 + 2 * me + j % 2) as i64).collect();
            assert_eq!(a2a, &want[..]);
            w7.unwrap().wait().unwrap();
            let got = w8.wait().unwrap();
            assert!(got.iter().enumerate().all(|(i, &x)| x == (from * 100 + i) as i64), "recv from {from}");
            w9.wait().unwrap();
        })
        .unwrap();
    });
}

/// Ranks issue on two communicators in opposite orders and wait for the later one
/// first: with one progress thread per communicator, neither waits on the other.
#[test]
fn communicators_progress_independently() {
    let (mut a, mut b) = (Comm::init_all(2).unwrap(), Comm::init_all(2).unwrap());
    let (a1, b1) = (a.pop().unwrap(), b.pop().unwrap());
    let (a0, b0) = (a.pop().unwrap(), b.pop().unwrap());
    let rank = |mut ca: Comm, mut cb: Comm, a_first: bool| {
        move || {
            let me = ca.rank() as u32;
            let mut xa = vec![me + 1; 200_000];
            let mut xb = vec![me + 10; 200_000];
            ca.scope(|sa| {
                cb.scope(|sb| {
                    let (wa, wb) = if a_first {
                        let wa = sa.all_reduce_in_place(&mut xa, ReduceOp::Sum).unwrap();
                        (wa, sb.all_reduce_in_place(&mut xb, ReduceOp::Sum).unwrap())
                    } else {
                        let wb = sb.all_reduce_in_place(&mut xb, ReduceOp::Sum).unwrap();
                        (sa.all_reduce_in_place(&mut xa, ReduceOp::Sum).unwrap(), wb)
                    };
                    let (first, second) = if a_first { (wb.wait(), wa.wait()) } else { (wa.wait(), wb.wait()) };
                    let (ra, rb) = if a_first { (second, first) } else { (first, second) };
                    assert!(ra.unwrap().iter().all(|&x| x == 3));
                    assert!(rb.unwrap().iter().all(|&x| x == 21));
                })
                .unwrap()
            })
            .unwrap();
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    for (ca, cb, first) in [(a0, b0, true), (a1, b1, false)] {
        let tx = tx.clone();
        let f = rank(ca, cb, first);
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r.is_ok());
        });
    }
    for _ in 0..2 {
        let ok = rx.recv_timeout(DEADLINE).expect("deadline: two communicators deadlocked");
        assert!(ok, "a rank panicked");
    }
}

#[test]
fn handles_can_be_polled_and_waited_with_a_limit() {
    run_ranks(2, &Config::new(), DEADLINE, |mut c| {
        let me = c.rank();
        let mut x = vec![1.0f64; 1000];
        if me == 1 {
            std::thread::sleep(Duration::from_millis(300));
        }
        c.scope(|s| {
            let mut w = s.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
            if me == 0 {
                // Rank 1 has not issued yet: the operation cannot be complete.
                assert!(!w.is_completed());
                w = match w.wait_timeout(Duration::from_millis(20)) {
                    Ok(r) => panic!("completed without its peer: {:?}", r.map(|b| b[0])),
                    Err(w) => w,
                };
            }
            let got = loop {
                match w.wait_timeout(Duration::from_millis(50)) {
                    Ok(r) => break r.unwrap(),
                    Err(back) => w = back,
                }
            };
            assert!(got.iter().all(|&v| v == 2.0));
        })
        .unwrap();
    });
}

#[test]
fn argument_errors_come_back_at_issue() {
    let mut comms = Comm::init_all(3).unwrap();
    let c = &mut comms[1];
    let a = vec![0f32; 10];
    let (mut b, mut b2) = (vec![0f32; 11], vec![0f32; 11]);
    c.scope(|s| {
        match s.all_reduce(&a, &mut b, ReduceOp::Sum) {
            Err(e) if e.kind() == ErrorKind::InvalidArgument => {
                let m = e.message().to_string();
                assert!(m.contains("send buffer has 10 elements, recv buffer 11"), "{m}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(matches!(s.reduce(&a, &mut b2, ReduceOp::Sum, 3), Err(e) if e.kind() == ErrorKind::InvalidArgument));
        assert!(matches!(s.send(&a, 7), Err(e) if e.kind() == ErrorKind::InvalidArgument));
        // Nothing was issued, so the scope ends at once.
    })
    .unwrap();
}

/// An operation that fails and whose handle was dropped makes the scope return its error.
#[test]
fn a_dropped_handles_failure_surfaces_at_scope_end() {
    let mut comms = Comm::init_all(2).unwrap();
    let c = &mut comms[0];
    c.abort_handle().abort();
    let mut x = vec![1u8; 16];
    let r = c.scope(|s| {
        let _ = s.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
    });
    assert!(matches!(r, Err(ref e) if e.kind() == ErrorKind::Aborted), "{r:?}");
}

/// A panic in the scope's closure still waits for the issued operations (their buffers
/// are lent), and the communicator stays usable.
#[test]
fn a_panicking_scope_waits_for_its_operations() {
    run_ranks(2, &Config::new(), DEADLINE, |mut c| {
        let me = c.rank();
        let mut x = vec![me as u32 + 1; 100_000];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.scope(|s| {
                let _w = s.all_reduce_in_place(&mut x, ReduceOp::Sum).unwrap();
                if me == 0 {
                    panic!("deliberate");
                }
            })
        }));
        assert_eq!(r.is_err(), me == 0);
        assert!(x.iter().all(|&v| v == 3), "the all-reduce completed before the scope unwound");
        let mut y = [me as u32];
        c.all_reduce_in_place(&mut y, ReduceOp::Sum).unwrap();
        assert_eq!(y[0], 1);
    });
}

/// Abort from another thread while this thread waits on a work handle whose peer never
/// comes: the wait returns `Aborted` within 100 ms.
#[test]
fn abort_ends_a_wait_on_work_promptly() {
    let mut comms = Comm::init_all(2).unwrap();
    let mut c = comms.remove(0);
    let h = c.abort_handle();
    let mut x = vec![1u32; 1000];
    let aborted_at = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(150));
        let t = std::time::Instant::now();
        h.abort();
        t
    });
    let mut waited = None;
    let r = c
        .scope(|s| {
            let w = s.all_reduce_in_place(&mut x, ReduceOp::Sum)?;
            let r = w.wait().map(|_| ());
            waited = Some(std::time::Instant::now());
            r
        })
        .and_then(|r| r);
    let took = waited.unwrap().duration_since(aborted_at.join().unwrap());
    assert!(matches!(r, Err(ref e) if e.kind() == ErrorKind::Aborted), "{r:?}");
    assert!(took < std::time::Duration::from_millis(100), "the wait returned {took:?} after the abort");
    drop(comms);
}
