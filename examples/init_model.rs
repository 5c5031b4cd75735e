//! The per-rank work of init at any scale, for the init model (`scripts/init-model.py`):
//! for each job size, one rank's share of init run on synthetic peers (8 to a host) on
//! this core, as a rank of that job would run it: its CPU time (median of a few runs),
//! the heap it keeps per peer, and the bytes each rank adds to the two bootstrap
//! all-gathers. One line per size: `n cpu_ms kept_bytes info_bytes address_bytes`.
//!
//! ```text
//! cargo run --release --example init_model -- 8 256 1024 100000
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use oxccl::internals::init_model::rank_work;

/// The system allocator, counting the bytes live at any moment.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is only
// bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() -> oxccl::Result<()> {
    let mut sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![8, 16, 32, 64, 128, 256, 1024, 10_000, 100_000];
    }
    println!("# n cpu_ms kept_bytes info_bytes address_bytes");
    for n in sizes {
        let runs = if n >= 50_000 { 3 } else { 7 };
        let mut cpu = Vec::new();
        let mut kept = 0;
        let (mut info, mut addr) = (0, 0);
        for i in 0..runs {
            let before = LIVE.load(Ordering::Relaxed);
            let w = rank_work((n / 2 + i) % n, n, 8)?;
            kept = LIVE.load(Ordering::Relaxed).saturating_sub(before);
            cpu.push(w.cpu.as_secs_f64() * 1e3);
            (info, addr) = (w.info_bytes, w.address_bytes);
        }
        cpu.sort_by(f64::total_cmp);
        println!("{n} {:.4} {kept} {info} {addr}", cpu[cpu.len() / 2]);
    }
    Ok(())
}
