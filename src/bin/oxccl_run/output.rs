//! Forwarding the ranks' output to the launcher's: one thread per rank and stream, whole
//! lines only, each batch written with the stream's lock held so that lines from different
//! ranks never mix, and written as soon as it is complete (nothing waits for the exit).

use std::io::{self, Read, Write};
use std::sync::mpsc::Sender;
use std::thread;

/// Bytes read from a rank's pipe at a time.
const CHUNK: usize = 64 * 1024;

/// A line longer than this is forwarded in pieces (each tagged, when tagging) rather than
/// held in memory until its end.
const MAX_LINE: usize = 1 << 20;

/// Stack of a forwarding thread: it keeps its buffers on the heap.
const STACK: usize = 256 * 1024;

/// Which of the launcher's streams a rank's stream goes to.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// The launcher's standard output.
    Stdout,
    /// The launcher's standard error.
    Stderr,
}

impl Stream {
    /// Writes `bytes` in one go with the stream locked, so no other thread's output lands in
    /// between, and flushes them through.
    fn write(self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Stream::Stderr => {
                let mut err = io::stderr().lock();
                err.write_all(bytes)?;
                err.flush()
            }
        }
    }
}

/// Forwards `pipe` (rank `rank`'s stdout or stderr) to `stream` on a new thread, then sends
/// `rank` on `closed` once the pipe reaches its end (every process holding it has exited or
/// closed it).
pub fn spawn(
    rank: usize,
    pipe: impl Read + Send + 'static,
    stream: Stream,
    tag: bool,
    closed: Sender<usize>,
) -> io::Result<()> {
    thread::Builder::new().name(format!("rank {rank} {stream:?}")).stack_size(STACK).spawn(move || {
        let prefix = if tag { format!("[{rank}] ").into_bytes() } else { Vec::new() };
        forward(pipe, stream, &prefix);
        let _ = closed.send(rank);
    })?;
    Ok(())
}

/// Copies `pipe` to `stream` line by line, putting `prefix` (empty: none) before each line.
/// Bytes are never altered, except that with a prefix a last line without its newline gets
/// one, so that the next line from another rank starts on a line of its own. When `stream`
/// is closed (a reader such as `head` went away) the rest is read and dropped, so the rank
/// does not block on a full pipe.
fn forward(mut pipe: impl Read, stream: Stream, prefix: &[u8]) {
    let mut chunk = vec![0u8; CHUNK];
    // Bytes read but not yet written: a partial line, waiting for its newline.
    let mut pending: Vec<u8> = Vec::new();
    let mut batch: Vec<u8> = Vec::new();
    let mut open = true;
    let mut emit = |bytes: &[u8]| {
        if open && stream.write(bytes).is_err() {
            open = false;
        }
    };
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let data = &chunk[..n];
        let Some(last_newline) = data.iter().rposition(|&b| b == b'\n') else {
            pending.extend_from_slice(data);
            if pending.len() >= MAX_LINE {
                emit(line_batch(&mut batch, prefix, &pending, true));
                pending.clear();
            }
            continue;
        };
        let (complete, rest) = data.split_at(last_newline + 1);
        pending.extend_from_slice(complete);
        emit(line_batch(&mut batch, prefix, &pending, false));
        pending.clear();
        pending.extend_from_slice(rest);
    }
    if !pending.is_empty() {
        emit(line_batch(&mut batch, prefix, &pending, true));
    }
}

/// Fills `batch` with `lines` (whole lines, except maybe the last), each after `prefix`, and
/// returns it. With a prefix and `terminate`, an unterminated last line gets a newline.
fn line_batch<'a>(batch: &'a mut Vec<u8>, prefix: &[u8], lines: &[u8], terminate: bool) -> &'a [u8] {
    batch.clear();
    if prefix.is_empty() {
        batch.extend_from_slice(lines);
        return batch;
    }
    for line in lines.split_inclusive(|&b| b == b'\n') {
        batch.extend_from_slice(prefix);
        batch.extend_from_slice(line);
    }
    if terminate && !lines.ends_with(b"\n") {
        batch.push(b'\n');
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_tag_every_line() {
        let mut b = Vec::new();
        assert_eq!(line_batch(&mut b, b"[3] ", b"a\n\nbc\n", false), b"[3] a\n[3] \n[3] bc\n");
        assert_eq!(line_batch(&mut b, b"[3] ", b"a\ntail", true), b"[3] a\n[3] tail\n");
        assert_eq!(line_batch(&mut b, b"", b"a\ntail", true), b"a\ntail");
    }
}
