//! The ranks' bootstrap connections and what runs over them at init: an all-gather and
//! a barrier, each in `ceil(log2 n)` rounds.
//!
//! Rank `r` connects to its partners, the ranks `r + 2^k` (modulo `n`, for every `2^k <
//! n`), and accepts a connection from each rank `r - 2^k`, which introduces itself with
//! its rank and `k`. The all-gather is Bruck's: in round `k`, rank `r` sends the blocks
//! it holds (its own and those of the ranks after it, at most `2^k`) to `r - 2^k` and
//! receives as many from `r + 2^k`, so after the last round it holds every rank's. The
//! barrier is the dissemination barrier over the same connections. A round sends and
//! receives at once (one `poll` over both sockets), so large blocks cannot fill both
//! ends' socket buffers and stall.
//!
//! The `k = 0` connections form a ring (`r - 1 -> r -> r + 1`) and stay after init: the
//! fault sentinel carries faults around it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::gate::{Gate, Hello};
use super::msg::{self, fail_message};
use super::root::{root_news, wait_root};
use super::{UniqueId, connect_retry, connect_retry_with, io_err, recv_frame};
use crate::error::{Error, Result};
use crate::wire::{self, Enc, Kind};

/// The partners of rank `rank` of `n`: the ranks `2^k` ahead, for every `2^k < n`.
pub(crate) fn partners(rank: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..usize::BITS).map(|k| 1usize << k).take_while(move |&d| d < n).map(move |d| (rank + d) % n)
}

/// The connections of one round: to the partner ahead and from the rank behind, each
/// with the bytes read from it that belong to a later exchange.
struct Round {
    /// To rank `rank + 2^k` (this rank connected).
    ahead: TcpStream,
    ahead_read: Vec<u8>,
    /// From rank `rank - 2^k` (that rank connected).
    behind: TcpStream,
    behind_read: Vec<u8>,
}

/// A rank's bootstrap connections.
pub struct Bootstrap {
    rank: usize,
    nranks: usize,
    rounds: Vec<Round>,
    timeout: Option<Duration>,
}

impl Bootstrap {
    /// Joins the job at `id`'s root as `rank` of `nranks`, listening for its partners on
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
        let mut gate = Gate::new(listener, *id.secret(), Kind::RingHello, 256, format!("rank {rank}: bootstrap"))?;
        let my_addr = gate.local_addr()?;
        let what = format!("rank {rank}: joining the job at {}", id.root());
        let mut root = connect_retry(id.root(), deadline, &what)?;
        let mut e = Enc::new();
        e.raw(id.secret()).u32(rank as u32).u32(nranks as u32).addr(&my_addr);
        wire::send(&mut root, Kind::Hello, &e.0).map_err(|e| io_err(what.clone(), e))?;
        root.set_read_timeout(timeout).map_err(|e| Error::system("setting a socket timeout", e))?;
        let ahead_addrs = match recv_frame(&mut root, &what, 4096) {
            Ok((Kind::Next, p)) => msg::decode_partners(&p)?,
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
        let want = partners(rank, nranks).count();
        if ahead_addrs.len() != want {
            return Err(Error::remote(format!(
                "{what}: the root named {} partners, expected {want} for {nranks} ranks",
                ahead_addrs.len()
            )));
        }
        let behind_of = |k: usize| (rank + nranks - (1 << k) % nranks) % nranks;
        let mut behind: Vec<Option<TcpStream>> = (0..want).map(|_| None).collect();
        // An introduction from a rank behind: kept if it is the one expected for its round.
        let take =
            |h: Hello, gate: &mut Gate, behind: &mut Vec<Option<TcpStream>>| match msg::decode_ring_hello(&h.body) {
                Ok((r, k)) if (k as usize) < want && r == behind_of(k as usize) && behind[k as usize].is_none() => {
                    behind[k as usize] = Some(h.sock);
                }
                Ok((r, k)) => gate.refuse(h.from, &format!("it says it is rank {r} for round {k}, not expected here")),
                Err(e) => gate.refuse(h.from, &e.to_string()),
            };
        let mut ahead = Vec::with_capacity(want);
        for (k, addr) in ahead_addrs.iter().enumerate() {
            let peer = (rank + (1 << k)) % nranks;
            let mut s = connect_retry_with(
                *addr,
                deadline,
                &format!("rank {rank}: connecting to rank {peer}"),
                Duration::from_millis(500),
                &mut || {
                    root_news(&mut root, &what)?;
                    while let Some(h) = gate.poll()? {
                        take(h, &mut gate, &mut behind);
                    }
                    Ok(())
                },
            )?;
            let mut e = Enc::new();
            e.raw(id.secret()).u32(rank as u32).u32(k as u32);
            wire::send(&mut s, Kind::RingHello, &e.0).map_err(|e| io_err("bootstrap hello", e))?;
            ahead.push(s);
        }
        while behind.iter().any(Option::is_none) {
            while let Some(h) = gate.poll()? {
                take(h, &mut gate, &mut behind);
            }
            if behind.iter().all(Option::is_some) {
                break;
            }
            // Short slices: between them, news from the root (a rank died).
            let slice = Instant::now() + Duration::from_millis(50);
            if let Some(h) = gate.wait(Some(deadline.map_or(slice, |d| d.min(slice))))? {
                take(h, &mut gate, &mut behind);
                continue;
            }
            let missing: Vec<usize> = (0..want).filter(|&k| behind[k].is_none()).map(behind_of).collect();
            let what = format!("rank {rank}: waiting for ranks {missing:?} to connect");
            root_news(&mut root, &what)?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::timeout(what, timeout.unwrap_or_default(), missing));
            }
        }
        let mut rounds = Vec::with_capacity(want);
        for (a, b) in ahead.into_iter().zip(behind) {
            let b = b.expect("every round connected");
            for s in [&a, &b] {
                s.set_nonblocking(false).map_err(|e| Error::system("setting a socket blocking", e))?;
                s.set_read_timeout(timeout).map_err(|e| Error::system("setting a socket timeout", e))?;
                s.set_write_timeout(timeout).map_err(|e| Error::system("setting a socket timeout", e))?;
            }
            rounds.push(Round { ahead: a, ahead_read: Vec::new(), behind: b, behind_read: Vec::new() });
        }
        // Connected: the root need not watch this rank any more.
        let _ = wire::send(&mut root, Kind::Bye, &[]);
        Ok(Bootstrap { rank, nranks, rounds, timeout })
    }

    /// Every rank's `mine`, in rank order (Bruck's all-gather).
    pub fn all_gather(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (rank, n) = (self.rank, self.nranks);
        // held[i] is the block of rank `rank + i`.
        let mut held: Vec<Vec<u8>> = vec![mine.to_vec()];
        for k in 0..self.rounds.len() {
            let d = 1usize << k;
            let m = d.min(n - d);
            let mut out = Vec::new();
            for (i, b) in held.iter().take(m).enumerate() {
                let mut e = Enc::new();
                e.u32(((rank + i) % n) as u32).bytes(b);
                wire::frame(&mut out, Kind::Block, &e.0);
            }
            let (from, to) = ((rank + d) % n, (rank + n - d) % n);
            let what = format!("rank {rank}: exchanging with ranks {from} and {to} during bootstrap");
            let deadline = self.deadline();
            let r = &mut self.rounds[k];
            let frames = exchange(&r.behind, &out, &r.ahead, &mut r.ahead_read, m, deadline, &what)?;
            for (i, (kind, p)) in frames.into_iter().enumerate() {
                let want = (rank + d + i) % n;
                match kind {
                    Kind::Block => {}
                    Kind::Fail => return Err(Error::remote(format!("{what}: {}", fail_message(&p)))),
                    k => return Err(Error::remote(format!("{what}: unexpected {k:?}"))),
                }
                let (got, data) = msg::decode_block(&p)?;
                if got != want {
                    return Err(Error::remote(format!("{what}: block of rank {got} where rank {want}'s was expected")));
                }
                held.push(data.to_vec());
            }
        }
        let mut all = vec![Vec::new(); n];
        for (i, b) in held.into_iter().enumerate().take(n) {
            all[(rank + i) % n] = b;
        }
        Ok(all)
    }

    /// Returns when every rank has called `barrier` (the dissemination barrier).
    pub fn barrier(&mut self) -> Result<()> {
        let (rank, n) = (self.rank, self.nranks);
        for k in 0..self.rounds.len() {
            let d = 1usize << k;
            let mut token = Vec::new();
            let mut e = Enc::new();
            e.u32(rank as u32).bytes(&[]);
            wire::frame(&mut token, Kind::Block, &e.0);
            let what =
                format!("rank {rank}: bootstrap barrier with ranks {} and {}", (rank + d) % n, (rank + n - d) % n);
            let deadline = self.deadline();
            let r = &mut self.rounds[k];
            let got = exchange(&r.ahead, &token, &r.behind, &mut r.behind_read, 1, deadline, &what)?;
            if let Some((Kind::Fail, p)) = got.first() {
                return Err(Error::remote(format!("{what}: {}", fail_message(p))));
            }
        }
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| Instant::now() + t)
    }

    /// The ring's connections after init, for the fault sentinel: (from the predecessor,
    /// to the successor); `None` with one rank.
    pub fn into_ring(mut self) -> Option<(TcpStream, TcpStream)> {
        if self.rounds.is_empty() {
            return None;
        }
        let first = self.rounds.swap_remove(0);
        Some((first.behind, first.ahead))
    }
}

/// Sends `bytes` on `send` while receiving `frames` whole frames from `recv`, without
/// blocking on either. `buf` holds what was read from `recv` and not yet used: bytes of
/// a later exchange stay there for it.
fn exchange(
    send: &TcpStream,
    bytes: &[u8],
    recv: &TcpStream,
    buf: &mut Vec<u8>,
    frames: usize,
    deadline: Option<Instant>,
    what: &str,
) -> Result<Vec<(Kind, Vec<u8>)>> {
    let mut sent = 0;
    let mut got = Vec::with_capacity(frames);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // Complete frames first: every header is checked before its payload is kept.
        while got.len() < frames && buf.len() >= wire::HEADER {
            let head: &[u8; wire::HEADER] = buf[..wire::HEADER].try_into().expect("a header");
            let (kind, len) = wire::parse_head(head, wire::MAX_PAYLOAD)?;
            if buf.len() < wire::HEADER + len {
                break;
            }
            got.push((kind, buf[wire::HEADER..wire::HEADER + len].to_vec()));
            buf.drain(..wire::HEADER + len);
        }
        let (want_out, want_in) = (sent < bytes.len(), got.len() < frames);
        if !want_out && !want_in {
            return Ok(got);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(Error::timeout(what.to_string(), Duration::ZERO, vec![]));
        }
        let ms = left.map_or(1000, |l| l.as_millis().clamp(1, 1000) as i32);
        let mut fds = [
            libc::pollfd { fd: send.as_raw_fd(), events: if want_out { libc::POLLOUT } else { 0 }, revents: 0 },
            libc::pollfd { fd: recv.as_raw_fd(), events: if want_in { libc::POLLIN } else { 0 }, revents: 0 },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::system(what.to_string(), e));
        }
        if want_out && fds[0].revents != 0 {
            let rest = &bytes[sent..];
            // SAFETY: writes from a live slice; MSG_NOSIGNAL: a closed peer is an error,
            // never a SIGPIPE in a host program that does not ignore it.
            let w = unsafe {
                libc::send(send.as_raw_fd(), rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            };
            if w < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(io_err(what.to_string(), e));
                }
            } else {
                sent += w as usize;
            }
        }
        if want_in && fds[1].revents != 0 {
            // SAFETY: reads into a live buffer of its length, without blocking.
            let r = unsafe { libc::recv(recv.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len(), libc::MSG_DONTWAIT) };
            match r {
                0 => {
                    return Err(Error::remote(format!(
                        "{what}: the peer closed its bootstrap connection (killed or crashed?)"
                    )));
                }
                r if r < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(io_err(what.to_string(), e));
                    }
                }
                r => buf.extend_from_slice(&chunk[..r as usize]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::spawn_root;

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

    /// Exchanges back to back: a rank that races ahead to the next one sends bytes that
    /// the peer reads together with the current one's, and must keep for the next.
    #[test]
    fn back_to_back_exchanges_keep_their_bytes_apart() {
        for n in [2usize, 4, 6] {
            let id = start(n, Duration::from_secs(20));
            let hs: Vec<_> = (0..n)
                .map(|r| {
                    std::thread::spawn(move || {
                        let mut b =
                            Bootstrap::join(&id, r, n, "127.0.0.1".parse().unwrap(), Some(Duration::from_secs(20)))?;
                        for i in 0..30usize {
                            let g = b.all_gather(&vec![r as u8; 1 + (i * 37 + r) % 300])?;
                            for (p, v) in g.iter().enumerate() {
                                assert_eq!(v, &vec![p as u8; 1 + (i * 37 + p) % 300], "rank {r}, round {i}");
                            }
                            if i % 3 == 0 {
                                b.barrier()?;
                            }
                        }
                        Ok::<(), Error>(())
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn partners_are_the_ranks_a_power_of_two_ahead() {
        assert_eq!(partners(5, 8).collect::<Vec<_>>(), [6, 7, 1]);
        assert_eq!(partners(0, 1).count(), 0);
        assert_eq!(partners(2, 3).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(partners(0, 1000).count(), 10);
    }

    #[test]
    fn ranks_find_each_other_and_all_gather() {
        for n in [1, 2, 3, 5, 8, 13] {
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
        let (k, p) = wire::recv(&mut root, 4096).map_err(|_| ()).unwrap();
        assert_eq!(k, Kind::Next);
        assert_eq!(msg::decode_partners(&p).unwrap().len(), 2, "rank 2 of 3 has partners 0 and 1");
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
