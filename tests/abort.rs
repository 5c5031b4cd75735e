//! Aborting a process-style communicator (bootstrap, shared memory, sentinel thread)
//! while a thread is blocked in it: the blocked call returns within 100 ms, the peer's
//! call fails with a remote error naming the aborting rank, and after ten rounds no
//! thread, file descriptor or `/dev/shm` segment is left. Alone in its test binary, so
//! that no other test's threads or descriptors blur the counts.

use std::time::{Duration, Instant};

use oxccl::{Comm, Config, ErrorKind};

/// Counts of this process's threads, open descriptors and oxccl shared-memory files.
fn resources() -> (usize, usize, usize) {
    let count = |d: &str| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    let shm = std::fs::read_dir("/dev/shm")
        .map(|r| r.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with("oxccl")).count())
        .unwrap_or(0);
    (count("/proc/self/task"), count("/proc/self/fd"), shm)
}

/// Process-style communicators (bootstrap, shared memory, sentinels) in threads of this
/// process: a rank blocked in a receive is aborted from another thread; its call returns
/// within 100 ms, the peer's with a remote error; after 10 rounds nothing is left.
#[test]
fn abort_unblocks_within_100_ms_and_leaks_nothing() {
    let round = || {
        let id = oxccl::UniqueId::new().unwrap();
        let cfg = Config::new().timeout(Duration::from_secs(20));
        let peer = {
            let (id, cfg) = (id, cfg.clone());
            std::thread::spawn(move || {
                let mut c = Comm::init_rank(&id, 1, 2, &cfg).unwrap();
                c.barrier().unwrap();
                let mut x = [0u8; 8];
                let t = Instant::now();
                let r = c.recv(&mut x, 0);
                (r, t.elapsed())
            })
        };
        let mut c = Comm::init_rank(&id, 0, 2, &cfg).unwrap();
        c.barrier().unwrap();
        let h = c.abort_handle();
        let (tx, rx) = std::sync::mpsc::channel();
        let blocked = std::thread::spawn(move || {
            let mut x = [0u8; 8];
            let r = c.recv(&mut x, 1);
            let _ = tx.send(Instant::now());
            (r, c)
        });
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        h.abort();
        let back = rx.recv_timeout(Duration::from_secs(5)).expect("the aborted call did not return");
        let took = back.duration_since(t);
        let (r, c) = blocked.join().unwrap();
        assert!(matches!(r, Err(ref e) if e.kind() == ErrorKind::Aborted), "{r:?}");
        assert!(took < Duration::from_millis(100), "abort took {took:?}");
        drop(c);
        let (pr, ptook) = peer.join().unwrap();
        match pr {
            Err(e) if e.kind() == ErrorKind::Remote => {
                let m = e.message().to_string();
                assert!(m.contains("rank 0") && m.contains("aborted"), "{m}")
            }
            other => panic!("the peer should see a remote abort: {other:?}"),
        }
        assert!(ptook < Duration::from_secs(2), "the peer saw the abort after {ptook:?}");
        took
    };
    round(); // warm-up: lazily created process-wide state
    std::thread::sleep(Duration::from_millis(100));
    let before = resources();
    let mut times = Vec::new();
    for _ in 0..10 {
        times.push(round());
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = resources();
    println!("abort → blocked call returned: {times:?}; (threads, fds, /dev/shm) before {before:?}, after {after:?}");
    assert_eq!(before, after, "threads, descriptors or /dev/shm segments leaked (before vs after)");
}
