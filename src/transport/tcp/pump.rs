//! Moving bytes between a link's FIFO and its sockets, without blocking: a send link
//! drains its FIFO into the sockets, a receive link fills its FIFO from them, with
//! read-ahead and striping.

use std::io::{ErrorKind, Read};

use super::frame::{FRAME_HEADER, frame_header, parse_header, send_nosignal, stripes};
use super::{READ_AHEAD, RecvConn, RxSock, SendConn, Tcp};
use crate::error::{Error, Result};

impl Tcp {
    pub(super) fn pump_send(&self, c: &mut SendConn) -> Result<bool> {
        let mut moved = false;
        loop {
            if !c.busy {
                if !c.fifo.can_recv() {
                    return Ok(moved);
                }
                let m = c.fifo.message();
                for (s, (off, len)) in c.socks.iter_mut().zip(stripes(m.bytes, self.nsocks)) {
                    s.header = frame_header(len, m.bytes, m.desc);
                    s.left = FRAME_HEADER + len;
                    s.off = off;
                    s.len = len;
                }
                c.busy = true;
            }
            let m = c.fifo.message();
            let mut done = true;
            for s in c.socks.iter_mut().filter(|s| s.left > 0) {
                while s.left > 0 {
                    let sent = FRAME_HEADER + s.len - s.left;
                    // SAFETY: the message is ours until released, and holds m.bytes bytes,
                    // of which this socket's part is [off, off + len).
                    let part = unsafe { std::slice::from_raw_parts(m.ptr.add(s.off), s.len) };
                    let r = if sent < FRAME_HEADER {
                        send_nosignal(&s.sock, &s.header[sent..], part)
                    } else {
                        send_nosignal(&s.sock, &part[sent - FRAME_HEADER..], &[])
                    };
                    match r {
                        Ok(0) => return Err(self.closed(c.peer, "sending")),
                        Ok(k) => {
                            s.left -= k;
                            moved = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(self.broken(c.peer, "sending to", e)),
                    }
                }
                done &= s.left == 0;
            }
            if !done {
                return Ok(moved);
            }
            c.busy = false;
            c.fifo.release();
        }
    }

    /// Reads from socket `s` into its read-ahead buffer; `Ok(false)` when it has nothing
    /// now. A clean end of stream between messages marks the link closed (a peer that
    /// finished); mid-message it is an error.
    fn fill(&self, peer: usize, s: &mut RxSock, closed: &mut bool) -> Result<bool> {
        if s.rstart == s.rend {
            s.rstart = 0;
            s.rend = 0;
        }
        loop {
            match s.sock.read(&mut s.rbuf[s.rend..]) {
                Ok(0) if s.have_header == 0 && s.rstart == s.rend => {
                    *closed = true;
                    return Ok(false);
                }
                Ok(0) => return Err(self.closed(peer, "receiving")),
                Ok(k) => {
                    s.drained = s.rend + k < s.rbuf.len();
                    s.rend += k;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    s.drained = true;
                    return Ok(false);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broken(peer, "receiving from", e)),
            }
        }
    }

    /// Completes socket `s`'s frame header from read-ahead or the socket; whether done.
    fn read_header(&self, peer: usize, s: &mut RxSock, closed: &mut bool) -> Result<bool> {
        while s.have_header < FRAME_HEADER {
            if s.rstart == s.rend && (s.drained || !self.fill(peer, s, closed)?) {
                return Ok(false);
            }
            let k = (FRAME_HEADER - s.have_header).min(s.rend - s.rstart);
            s.header[s.have_header..s.have_header + k].copy_from_slice(&s.rbuf[s.rstart..s.rstart + k]);
            s.have_header += k;
            s.rstart += k;
        }
        Ok(true)
    }

    /// Reads socket `s`'s part into `dst` (its `len` bytes); whether complete. Large parts
    /// are read straight into the slot, small ones through the read-ahead buffer.
    fn read_part(&self, peer: usize, s: &mut RxSock, dst: *mut u8, len: usize, closed: &mut bool) -> Result<bool> {
        while s.have_part < len {
            let need = len - s.have_part;
            if s.rstart < s.rend {
                let k = need.min(s.rend - s.rstart);
                // SAFETY: `dst` holds `len` bytes (a slot the caller owns); the staging
                // range holds `k` bytes.
                unsafe { std::ptr::copy_nonoverlapping(s.rbuf.as_ptr().add(s.rstart), dst.add(s.have_part), k) };
                s.rstart += k;
                s.have_part += k;
            } else if need >= READ_AHEAD / 2 {
                // SAFETY: as above: `need` bytes of the part remain.
                let buf = unsafe { std::slice::from_raw_parts_mut(dst.add(s.have_part), need) };
                match s.sock.read(buf) {
                    Ok(0) => return Err(self.closed(peer, "receiving")),
                    Ok(k) => s.have_part += k,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.broken(peer, "receiving from", e)),
                }
            } else if s.drained || !self.fill(peer, s, closed)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Moves complete messages from the sockets into the receive FIFO while it has room;
    /// returns whether a message was posted or bytes moved.
    pub(super) fn pump_recv(&self, c: &mut RecvConn) -> Result<bool> {
        let mut moved = false;
        c.socks.iter_mut().for_each(|s| s.drained = false);
        loop {
            if c.closed {
                return Ok(moved);
            }
            let RecvConn { peer, socks, fifo, closed } = c;
            let peer = *peer;
            // The first socket's header says how large the message is, hence how it is
            // striped.
            if !self.read_header(peer, &mut socks[0], closed)? {
                return Ok(moved);
            }
            let (_, total, desc) = parse_header(&socks[0].header);
            if total > self.shape.slot_bytes {
                return Err(Error::remote(format!(
                    "{} sent a malformed message ({total} bytes, more than a slot of {}): different OXCCL_SLOT_BYTES on the two ranks?",
                    self.who(peer),
                    self.shape.slot_bytes
                )));
            }
            if !fifo.can_send() {
                return Ok(moved); // the executor has not consumed earlier messages yet
            }
            let dst = fifo.buffer(total);
            let mut complete = true;
            for (i, (off, len)) in stripes(total, self.nsocks).enumerate() {
                let s = &mut socks[i];
                if !self.read_header(peer, s, closed)? {
                    complete = false;
                    continue;
                }
                let (part, t, _) = parse_header(&s.header);
                if part != len || t != total {
                    return Err(Error::remote(format!(
                        "{} sent a malformed message: socket {i} carries {part} of {t} bytes, expected {len} of {total} (different OXCCL_NSOCKS on the two ranks?)",
                        self.who(peer)
                    )));
                }
                // SAFETY: the slot holds `total` bytes and [off, off + len) lies within.
                complete &= self.read_part(peer, s, unsafe { dst.add(off) }, len, closed)?;
            }
            if !complete {
                return Ok(moved);
            }
            fifo.post(total, desc);
            moved = true;
            for s in socks.iter_mut() {
                s.have_header = 0;
                s.have_part = 0;
            }
        }
    }
}
