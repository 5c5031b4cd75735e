//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`; not a stable
//! API). Each takes arbitrary bytes, feeds them to the decoders that read a peer's or a
//! user's bytes, and panics only on a bug: a decoder that panics, or a value that does
//! not survive re-encoding. `fuzz/corpus/<target>/` holds seeds made by
//! `seed_corpus` (the real encoders) plus edge cases.

use std::io::{ErrorKind, Read};
use std::net::SocketAddr;

use crate::bootstrap::UniqueId;
use crate::bootstrap::gate::{Intro, Step};
use crate::bootstrap::msg;
use crate::fault::msg as fault_msg;
use crate::topology::PeerInfo;
use crate::transport::hello::ConnHello;
use crate::wire::{self, Enc, Kind};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name.
pub const TARGETS: [(&str, Target); 4] = [
    ("bootstrap_frames", bootstrap_frames),
    ("handshake", handshake),
    ("unique_id", unique_id),
    ("peer_info", peer_info),
];

const KINDS: [Kind; 10] = [
    Kind::Hello,
    Kind::Next,
    Kind::RingHello,
    Kind::Block,
    Kind::Fail,
    Kind::ConnHello,
    Kind::Fault,
    Kind::Bye,
    Kind::Where,
    Kind::IbConnect,
];

fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::send(&mut out, kind, payload).expect("writing to a Vec");
    out
}

/// Decodes `p` as the payload of `kind` (after the secret for introductions); what
/// decodes must encode back to the same bytes.
fn payload(kind: Kind, p: &[u8]) {
    match kind {
        Kind::Fault => {
            if let Ok(n) = fault_msg::Notice::decode(p) {
                assert_eq!(n.encode(), p, "fault round trip");
            }
        }
        Kind::Bye => {}
        Kind::Where => {
            if let Ok(w) = fault_msg::Where::decode(p) {
                assert_eq!(w.encode(), p, "where round trip");
            }
        }
        Kind::Hello => {
            if let Ok((rank, n, addr)) = msg::decode_hello(p) {
                let mut e = Enc::new();
                e.u32(rank as u32).u32(n as u32).addr(&addr);
                assert_eq!(e.0, p, "hello round trip");
            }
        }
        Kind::RingHello => {
            if let Ok((r, k)) = msg::decode_ring_hello(p) {
                let mut e = Enc::new();
                e.u32(r as u32).u32(k);
                assert_eq!(e.0, p, "ring hello round trip");
            }
        }
        Kind::ConnHello => {
            if let Ok(h) = ConnHello::decode(p) {
                let secret = [0u8; crate::bootstrap::id::SECRET_BYTES];
                assert_eq!(&h.encode(&secret)[secret.len()..], p, "connection hello round trip");
            }
        }
        Kind::Next => {
            if let Ok(a) = msg::decode_partners(p) {
                assert_eq!(msg::encode_partners(&a), p, "partners round trip");
            }
        }
        Kind::Block => {
            if let Ok((from, data)) = msg::decode_block(p) {
                let mut e = Enc::new();
                e.u32(from as u32).bytes(data);
                assert_eq!(e.0, p, "block round trip");
            }
        }
        Kind::Fail => {
            let _ = msg::fail_message(p);
        }
        Kind::IbConnect => {
            if let Ok(h) = crate::transport::ib::conn::Hello::decode(p) {
                assert_eq!(h.encode(), p, "InfiniBand connection round trip");
            }
        }
    }
}

/// Bootstrap messages: `data` as a stream of frames (each payload decoded as its kind),
/// and as the payload of every kind.
pub fn bootstrap_frames(data: &[u8]) {
    let limit = 1 << 16;
    let mut r = data;
    while let Ok((kind, p)) = wire::recv(&mut r, limit) {
        assert!(p.len() <= limit);
        payload(kind, &p);
        // Introductions are decoded after their secret.
        if matches!(kind, Kind::Hello | Kind::RingHello | Kind::ConnHello) && p.len() >= 32 {
            payload(kind, &p[32..]);
        }
    }
    for kind in KINDS {
        payload(kind, data);
    }
    // The header parser agrees with the stream reader, and a plausible prefix is one.
    if let Ok(head) = <[u8; wire::HEADER]>::try_from(data.get(..wire::HEADER).unwrap_or(&[])) {
        let parsed = wire::parse_head(&head, limit);
        assert!(parsed.is_err() || wire::plausible_prefix(&head));
    }
}

/// A source that hands out `data` in pieces whose sizes the input chooses, with
/// "would block" between them, as a slow or hostile client would.
struct Trickle<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.turn += 1;
        let size = self.sizes.get(self.turn % self.sizes.len().max(1)).copied().unwrap_or(255);
        if size == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = (size as usize).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The connection handshake every listener runs (the gate's incremental reader of an
/// introduction, for each kind), then the TCP transport's decoder of what follows the
/// secret, and the call description that heads each data frame. The first byte says how many of the next bytes set the read sizes.
pub fn handshake(data: &[u8]) {
    let (sizes, data) = match data.split_first() {
        Some((&n, rest)) => rest.split_at((n as usize % 16).min(rest.len())),
        None => (&[][..], data),
    };
    for kind in [Kind::Hello, Kind::RingHello, Kind::ConnHello] {
        let mut src = Trickle { data, sizes, turn: 0 };
        let mut intro = Intro::default();
        for _ in 0..data.len() + 64 {
            match intro.read(&mut src, kind, 256) {
                Step::Waiting => {}
                Step::Refused(_) => break,
                Step::Done(p) => {
                    assert!(p.len() >= 32 && p.len() <= 256, "introduction of {} bytes", p.len());
                    // What was read is exactly the first frame of the input.
                    assert_eq!(frame(kind, &p), data[..wire::HEADER + p.len()], "handshake bytes");
                    payload(kind, &p[32..]);
                    break;
                }
            }
            assert!(intro.got() <= wire::HEADER + 256, "read past the limit");
        }
    }
    payload(Kind::ConnHello, data);
    call_description(data);
}

/// The call description a peer sends: the TCP data frame header (part, total,
/// descriptor) and the descriptor's readable form, which errors show the user. What
/// parses must encode back to the same bytes; describing any two words must not panic.
pub fn call_description(data: &[u8]) {
    if let Some(h) = data.first_chunk::<{ crate::transport::tcp::frame::FRAME_HEADER }>() {
        let (part, total, desc) = crate::transport::tcp::frame::parse_header(h);
        assert_eq!(&crate::transport::tcp::frame::frame_header(part, total, desc), h, "frame header round trip");
        let text = crate::call::desc::describe(desc);
        assert!(text.len() < 256, "a description of {} bytes", text.len());
        let _ = crate::call::desc::tag_bits(desc);
        let _ = crate::call::desc::is_p2p(desc);
    }
}

/// The unique id: its 128-byte form and its text form; what parses must print back to
/// the same bytes and text.
pub fn unique_id(data: &[u8]) {
    if let Ok(id) = UniqueId::from_bytes(data) {
        assert_eq!(id.to_bytes()[..], data[..], "unique id bytes round trip");
        assert_eq!(id.to_string().parse::<UniqueId>().ok(), Some(id));
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(id) = s.parse::<UniqueId>()
    {
        assert_eq!(id.to_string(), s.trim().to_ascii_lowercase(), "unique id text round trip");
    }
}

/// What ranks exchange at init: `PeerInfo` and the transport endpoints (TCP listener,
/// shared-memory segment name). What decodes must decode again, alike, after encoding.
pub fn peer_info(data: &[u8]) {
    if let Ok(p) = PeerInfo::decode(data) {
        assert_eq!(PeerInfo::decode(&p.encode()).ok(), Some(p));
    }
    if let Ok(table) = crate::transport::setup::decode(data) {
        assert_eq!(crate::transport::setup::encode(&table), data, "transport addresses round trip");
        for (_, a) in &table {
            let _ = crate::transport::tcp::setup::listener_addrs(&[a]);
        }
    }
}

/// Seed inputs made by the real encoders, with edge cases: (target, file name, bytes).
pub fn seed_corpus() -> Vec<(&'static str, String, Vec<u8>)> {
    let secret = [0x5au8; 32];
    let v4: SocketAddr = "10.1.2.3:29500".parse().expect("address");
    let v6: SocketAddr = "[fd00::7]:1234".parse().expect("address");
    let intro = |kind: Kind, body: &[u8]| {
        let mut p = secret.to_vec();
        p.extend_from_slice(body);
        frame(kind, &p)
    };
    let mut hello = Enc::new();
    hello.u32(1).u32(4).addr(&v4);
    let mut hello6 = Enc::new();
    hello6.u32(3).u32(4).addr(&v6);
    let mut conn = Enc::new();
    conn.u32(2).u32(1).u32(0).u64(0x0001_0000_0400_0001).u64(1000 | 2 << 48);
    let next = Enc(msg::encode_partners(&[v4, v6, v4]));
    let mut block = Enc::new();
    block.u32(2).bytes(b"host-and-pid");
    let mut fail = Enc::new();
    fail.bytes(b"ranks disagree on the number of ranks");
    let culprit = fault_msg::Culprit { rank: 3, host: Some("node7".into()), pid: Some(4242) };
    let fault =
        fault_msg::Notice { class: 4, origin: 1, text: "rank 3 (node7, pid 4242) died".into(), culprit: Some(culprit) };
    let place =
        fault_msg::Where { origin: 2, hops: 1, tag: 41, desc: [0x0001_0000_0400_0001, 1000 | 41 << 48], seq: 44 };
    let mut huge = frame(Kind::Block, b"");
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut stream = intro(Kind::Hello, &hello.0);
    stream.extend(frame(Kind::Next, &next.0));
    stream.extend(frame(Kind::Block, &block.0));
    stream.extend(frame(Kind::Fail, &fail.0));
    let mut out: Vec<(&'static str, String, Vec<u8>)> = vec![
        ("bootstrap_frames", "hello".into(), intro(Kind::Hello, &hello.0)),
        ("bootstrap_frames", "hello-v6".into(), intro(Kind::Hello, &hello6.0)),
        ("bootstrap_frames", "ring-hello".into(), intro(Kind::RingHello, &[2, 0, 0, 0, 1, 0, 0, 0])),
        ("bootstrap_frames", "conn-hello".into(), intro(Kind::ConnHello, &conn.0)),
        ("bootstrap_frames", "next".into(), frame(Kind::Next, &next.0)),
        ("bootstrap_frames", "block".into(), frame(Kind::Block, &block.0)),
        ("bootstrap_frames", "fail".into(), frame(Kind::Fail, &fail.0)),
        ("bootstrap_frames", "stream".into(), stream),
        ("bootstrap_frames", "huge-length".into(), huge),
        ("bootstrap_frames", "bad-magic".into(), b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        ("bootstrap_frames", "empty".into(), Vec::new()),
        ("bootstrap_frames", "fault".into(), frame(Kind::Fault, &fault.encode())),
        (
            "bootstrap_frames",
            "fault-no-culprit".into(),
            frame(Kind::Fault, &fault_msg::Notice { culprit: None, ..fault.clone() }.encode()),
        ),
        ("bootstrap_frames", "where".into(), frame(Kind::Where, &place.encode())),
    ];
    for (name, kind, body) in [
        ("hello", Kind::Hello, &hello.0),
        ("ring", Kind::RingHello, &vec![1, 0, 0, 0, 0, 0, 0, 0]),
        ("conn", Kind::ConnHello, &conn.0),
    ] {
        let f = intro(kind, body);
        out.push(("handshake", format!("{name}-whole"), [&[0u8][..], &f].concat()));
        out.push(("handshake", format!("{name}-bytewise"), [&[2u8, 1, 0][..], &f].concat()));
        out.push(("handshake", format!("{name}-truncated"), [&[0u8][..], &f[..f.len() - 3]].concat()));
    }
    for root in [v4, v6] {
        let id = UniqueId::with_secret(root, secret);
        let tag = if root.is_ipv4() { "v4" } else { "v6" };
        out.push(("unique_id", format!("bytes-{tag}"), id.to_bytes().to_vec()));
        out.push(("unique_id", format!("text-{tag}"), id.to_string().into_bytes()));
    }
    out.push(("unique_id", "text-padded".into(), format!("  {}\n", UniqueId::with_secret(v4, secret)).into_bytes()));
    let info = PeerInfo { host_id: "node7/0b1c-boot-id".into(), hostname: "node7".into(), pid: 4242 };
    out.push(("peer_info", "peer-info".into(), info.encode()));
    let name = "oxccl-0123456789abcdef0123456789abcdef";
    let tcp = |a: &SocketAddr| {
        let mut e = Enc::new();
        e.addr(a);
        e.0
    };
    let both = [("shm", name.as_bytes().to_vec()), ("tcp", tcp(&v4))];
    out.push(("peer_info", "endpoints-both".into(), crate::transport::setup::encode(&both)));
    out.push(("peer_info", "endpoints-tcp6".into(), crate::transport::setup::encode(&[("tcp", tcp(&v6))])));
    out.push(("peer_info", "endpoints-none".into(), crate::transport::setup::encode::<&str>(&[])));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed, every file of `fuzz/corpus` and every input of `fuzz/regressions`
    /// (inputs that once crashed a target) passes its target; `OXCCL_WRITE_CORPUS=1` (re)writes the seeds.
    #[test]
    fn the_corpus_passes_every_target() {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let dir = fuzz.join("corpus");
        let write = std::env::var("OXCCL_WRITE_CORPUS").is_ok_and(|v| v == "1");
        for (target, name, bytes) in seed_corpus() {
            if write {
                std::fs::create_dir_all(dir.join(target)).unwrap();
                std::fs::write(dir.join(target).join(&name), &bytes).unwrap();
            }
            let f = TARGETS.iter().find(|(t, _)| *t == target).unwrap().1;
            f(&bytes);
        }
        for (target, f) in TARGETS {
            for kept in ["corpus", "regressions"] {
                let Ok(files) = std::fs::read_dir(fuzz.join(kept).join(target)) else { continue };
                for file in files.flatten().filter(|f| f.path().is_file()) {
                    f(&std::fs::read(file.path()).unwrap());
                }
            }
        }
    }
}
