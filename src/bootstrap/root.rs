//! The bootstrap root: it collects every rank's introduction (rank, number of ranks,
//! listener), checks that the job is consistent, answers each rank with the listeners of
//! its partners (see [`super::mesh`]), and watches the ranks until each has joined them,
//! so that a rank dying in the middle of init fails the others at once. One thread and
//! one epoll over every connection, no thread or poll set per rank: the root's work per
//! rank is constant, so thousands of ranks cost it milliseconds.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::gate::Gate;
use super::mesh::partners;
use super::msg::{self, fail_message};
use super::{Secret, recv_frame};
use crate::error::{Error, Result};
use crate::log;
use crate::wire::{self, Enc, Kind};

pub(super) fn fail_payload(msg: &str) -> Vec<u8> {
    let mut e = Enc::new();
    e.bytes(msg.as_bytes());
    e.0
}

/// Roots running in this process, by job secret (see [`wait_root`]).
static ROOTS: std::sync::Mutex<Vec<(Secret, std::thread::JoinHandle<()>)>> = std::sync::Mutex::new(Vec::new());

/// Starts the root of a job at `listener` in a background thread; it serves one job and
/// exits (after `timeout` at the latest when ranks are missing).
pub fn spawn_root(listener: TcpListener, secret: Secret, timeout: Option<Duration>) -> Result<()> {
    let h = std::thread::Builder::new()
        .name("oxccl-root".into())
        .spawn(move || {
            let at = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            if let Err(e) = serve_root(listener, &secret, timeout) {
                log::warn(&format!("bootstrap root at {at}: {e}"));
            }
        })
        .map_err(|e| Error::system("starting the bootstrap root thread", e))?;
    if let Ok(mut roots) = ROOTS.lock() {
        roots.retain(|(_, h)| !h.is_finished());
        roots.push((secret, h));
    }
    Ok(())
}

/// Waits (at most `limit`) for this process's root of the job `secret`, if any, to finish
/// telling every rank what went wrong: a rank that fails at init and exits must not take
/// the root down before the others have heard from it.
pub fn wait_root(secret: &Secret, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let running = ROOTS.lock().is_ok_and(|r| r.iter().any(|(s, h)| s == secret && !h.is_finished()));
        if !running || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Arrived {
    rank: usize,
    addr: SocketAddr,
    conn: TcpStream,
}

fn serve_root(l: TcpListener, secret: &Secret, timeout: Option<Duration>) -> Result<()> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut gate = Gate::new(l, *secret, Kind::Hello, 256, "bootstrap root")?;
    let mut arrived: Vec<Arrived> = Vec::new();
    // Where each rank's arrival is in `arrived`, to refuse a second claim of a rank.
    let mut index: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let started = Instant::now();
    let cpu0 = crate::sys::thread_cpu_time();
    let mut first = None;
    let mut nranks: Option<usize> = None;
    let fail_all = |arrived: &mut Vec<Arrived>, msg: &str| {
        for a in arrived.iter_mut() {
            let _ = wire::send(&mut a.conn, Kind::Fail, &fail_payload(msg));
        }
        Error::invalid_usage(msg.to_string())
    };
    loop {
        if nranks.is_some_and(|n| arrived.len() == n) {
            break;
        }
        let Some(hello) = gate.wait(deadline)? else {
            let n = nranks.unwrap_or(0);
            // Name a few missing ranks (nranks came from a peer: do not list billions).
            let missing: Vec<usize> = (0..n).filter(|r| !index.contains_key(r)).take(32).collect();
            let more = if n - arrived.len() > missing.len() { " and more" } else { "" };
            let msg = format!(
                "only {} of {n} ranks reached the bootstrap root within {:?}; missing ranks {missing:?}{more}",
                arrived.len(),
                timeout.unwrap_or_default()
            );
            return Err(fail_all(&mut arrived, &msg));
        };
        let parsed = msg::decode_hello(&hello.body);
        let (rank, n, addr) = match parsed {
            Ok(v) => v,
            Err(e) => {
                gate.refuse(hello.from, &e.to_string());
                continue;
            }
        };
        // The connection stays non-blocking: the root's few small writes (an answer, or
        // a failure) fit the empty socket buffer at once, and its reads wait on epoll.
        let conn = hello.sock;
        let expected = *nranks.get_or_insert(n);
        if n != expected {
            let first = arrived.first().map_or(0, |a| a.rank);
            let msg = format!(
                "ranks disagree on the number of ranks: rank {rank} says {n}, rank {first} said {expected}; pass the same nranks everywhere"
            );
            arrived.push(Arrived { rank, addr, conn });
            return Err(fail_all(&mut arrived, &msg));
        }
        if rank >= n {
            let msg = format!("rank {rank} is out of range for a job of {n} ranks (ranks are 0..{n})");
            arrived.push(Arrived { rank, addr, conn });
            return Err(fail_all(&mut arrived, &msg));
        }
        if let Some(&i) = index.get(&rank) {
            let msg = format!(
                "two processes claim rank {rank} (bootstrap addresses {} and {addr}); every rank must be unique",
                arrived[i].addr
            );
            arrived.push(Arrived { rank, addr, conn });
            return Err(fail_all(&mut arrived, &msg));
        }
        first.get_or_insert_with(Instant::now);
        index.insert(rank, arrived.len());
        arrived.push(Arrived { rank, addr, conn });
    }
    let answered = Instant::now();
    let n = arrived.len();
    let mut addrs = vec![None; n];
    for a in &arrived {
        addrs[a.rank] = Some(a.addr);
    }
    for a in arrived.iter_mut() {
        let partners: Vec<SocketAddr> = partners(a.rank, n).map(|p| addrs[p].expect("every rank arrived")).collect();
        if let Err(e) = wire::send(&mut a.conn, Kind::Next, &msg::encode_partners(&partners)) {
            log::warn(&format!("bootstrap root: could not answer rank {}: {e}", a.rank));
        }
    }
    log::info(
        false,
        &format!(
            "bootstrap root: {n} ranks arrived over {:.1} ms (the first {:.1} ms after the root started), answered in {:.1} ms; root cpu {:.2} ms",
            first.map_or(0.0, |f: Instant| f.elapsed().as_secs_f64() * 1e3 - answered.elapsed().as_secs_f64() * 1e3),
            first.map_or(0.0, |f: Instant| (f - started).as_secs_f64() * 1e3),
            answered.elapsed().as_secs_f64() * 1e3,
            (crate::sys::thread_cpu_time() - cpu0).as_secs_f64() * 1e3
        ),
    );
    watch_ring_forming(arrived, deadline)
}

/// Until every rank has joined its ring neighbours (it says goodbye to the root), a rank
/// whose connection to the root closes first died in the middle of init: the root tells
/// every other rank, which would otherwise wait for it until the timeout.
fn watch_ring_forming(arrived: Vec<Arrived>, deadline: Option<Instant>) -> Result<()> {
    let ep = crate::sys::epoll::Epoll::new()?;
    for (i, a) in arrived.iter().enumerate() {
        ep.add(std::os::fd::AsRawFd::as_raw_fd(&a.conn), i as u64)?;
    }
    let mut waiting: Vec<Option<Arrived>> = arrived.into_iter().map(Some).collect();
    let mut left = waiting.len();
    let mut ready = Vec::with_capacity(256);
    while left > 0 {
        let wait_ms =
            deadline.map_or(1000, |d| d.saturating_duration_since(Instant::now()).as_millis().min(1000) as i32);
        ep.wait(&mut ready, wait_ms)?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(()); // the ranks' own timeouts report whatever is still missing
        }
        for &i in &ready {
            // Closing the connection (dropping it) also takes it off the epoll.
            let Some(slot) = waiting.get_mut(i as usize) else { continue };
            let Some(mut a) = slot.take() else { continue };
            match said_bye(&mut a.conn) {
                Some(true) => {
                    left -= 1;
                    continue;
                }
                None => {
                    *slot = Some(a); // woken early: nothing to read yet
                    continue;
                }
                Some(false) => {}
            }
            let msg = format!(
                "rank {} (bootstrap address {}) left during init, before joining its ring neighbours (killed or crashed?)",
                a.rank, a.addr
            );
            for b in waiting.iter_mut().flatten() {
                let _ = wire::send(&mut b.conn, Kind::Fail, &fail_payload(&msg));
            }
            return Ok(());
        }
    }
    Ok(())
}

/// Whether a rank's connection to the root says goodbye (`Some(true)`), closed or said
/// something else (`Some(false)`), or has nothing to read yet (`None`). A goodbye is one
/// header, written at once; the rare partial one is finished with a short blocking read.
fn said_bye(conn: &mut TcpStream) -> Option<bool> {
    use std::io::Read;
    let mut head = [0u8; wire::HEADER];
    let got = match conn.read(&mut head) {
        Ok(got) => got,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {
            return None;
        }
        Err(_) => return Some(false),
    };
    if got == 0 {
        return Some(false);
    }
    if got < wire::HEADER {
        let finished = conn.set_nonblocking(false).is_ok()
            && conn.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
            && conn.read_exact(&mut head[got..]).is_ok();
        if !finished {
            return Some(false);
        }
    }
    Some(matches!(wire::parse_head(&head, 0), Ok((Kind::Bye, 0))))
}

/// Whether the root reported a failure (another rank died during init) or went away.
pub(super) fn root_news(root: &mut TcpStream, what: &str) -> Result<()> {
    let mut f = [libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(root), events: libc::POLLIN, revents: 0 }];
    // SAFETY: one valid pollfd for the duration of the call; timeout 0.
    if unsafe { libc::poll(f.as_mut_ptr(), 1, 0) } <= 0 {
        return Ok(());
    }
    match recv_frame(root, what, 4096) {
        Ok((Kind::Fail, p)) => Err(Error::remote(format!("{what}: {}", fail_message(&p)))),
        Ok((k, _)) => Err(Error::remote(format!("{what}: unexpected {k:?} from the root"))),
        Err(e) if e.kind() == crate::error::ErrorKind::Timeout => Ok(()),
        Err(_) => Err(Error::remote(format!(
            "{what}: the bootstrap root (in rank 0's process) went away during init (killed or crashed?)"
        ))),
    }
}
