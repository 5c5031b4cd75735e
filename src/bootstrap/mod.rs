//! Bootstrap: how the ranks of a job find each other before any data moves.
//!
//! 1. Every rank connects to the root (whose address and secret are in the
//!    [`UniqueId`]) and says who it is: secret, rank, number of ranks, and the address of
//!    its own bootstrap listener.
//! 2. The root checks the job is consistent (same number of ranks everywhere, every rank
//!    exactly once) and tells each rank the address of its successor; or tells every rank
//!    what is wrong.
//! 3. The ranks connect into a ring, over which they all-gather what they need to know
//!    about each other (hosts, transport addresses) and run barriers.
//!
//! Every connection presents the secret first; connections that do not are refused and
//! logged (rate-limited), without failing the job. Listeners take their connections
//! through a [`gate::Gate`], which never blocks on one client, so garbage, stalled or
//! flooding clients cannot hold up the ranks. Every wait is bounded by the communicator's
//! timeout. The messages are the
//! versioned, length-checked frames of [`wire`].

pub mod gate;
pub mod id;
pub mod msg;

pub use id::{Secret, UniqueId};

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::log;
use crate::wire::{self, Enc, Kind};
use gate::Gate;
use msg::fail_message;

/// A rank's place in the bootstrap ring.
pub struct Bootstrap {
    rank: usize,
    nranks: usize,
    next: Option<TcpStream>,
    prev: Option<TcpStream>,
}

fn io_err(what: impl Into<String>, e: std::io::Error) -> Error {
    let what = what.into();
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::timeout(what, Duration::ZERO, vec![]),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            Error::remote(format!("{what}: the peer closed the connection ({e})"))
        }
        _ => Error::system(what, e),
    }
}

fn recv_frame(s: &mut TcpStream, what: &str, limit: usize) -> Result<(Kind, Vec<u8>)> {
    wire::recv(s, limit).map_err(|e| match e {
        Ok(io) => io_err(what.to_string(), io),
        Err(e) => e,
    })
}

/// Connects to `addr`, retrying until `deadline` (the peer may not listen yet).
pub fn connect_retry(addr: SocketAddr, deadline: Option<Instant>, what: &str) -> Result<TcpStream> {
    connect_retry_with(addr, deadline, what, Duration::from_secs(2), &mut || Ok(()))
}

/// As [`connect_retry`], each attempt bounded by `attempt`, calling `meanwhile` between
/// attempts: a rank that connects to a peer must keep accepting its own connections, or
/// ranks whose listen queues are full (a flood of stray connections) wait on each other.
pub fn connect_retry_with(
    addr: SocketAddr,
    deadline: Option<Instant>,
    what: &str,
    attempt: Duration,
    meanwhile: &mut dyn FnMut() -> Result<()>,
) -> Result<TcpStream> {
    let mut nap = Duration::from_millis(5);
    loop {
        match TcpStream::connect_timeout(&addr, attempt) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::timeout(
                        format!("{what}: could not connect to {addr} ({e})"),
                        Duration::ZERO,
                        vec![],
                    ));
                }
                meanwhile()?;
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(200));
            }
        }
    }
}

fn fail_payload(msg: &str) -> Vec<u8> {
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
            let missing: Vec<usize> = (0..n).filter(|r| !arrived.iter().any(|a| a.rank == *r)).take(32).collect();
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
        let conn = hello.sock;
        conn.set_nonblocking(false).map_err(|e| Error::system("setting a socket blocking", e))?;
        let _ = conn.set_write_timeout(Some(gate::HELLO_TIMEOUT));
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
        if let Some(a) = arrived.iter().find(|a| a.rank == rank) {
            let msg = format!(
                "two processes claim rank {rank} (bootstrap addresses {} and {addr}); every rank must be unique",
                a.addr
            );
            arrived.push(Arrived { rank, addr, conn });
            return Err(fail_all(&mut arrived, &msg));
        }
        arrived.push(Arrived { rank, addr, conn });
    }
    let n = arrived.len();
    let mut addrs = vec![None; n];
    for a in &arrived {
        addrs[a.rank] = Some(a.addr);
    }
    for a in arrived.iter_mut() {
        let next = addrs[(a.rank + 1) % n].expect("every rank arrived");
        let mut e = Enc::new();
        e.addr(&next);
        if let Err(e) = wire::send(&mut a.conn, Kind::Next, &e.0) {
            log::warn(&format!("bootstrap root: could not answer rank {}: {e}", a.rank));
        }
    }
    watch_ring_forming(arrived, deadline)
}

/// Until every rank has joined its ring neighbours (it says goodbye to the root), a rank
/// whose connection to the root closes first died in the middle of init: the root tells
/// every other rank, which would otherwise wait for it until the timeout.
fn watch_ring_forming(mut arrived: Vec<Arrived>, deadline: Option<Instant>) -> Result<()> {
    while !arrived.is_empty() {
        let mut fds: Vec<libc::pollfd> = arrived
            .iter()
            .map(|a| libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&a.conn), events: libc::POLLIN, revents: 0 })
            .collect();
        let wait_ms =
            deadline.map_or(1000, |d| d.saturating_duration_since(Instant::now()).as_millis().min(1000) as i32);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if ready < 0 && std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
            return Err(Error::system("waiting for ranks to form the ring", std::io::Error::last_os_error()));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(()); // the ranks' own timeouts report whatever is still missing
        }
        let mut i = fds.len();
        while i > 0 {
            i -= 1;
            if fds[i].revents == 0 {
                continue;
            }
            let a = &mut arrived[i];
            let _ = a.conn.set_read_timeout(Some(Duration::from_secs(1)));
            match wire::recv(&mut a.conn, 0) {
                Ok((Kind::Bye, _)) => {
                    arrived.remove(i);
                }
                _ => {
                    let gone = arrived.remove(i);
                    let msg = format!(
                        "rank {} (bootstrap address {}) left during init, before joining its ring neighbours (killed or crashed?)",
                        gone.rank, gone.addr
                    );
                    for a in arrived.iter_mut() {
                        let _ = wire::send(&mut a.conn, Kind::Fail, &fail_payload(&msg));
                    }
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Whether the root reported a failure (another rank died during init) or went away.
fn root_news(root: &mut TcpStream, what: &str) -> Result<()> {
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

impl Bootstrap {
    /// Joins the job at `id`'s root as `rank` of `nranks`, listening for the ring on
    /// `local_ip`. `timeout` bounds every wait.
    pub fn join(
        id: &UniqueId,
        rank: usize,
        nranks: usize,
        local_ip: std::net::IpAddr,
        timeout: Option<Duration>,
    ) -> Result<Bootstrap> {
        let r = Self::join_inner(id, rank, nranks, local_ip, timeout);
        if r.is_err() {
            wait_root(id.secret(), Duration::from_secs(2));
        }
        r
    }

    fn join_inner(
        id: &UniqueId,
        rank: usize,
        nranks: usize,
        local_ip: std::net::IpAddr,
        timeout: Option<Duration>,
    ) -> Result<Bootstrap> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let listener = TcpListener::bind(SocketAddr::new(local_ip, 0))
            .map_err(|e| Error::system(format!("binding the bootstrap listener on {local_ip}"), e))?;
        let mut ring = Gate::new(listener, *id.secret(), Kind::RingHello, 256, format!("rank {rank}: bootstrap ring"))?;
        let my_addr = ring.local_addr()?;
        let what = format!("rank {rank}: joining the job at {}", id.root());
        let mut root = connect_retry(id.root(), deadline, &what)?;
        let mut e = Enc::new();
        e.raw(id.secret()).u32(rank as u32).u32(nranks as u32).addr(&my_addr);
        wire::send(&mut root, Kind::Hello, &e.0).map_err(|e| io_err(what.clone(), e))?;
        root.set_read_timeout(timeout).map_err(|e| Error::system("setting a socket timeout", e))?;
        let next_addr = match recv_frame(&mut root, &what, 4096) {
            Ok((Kind::Next, p)) => msg::decode_next(&p)?,
            Ok((Kind::Fail, p)) => return Err(Error::invalid_usage(format!("{what}: {}", fail_message(&p)))),
            Ok((k, _)) => return Err(Error::remote(format!("{what}: unexpected {k:?} from the root"))),
            Err(e) if e.kind() == crate::error::ErrorKind::Timeout => {
                return Err(Error::timeout(
                    format!("{what}: waiting for the other ranks at the bootstrap root"),
                    timeout.unwrap_or_default(),
                    vec![],
                ));
            }
            Err(e) => return Err(e),
        };
        let mut b = Bootstrap { rank, nranks, next: None, prev: None };
        if nranks > 1 {
            // Accept (and keep) our predecessor's introduction while connecting.
            let mut early = None;
            let mut next = connect_retry_with(
                next_addr,
                deadline,
                &format!("rank {rank}: connecting to rank {}", (rank + 1) % nranks),
                Duration::from_millis(500),
                &mut || {
                    root_news(&mut root, &what)?;
                    if early.is_none() {
                        early = ring.poll()?;
                    }
                    Ok(())
                },
            )?;
            let mut e = Enc::new();
            e.raw(id.secret()).u32(rank as u32);
            wire::send(&mut next, Kind::RingHello, &e.0).map_err(|e| io_err("bootstrap ring hello", e))?;
            let prev_rank = (rank + nranks - 1) % nranks;
            let what = format!("rank {rank}: waiting for rank {prev_rank} to connect");
            let prev = loop {
                // Short slices: between them, news from the root (a rank died).
                let slice = Instant::now() + Duration::from_millis(50);
                let h = match early.take() {
                    Some(h) => Some(h),
                    None => ring.wait(Some(deadline.map_or(slice, |d| d.min(slice))))?,
                };
                let Some(h) = h else {
                    root_news(&mut root, &what)?;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(Error::timeout(what, timeout.unwrap_or_default(), vec![prev_rank]));
                    }
                    continue;
                };
                match msg::decode_ring_hello(&h.body) {
                    Ok(r) if r == prev_rank => break h.sock,
                    Ok(r) => ring.refuse(h.from, &format!("it says it is rank {r}, expected rank {prev_rank}")),
                    Err(e) => ring.refuse(h.from, &e.to_string()),
                }
            };
            prev.set_nonblocking(false).map_err(|e| Error::system("setting a socket blocking", e))?;
            prev.set_read_timeout(timeout).map_err(|e| Error::system("setting a socket timeout", e))?;
            next.set_write_timeout(timeout).map_err(|e| Error::system("setting a socket timeout", e))?;
            b.next = Some(next);
            b.prev = Some(prev);
        }
        // In the ring: the root need not watch this rank any more.
        let _ = wire::send(&mut root, Kind::Bye, &[]);
        Ok(b)
    }

    /// Every rank's `mine`, in rank order (a ring all-gather).
    pub fn all_gather(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (rank, n) = (self.rank, self.nranks);
        let mut out = vec![Vec::new(); n];
        out[rank] = mine.to_vec();
        if n == 1 {
            return Ok(out);
        }
        let (Some(next), Some(prev)) = (self.next.as_mut(), self.prev.as_mut()) else {
            return Err(Error::internal("bootstrap ring not connected"));
        };
        let prev_rank = (rank + n - 1) % n;
        for step in 0..n - 1 {
            let from = (rank + n - step) % n;
            let mut e = Enc::new();
            e.u32(from as u32).bytes(&out[from]);
            wire::send(next, Kind::Block, &e.0)
                .map_err(|e| io_err(format!("rank {rank}: sending to rank {} during bootstrap", (rank + 1) % n), e))?;
            let want = (rank + n - step - 1) % n;
            let what = format!("rank {rank}: receiving from rank {prev_rank} during bootstrap");
            let (k, p) = recv_frame(prev, &what, wire::MAX_PAYLOAD)?;
            match k {
                Kind::Block => {}
                Kind::Fail => return Err(Error::remote(format!("{what}: {}", fail_message(&p)))),
                k => return Err(Error::remote(format!("{what}: unexpected {k:?}"))),
            }
            let (got, data) = msg::decode_block(&p)?;
            if got != want {
                return Err(Error::remote(format!("{what}: block of rank {got} where rank {want}'s was expected")));
            }
            out[want] = data.to_vec();
        }
        Ok(out)
    }

    /// Returns when every rank has called `barrier`.
    pub fn barrier(&mut self) -> Result<()> {
        self.all_gather(&[]).map(|_| ())
    }

    /// The ring's sockets after init, for the fault sentinel: (predecessor,
    /// successor); `None` with one rank.
    pub fn into_ring(self) -> Option<(TcpStream, TcpStream)> {
        Some((self.prev?, self.next?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(n: usize, timeout: Duration) -> UniqueId {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let id = UniqueId::for_root(l.local_addr().unwrap()).unwrap();
        spawn_root(l, *id.secret(), Some(timeout)).unwrap();
        let _ = n;
        id
    }

    fn join_all(id: UniqueId, ranks: Vec<(usize, usize)>, t: Duration) -> Vec<Result<Vec<Vec<u8>>>> {
        let hs: Vec<_> = ranks
            .into_iter()
            .map(|(r, n)| {
                std::thread::spawn(move || {
                    let mut b = Bootstrap::join(&id, r, n, "127.0.0.1".parse().unwrap(), Some(t))?;
                    let g = b.all_gather(format!("rank{r}").as_bytes())?;
                    b.barrier()?;
                    Ok(g)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn ranks_find_each_other_and_all_gather() {
        for n in [1, 2, 3, 5] {
            let id = start(n, Duration::from_secs(20));
            let out = join_all(id, (0..n).map(|r| (r, n)).collect(), Duration::from_secs(20));
            for r in out {
                let g = r.unwrap();
                assert_eq!(g, (0..n).map(|i| format!("rank{i}").into_bytes()).collect::<Vec<_>>());
            }
        }
    }

    /// A rank that reached the root and then died before joining the ring: the others
    /// hear it from the root in milliseconds instead of waiting for it until the timeout.
    #[test]
    fn a_rank_that_dies_while_the_ring_forms_fails_the_others_at_once() {
        let t = Duration::from_secs(20);
        let id = start(3, t);
        let hs: Vec<_> = (0..2)
            .map(|r| {
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let r = Bootstrap::join(&id, r, 3, "127.0.0.1".parse().unwrap(), Some(t))
                        .and_then(|mut b| b.all_gather(b"x"));
                    (r, t0.elapsed())
                })
            })
            .collect();
        // Rank 2 introduces itself with a listener that never answers, then dies.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut root = TcpStream::connect(id.root()).unwrap();
        let mut e = Enc::new();
        e.raw(id.secret()).u32(2).u32(3).addr(&silent.local_addr().unwrap());
        wire::send(&mut root, Kind::Hello, &e.0).unwrap();
        let (k, _) = wire::recv(&mut root, 4096).map_err(|_| ()).unwrap();
        assert_eq!(k, Kind::Next);
        drop(root);
        // Rank 0 waits for rank 2 to connect: the root tells it. Rank 1 reached its
        // (silent) successor and fails when rank 0 gives up.
        for (r, h) in hs.into_iter().enumerate() {
            let (res, took) = h.join().unwrap();
            let e = res.expect_err("a rank whose neighbour died cannot finish init").to_string();
            assert!(took < Duration::from_secs(2), "rank {r} failed after {took:?}: {e}");
            if r == 0 {
                assert!(e.contains("rank 2") && e.contains("left during init"), "{e}");
            }
        }
    }

    #[test]
    fn inconsistent_jobs_fail_on_every_rank() {
        let t = Duration::from_secs(10);
        let id = start(2, t);
        let out = join_all(id, vec![(0, 2), (1, 3)], t);
        for r in &out {
            let e = r.as_ref().unwrap_err().to_string();
            assert!(e.contains("disagree on the number of ranks"), "{e}");
        }
        let id = start(2, t);
        let out = join_all(id, vec![(0, 2), (0, 2)], t);
        for r in &out {
            assert!(r.as_ref().unwrap_err().to_string().contains("two processes claim rank 0"));
        }
        let id = start(2, t);
        let out = join_all(id, vec![(0, 2), (5, 2)], t);
        assert!(out.iter().any(|r| r.as_ref().is_err_and(|e| e.to_string().contains("out of range"))));
    }

    #[test]
    fn wrong_secrets_and_garbage_are_refused() {
        let t = Duration::from_secs(10);
        let id = start(2, t);
        // A stray client with the wrong secret, and one that sends garbage.
        let stray = UniqueId::with_secret(id.root(), [7; 32]);
        let h = std::thread::spawn(move || {
            Bootstrap::join(&stray, 1, 2, "127.0.0.1".parse().unwrap(), Some(Duration::from_secs(2)))
        });
        let mut g = TcpStream::connect(id.root()).unwrap();
        use std::io::Write;
        g.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(h.join().unwrap().is_err(), "the stray client gets no answer");
        // The real job still forms.
        let out = join_all(id, vec![(0, 2), (1, 2)], t);
        assert!(
            out.iter().all(|r| r.is_ok()),
            "{:?}",
            out.iter().map(|r| r.as_ref().err().map(|e| e.to_string())).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_missing_rank_times_out_with_a_message() {
        let t = Duration::from_millis(800);
        let id = start(3, t);
        let out = join_all(id, vec![(0, 3), (2, 3)], t);
        for r in out {
            let e = r.unwrap_err();
            assert!(
                matches!(e.kind(), crate::error::ErrorKind::Timeout | crate::error::ErrorKind::InvalidUsage),
                "{e}"
            );
        }
    }
}
