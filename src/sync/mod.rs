//! Waiting without starving peers: doorbells (futex words a rank sleeps on) and the
//! spin-then-yield-then-sleep backoff every blocking wait in oxccl goes through.
//!
//! This module owns *how* a rank waits. It does not know what it waits for: callers pass a
//! readiness check.
//!
//! Machines running collectives are often oversubscribed (4 ranks on 2 cores here), and
//! a busy-wait that starves the peer it waits for costs a whole scheduler tick. So a wait
//! spins a few `pause`s, then calls `sched_yield`, and after a while sleeps on the rank's
//! [`Doorbell`], which every producer rings after publishing data for that rank.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::sys::{futex, membarrier};
use std::time::{Duration, Instant};

/// The futex words of one doorbell. `#[repr(C)]` with fixed-size atomics so it can live
/// in shared memory mapped by several processes.
#[repr(C, align(64))]
#[derive(Default)]
pub struct BellWords {
    /// Bumped by every ring that found a sleeper; the sleeper's futex word.
    epoch: AtomicU32,
    /// Non-zero while the owner is (about to be) asleep.
    sleeping: AtomicU32,
}

/// A rank's wake-up word, shared with every peer that produces data for it or returns
/// credits to it.
///
/// The owner sleeps only after announcing it in `sleeping` and re-checking its condition;
/// a producer publishes its data, then looks at `sleeping`. With both sides fenced (the
/// sleeper with `membarrier`, see [`membarrier`]), either the sleeper sees the data or the
/// producer sees the sleeper.
#[derive(Clone)]
pub struct Doorbell {
    words: *const BellWords,
    shared: bool,
    _keep: std::sync::Arc<dyn Send + Sync>,
}

// SAFETY: `words` points to atomics kept alive by `_keep`; atomics may be used from any
// thread.
unsafe impl Send for Doorbell {}
// SAFETY: as above; all access goes through atomic operations.
unsafe impl Sync for Doorbell {}

impl Doorbell {
    /// A doorbell in ordinary memory, for ranks that are threads of one process.
    pub fn new_private() -> Doorbell {
        let b = std::sync::Arc::new(BellWords::default());
        let words = &*b as *const BellWords;
        Doorbell { words, shared: false, _keep: b }
    }

    /// A doorbell at `words` inside memory kept alive by `keep`, shared between
    /// processes when `shared`.
    ///
    /// # Safety
    /// `words` must point to a valid, 64-byte aligned `BellWords` that stays mapped while
    /// `keep` lives.
    pub unsafe fn from_raw(words: *const BellWords, shared: bool, keep: std::sync::Arc<dyn Send + Sync>) -> Doorbell {
        Doorbell { words, shared, _keep: keep }
    }

    fn words(&self) -> &BellWords {
        // SAFETY: see the type's invariant: `words` is valid while `_keep` lives.
        unsafe { &*self.words }
    }

    /// Wakes the owner if it sleeps. Call after publishing (with `Release`) whatever the
    /// owner may be waiting for.
    #[inline]
    pub fn ring(&self) {
        membarrier::light();
        let w = self.words();
        if w.sleeping.load(Ordering::Relaxed) != 0 {
            self.wake();
        }
    }

    /// Wakes the owner unconditionally (used by abort).
    #[cold]
    pub fn wake(&self) {
        let w = self.words();
        w.epoch.fetch_add(1, Ordering::SeqCst);
        futex::wake_all(&w.epoch, self.shared);
    }

    /// Sleeps until rung, `timeout` elapses, or `ready()` is true. Only the owner calls it.
    pub fn sleep_unless(&self, timeout: Duration, ready: &mut dyn FnMut() -> bool) {
        let w = self.words();
        let epoch = w.epoch.load(Ordering::SeqCst);
        w.sleeping.store(1, Ordering::SeqCst);
        membarrier::heavy(self.shared);
        if !ready() {
            futex::wait(&w.epoch, epoch, timeout, self.shared);
        }
        w.sleeping.store(0, Ordering::Relaxed);
    }
}

/// Why a wait gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed.
    Timeout,
    /// The abort check returned true.
    Aborted,
    /// The stop check returned true.
    Stopped,
}

/// Tuning of the spin / yield / sleep backoff.
#[derive(Clone, Copy, Debug)]
pub struct BackoffConfig {
    /// Checks with a `pause` between them before the first yield.
    pub spins: u32,
    /// How long to keep yielding before sleeping on the doorbell.
    pub yield_for: Duration,
    /// Longest single sleep (abort and deadline are checked between sleeps).
    pub max_sleep: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { spins: 16, yield_for: Duration::from_micros(500), max_sleep: Duration::from_millis(50) }
    }
}

/// Waits until `ready()` returns true: spins, yields, then sleeps on `bell`.
///
/// Before each sleep, `stop()` may end the wait early (it returns true when the wait is
/// pointless, e.g. a peer died; the caller keeps the reason).
///
/// With `io`, the sleep phase blocks in it (a wait for sockets) instead of on the
/// doorbell. `aborted()` is polled between sleeps and after yields; `timeout` (counted from the end
/// of the spin phase, so a wait that ends while spinning never reads the clock) bounds the
/// wait.
pub fn wait_until(
    cfg: &BackoffConfig,
    bell: &Doorbell,
    timeout: Option<Duration>,
    aborted: &dyn Fn() -> bool,
    ready: &mut dyn FnMut() -> bool,
    stop: &mut dyn FnMut() -> bool,
    io: Option<&dyn Fn(Duration)>,
) -> Result<(), WaitError> {
    for _ in 0..cfg.spins {
        if ready() {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    let start = Instant::now();
    let deadline = timeout.map(|t| start + t);
    let mut iter = 0u32;
    loop {
        if ready() {
            return Ok(());
        }
        iter = iter.wrapping_add(1);
        std::thread::yield_now();
        if !iter.is_multiple_of(16) {
            continue;
        }
        let now = Instant::now();
        if aborted() {
            return Err(WaitError::Aborted);
        }
        if deadline.is_some_and(|d| now >= d) {
            return Err(WaitError::Timeout);
        }
        if now.duration_since(start) >= cfg.yield_for {
            break;
        }
    }
    loop {
        if ready() {
            return Ok(());
        }
        if aborted() {
            return Err(WaitError::Aborted);
        }
        if stop() {
            return Err(WaitError::Stopped);
        }
        let mut nap = cfg.max_sleep;
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                return Err(WaitError::Timeout);
            }
            nap = nap.min(d - now);
        }
        match io {
            // Arrivals on sockets ring no doorbell: block in the socket wait instead.
            Some(io) => io(nap),
            None => bell.sleep_unless(nap, ready),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn ring_wakes_a_sleeper() {
        let bell = Doorbell::new_private();
        let flag = Arc::new(AtomicBool::new(false));
        let (b2, f2) = (bell.clone(), flag.clone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            f2.store(true, Ordering::Release);
            b2.ring();
        });
        let cfg = BackoffConfig { spins: 1, yield_for: Duration::ZERO, max_sleep: Duration::from_secs(10) };
        let t0 = Instant::now();
        let r = wait_until(
            &cfg,
            &bell,
            Some(Duration::from_secs(10)),
            &|| false,
            &mut || flag.load(Ordering::Acquire),
            &mut || false,
            None,
        );
        assert_eq!(r, Ok(()));
        assert!(t0.elapsed() < Duration::from_secs(5), "the ring did not wake the sleeper");
        t.join().unwrap();
    }

    #[test]
    fn deadline_and_abort_end_a_wait() {
        let bell = Doorbell::new_private();
        let cfg = BackoffConfig::default();
        let r = wait_until(&cfg, &bell, Some(Duration::from_millis(20)), &|| false, &mut || false, &mut || false, None);
        assert_eq!(r, Err(WaitError::Timeout));
        let r = wait_until(&cfg, &bell, None, &|| true, &mut || false, &mut || false, None);
        assert_eq!(r, Err(WaitError::Aborted));
        let r = wait_until(&cfg, &bell, None, &|| false, &mut || false, &mut || true, None);
        assert_eq!(r, Err(WaitError::Stopped));
    }
}
