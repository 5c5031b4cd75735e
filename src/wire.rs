//! The out-of-band message format: every message that is not data (the bootstrap's,
//! the fault sentinel's, a data connection's introduction) is a frame
//!
//! ```text
//! magic "OXBS" (4) | version u16 | kind u16 | payload length u32 | payload
//! ```
//!
//! (little-endian), whose payload is a sequence of fixed-width fields and length-prefixed
//! byte strings. Reading checks the magic, the version, the kind and the length against a
//! limit before allocating, and every field against the bytes that remain: a malformed or
//! oversized message is an error, never a panic or an unbounded allocation.
//!
//! This module owns the frame and the field codec ([`Enc`], [`Dec`]) and the list of
//! frame kinds; each protocol keeps its own payloads (`bootstrap::msg`, `fault::msg`,
//! `transport::hello`).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};

const MAGIC: [u8; 4] = *b"OXBS";
/// The version of the bootstrap protocol; peers of another version are refused.
pub const VERSION: u16 = 2;
/// The largest payload accepted (a table of a few thousand ranks fits easily).
pub const MAX_PAYLOAD: usize = 16 << 20;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// A rank introduces itself to the root.
    Hello = 1,
    /// The root tells a rank where its ring successor listens.
    Next = 2,
    /// A rank introduces itself to its ring successor.
    RingHello = 3,
    /// A block of an all-gather travelling around the ring.
    Block = 4,
    /// The sender gives up: the payload is a message for the user.
    Fail = 5,
    /// A data connection introduces itself (TCP transport).
    ConnHello = 6,
    /// After init, on the ring: a communicator failed (class, origin rank, message).
    Fault = 7,
    /// After init, on the ring: the sender leaves the communicator cleanly.
    Bye = 8,
    /// After init, on the ring: a rank has been stuck in a collective for a while and
    /// says which (origin, hops, tag, descriptor, operation number).
    Where = 9,
    /// After a [`ConnHello`](Kind::ConnHello), on an InfiniBand link's socket: the queue
    /// pairs, address and (receiver) FIFO registration of one side.
    IbConnect = 10,
}

impl Kind {
    fn from_u16(v: u16) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Next,
            3 => Kind::RingHello,
            4 => Kind::Block,
            5 => Kind::Fail,
            6 => Kind::ConnHello,
            7 => Kind::Fault,
            8 => Kind::Bye,
            9 => Kind::Where,
            10 => Kind::IbConnect,
            _ => return None,
        })
    }
}

pub(crate) fn malformed(what: impl Into<String>) -> Error {
    Error::remote(format!("malformed message from a peer: {}", what.into()))
}

/// Bytes in a frame header.
pub const HEADER: usize = 12;

/// Whether `b`, the first bytes of a connection, can still begin a frame: garbage is
/// refused at its first wrong byte instead of after a whole header.
pub fn plausible_prefix(b: &[u8]) -> bool {
    let n = b.len().min(MAGIC.len());
    b[..n] == MAGIC[..n]
}

/// Checks a frame header (magic, version, kind, and the payload length against `limit`
/// and [`MAX_PAYLOAD`], before anything is allocated); returns the kind and the length.
pub fn parse_head(head: &[u8; HEADER], limit: usize) -> Result<(Kind, usize)> {
    if head[..4] != MAGIC {
        return Err(malformed("bad magic (not an oxccl peer?)"));
    }
    let version = u16::from_le_bytes([head[4], head[5]]);
    if version != VERSION {
        return Err(Error::invalid_usage(format!(
            "bootstrap protocol version {version} from a peer, this oxccl speaks {VERSION}: mixed oxccl versions in one job"
        )));
    }
    let raw_kind = u16::from_le_bytes([head[6], head[7]]);
    let kind = Kind::from_u16(raw_kind).ok_or_else(|| malformed(format!("unknown kind {raw_kind}")))?;
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    let limit = limit.min(MAX_PAYLOAD);
    if len > limit {
        return Err(malformed(format!("{len} byte payload exceeds the limit of {limit}")));
    }
    Ok((kind, len))
}

/// Writes one frame.
pub fn send(w: &mut impl Write, kind: Kind, payload: &[u8]) -> std::io::Result<()> {
    if payload.len() <= ONE_WRITE {
        // One write, one segment: half the system calls, and the peer never sees a
        // header without its payload.
        let mut out = Vec::with_capacity(HEADER + payload.len());
        frame(&mut out, kind, payload);
        w.write_all(&out)?;
    } else {
        w.write_all(&head(kind, payload.len()))?;
        w.write_all(payload)?;
    }
    w.flush()
}

/// Frames up to this payload size go out in one write (copied behind their header).
const ONE_WRITE: usize = 64 << 10;

/// Appends one frame to `out` (to send several in one write).
pub fn frame(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    out.extend_from_slice(&head(kind, payload.len()));
    out.extend_from_slice(payload);
}

fn head(kind: Kind, len: usize) -> [u8; HEADER] {
    let mut head = [0u8; HEADER];
    head[..4].copy_from_slice(&MAGIC);
    head[4..6].copy_from_slice(&VERSION.to_le_bytes());
    head[6..8].copy_from_slice(&(kind as u16).to_le_bytes());
    head[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    head
}

/// Reads one frame, checking magic, version and size. I/O errors (including timeouts)
/// are returned as `Err(Ok(io))`, protocol errors as `Err(Err(error))`.
pub fn recv(
    r: &mut impl Read,
    limit: usize,
) -> std::result::Result<(Kind, Vec<u8>), std::result::Result<std::io::Error, Error>> {
    let mut head = [0u8; HEADER];
    r.read_exact(&mut head).map_err(Ok)?;
    let (kind, len) = parse_head(&head, limit).map_err(Err)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(Ok)?;
    Ok((kind, payload))
}

/// Builds a payload.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    /// An empty payload.
    pub fn new() -> Enc {
        Enc(Vec::new())
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends fixed bytes.
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Appends a length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.raw(b)
    }
    /// Appends a socket address (family, 16 address bytes, port).
    pub fn addr(&mut self, a: &SocketAddr) -> &mut Self {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.u32(4);
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&ip.octets());
                self.raw(&b)
            }
            IpAddr::V6(ip) => {
                self.u32(6);
                self.raw(&ip.octets())
            }
        };
        self.u32(a.port() as u32)
    }
}

/// Reads a payload, field by field, never past its end.
pub struct Dec<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Dec<'a> {
    /// Reads `b`, naming `what` in errors.
    pub fn new(b: &'a [u8], what: &'static str) -> Dec<'a> {
        Dec { b, what }
    }
    /// Takes `n` bytes.
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(malformed(format!("{} truncated", self.what)));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    /// Takes a u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.raw(4)?.try_into().expect("4 bytes")))
    }
    /// Takes a u64.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.raw(8)?.try_into().expect("8 bytes")))
    }
    /// Takes a length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(malformed(format!("{}: a field of {n} bytes exceeds {max}", self.what)));
        }
        self.raw(n)
    }
    /// Takes a socket address.
    pub fn addr(&mut self) -> Result<SocketAddr> {
        let fam = self.u32()?;
        let b: [u8; 16] = self.raw(16)?.try_into().expect("16 bytes");
        let port = self.u32()?;
        let port = u16::try_from(port).map_err(|_| malformed(format!("{}: port {port}", self.what)))?;
        let ip = match fam {
            // One encoding per address: the 12 bytes after an IPv4 address are zero.
            4 if b[4..].iter().any(|&x| x != 0) => {
                return Err(malformed(format!("{}: IPv4 address with non-zero padding", self.what)));
            }
            4 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            6 => IpAddr::V6(Ipv6Addr::from(b)),
            f => return Err(malformed(format!("{}: address family {f}", self.what))),
        };
        Ok(SocketAddr::new(ip, port))
    }
    /// Fails unless every byte was read.
    pub fn end(&self) -> Result<()> {
        if !self.b.is_empty() {
            return Err(malformed(format!("{}: {} trailing bytes", self.what, self.b.len())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_errors() {
        let mut e = Enc::new();
        e.u32(7).u64(u64::MAX).bytes(b"host").addr(&"10.1.2.3:4567".parse().unwrap());
        e.addr(&"[fd00::2]:80".parse().unwrap());
        let mut buf = Vec::new();
        send(&mut buf, Kind::Hello, &e.0).unwrap();
        let (k, p) = recv(&mut &buf[..], 1 << 20).map_err(|_| ()).unwrap();
        assert_eq!(k, Kind::Hello);
        let mut d = Dec::new(&p, "test");
        assert_eq!(d.u32().unwrap(), 7);
        assert_eq!(d.u64().unwrap(), u64::MAX);
        assert_eq!(d.bytes(16).unwrap(), b"host");
        assert_eq!(d.addr().unwrap(), "10.1.2.3:4567".parse().unwrap());
        assert_eq!(d.addr().unwrap(), "[fd00::2]:80".parse().unwrap());
        d.end().unwrap();
        assert!(Dec::new(&p, "t").bytes(2).is_err(), "a field longer than allowed");
        assert!(Dec::new(&p[..3], "t").u32().is_err(), "truncated");

        // Bad magic, wrong version, unknown kind, oversized: errors, no allocation.
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(matches!(recv(&mut &bad[..], 1 << 20), Err(Err(_))));
        let mut bad = buf.clone();
        bad[4] = 9;
        assert!(
            matches!(recv(&mut &bad[..], 1 << 20), Err(Err(e)) if e.kind() == crate::error::ErrorKind::InvalidUsage)
        );
        let mut bad = buf.clone();
        bad[6] = 99;
        assert!(matches!(recv(&mut &bad[..], 1 << 20), Err(Err(_))));
        let mut bad = buf.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(recv(&mut &bad[..], 1 << 20), Err(Err(_))));
        // A truncated payload is an I/O error (unexpected EOF).
        assert!(matches!(recv(&mut &buf[..buf.len() - 1], 1 << 20), Err(Ok(_))));
    }

    /// Found by the bootstrap_frames fuzz target: an IPv4 address whose padding bytes
    /// were not zero decoded, so two encodings meant one address.
    #[test]
    fn ipv4_addresses_have_one_encoding() {
        let mut e = Enc::new();
        e.addr(&"10.1.2.3:4567".parse().unwrap());
        assert!(Dec::new(&e.0, "t").addr().is_ok());
        let mut bad = e.0.clone();
        bad[4 + 4 + 3] = 0xff;
        let err = Dec::new(&bad, "t").addr().unwrap_err().to_string();
        assert!(err.contains("non-zero padding"), "{err}");
    }
}
