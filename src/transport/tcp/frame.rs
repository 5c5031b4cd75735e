//! The TCP link's wire format and socket calls: a message travels as frames
//! (`part u32 | total u32 | descriptor 2 x u64 | bytes`) on the first socket, or, from
//! [`STRIPE_MIN`], striped across all of a link's sockets.

use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// Socket buffer size to force, if any: `None` leaves the kernel's autotuning alone,
/// which measured faster than a fixed 1 or 4 MiB on loopback (and setting a size turns
/// autotuning off, capped at net.core.wmem_max).
const SOCKET_BUFFER: Option<i32> = None;

pub(crate) const FRAME_HEADER: usize = 24;
/// Messages from this size are striped across a link's sockets.
pub(crate) const STRIPE_MIN: usize = 64 << 10;
/// The `(offset, length)` of the part of a `total`-byte message each socket carries:
/// everything on socket 0, or near-equal page-aligned stripes on all `nsocks`.
pub(crate) fn stripes(total: usize, nsocks: usize) -> impl Iterator<Item = (usize, usize)> {
    let (n, part) = if nsocks <= 1 || total < STRIPE_MIN {
        (1, total)
    } else {
        (nsocks, total.div_ceil(nsocks).div_ceil(4096) * 4096)
    };
    (0..n).map(move |i| {
        let off = (i * part).min(total);
        (off, part.min(total - off))
    })
}

pub(super) fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let fd = s.as_raw_fd();
    let Some(size) = SOCKET_BUFFER else { return };
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setting an integer socket option on an open socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &size as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}

/// `sendmsg` of two buffers with `MSG_NOSIGNAL`: a peer that went away is an error to
/// report, never a SIGPIPE that kills a host program which did not ignore it.
pub(super) fn send_nosignal(sock: &TcpStream, a: &[u8], b: &[u8]) -> std::io::Result<usize> {
    let mut iov = [
        libc::iovec { iov_base: a.as_ptr() as *mut libc::c_void, iov_len: a.len() },
        libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() },
    ];
    // SAFETY: a zeroed msghdr is valid; we point it at two iovecs that describe live
    // slices for the duration of the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = if b.is_empty() { 1 } else { 2 };
    // SAFETY: the socket is open; sendmsg only reads the buffers.
    let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as usize) }
}

pub(crate) fn frame_header(part: usize, total: usize, desc: [u64; 2]) -> [u8; FRAME_HEADER] {
    let mut h = [0u8; FRAME_HEADER];
    h[..4].copy_from_slice(&(part as u32).to_le_bytes());
    h[4..8].copy_from_slice(&(total as u32).to_le_bytes());
    h[8..16].copy_from_slice(&desc[0].to_le_bytes());
    h[16..24].copy_from_slice(&desc[1].to_le_bytes());
    h
}

pub(crate) fn parse_header(h: &[u8; FRAME_HEADER]) -> (usize, usize, [u64; 2]) {
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes")) as usize;
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    (u32_at(0), u32_at(4), [u64_at(8), u64_at(16)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_cover_messages_exactly() {
        for nsocks in [1usize, 2, 3, 4, 8] {
            for total in [0usize, 1, 100, STRIPE_MIN - 1, STRIPE_MIN, STRIPE_MIN + 1, 1 << 20, (1 << 20) + 12345] {
                let v: Vec<(usize, usize)> = stripes(total, nsocks).collect();
                assert_eq!(v.len(), if nsocks > 1 && total >= STRIPE_MIN { nsocks } else { 1 });
                let mut at = 0;
                for (off, len) in v {
                    assert_eq!(off, at.min(total));
                    at = off + len;
                }
                assert_eq!(at, total, "nsocks {nsocks} total {total}");
            }
        }
        let h = frame_header(5, 9, [1, 2]);
        assert_eq!(parse_header(&h), (5, 9, [1, 2]));
    }
}
