//! The arithmetic of a step: combine its sources (incoming slots, the local input) into
//! its first destination, finalize, copy to the others; and the rank-ordered fold of
//! raw contributions that gives every rank identical bits.

use crate::algo::{Buf, Span, Step};
use crate::call::Rank;
use crate::error::{Error, Result};
use crate::reduce::{self, Reducer};

use super::{Call, Scratch};

pub(super) fn span_ptr(call: &Call, sp: Span, count: usize) -> Result<*mut u8> {
    let (base, len) = match sp.buf {
        Buf::Send => (call.send as *mut u8, call.send_len),
        Buf::Recv => (call.recv, call.recv_len),
    };
    if sp.offset.checked_add(count).is_none_or(|e| e > len) {
        return Err(Error::internal(format!(
            "schedule span {sp:?} of {count} elements exceeds a buffer of {len} elements"
        )));
    }
    // SAFETY: offset + count <= len (checked), and the caller guarantees the buffer holds
    // `len` elements of `elem` bytes.
    Ok(unsafe { base.add(sp.offset * call.elem) })
}

/// The arithmetic of a step: combine the sources into the first destination, finalize,
/// copy to the others.
///
/// # Safety
/// See the caller: all pointers valid for the step's elements, destinations disjoint.
pub(super) unsafe fn compute(call: &Call, step: &Step, sc: &mut Scratch, out: Option<*mut u8>) {
    let count = step.count;
    let bytes = count * call.elem;
    let (d0, d0_is_out) = match sc.dsts.first() {
        Some(&d) => (d, false),
        None => match out {
            Some(o) => (o, true),
            None => return,
        },
    };
    let nt0 = d0_is_out && call.nt;
    let Some((_, first, _)) = sc.srcs.first().copied() else {
        return;
    };
    // SAFETY (whole body): forwarded from the caller's contract.
    unsafe {
        match &call.reducer {
            Some(r) if step.raw => {
                if sc.dsts.is_empty() && sc.srcs.len() > 1 {
                    sc.srcs.sort_unstable_by_key(|s| s.0);
                    if let Some(i) = sc.srcs.iter().position(|s| s.2 && std::ptr::eq(s.1, d0)) {
                        // In place: keep our contribution before the output is written.
                        sc.tmp.clear();
                        sc.tmp.extend_from_slice(std::slice::from_raw_parts(sc.srcs[i].1, bytes));
                        sc.srcs[i].1 = sc.tmp.as_ptr();
                    }
                    fold_raw(r, d0, &sc.srcs, count, nt0);
                } else {
                    for &d in sc.dsts.iter() {
                        reduce::copy(d, first, bytes, false);
                    }
                    if let Some(o) = out
                        && !std::ptr::eq(o, first)
                    {
                        r.load_input(o, first, count, call.nt);
                        if step.finalize {
                            r.finalize(o, o, count);
                        }
                    }
                }
            }
            Some(r) => {
                if d0_is_out
                    && sc.srcs.len() > 1
                    && let Some(i) = sc.srcs[1..].iter().position(|s| std::ptr::eq(s.1, d0)).map(|i| i + 1)
                {
                    // In place (a reduce's root writes its input): the fold writes the
                    // output before it reaches our contribution, so keep a copy of it.
                    sc.tmp.clear();
                    sc.tmp.extend_from_slice(std::slice::from_raw_parts(sc.srcs[i].1, bytes));
                    sc.srcs[i].1 = sc.tmp.as_ptr();
                }
                let (_, a, a_in) = sc.srcs[0];
                if sc.srcs.len() == 1 {
                    if a_in {
                        r.load_input(d0, a, count, nt0);
                    } else {
                        reduce::copy(d0, a, bytes, nt0);
                    }
                } else {
                    let (_, b, b_in) = sc.srcs[1];
                    match (a_in, b_in) {
                        (true, _) => r.combine_input(d0, b, a, count, nt0),
                        (_, true) => r.combine_input(d0, a, b, count, nt0),
                        _ => r.combine(d0, a, b, count, nt0),
                    }
                    for &(_, s, s_in) in &sc.srcs[2..] {
                        if s_in {
                            r.combine_input(d0, d0, s, count, nt0);
                        } else {
                            r.combine(d0, d0, s, count, nt0);
                        }
                    }
                }
                if step.finalize && r.has_post() {
                    r.finalize(d0, d0, count);
                }
                for &d in sc.dsts.iter().skip(1) {
                    reduce::copy(d, d0, bytes, false);
                }
                if let Some(o) = out
                    && !d0_is_out
                {
                    reduce::copy(o, d0, bytes, call.nt);
                }
            }
            None => {
                for &d in sc.dsts.iter() {
                    reduce::copy(d, first, bytes, false);
                }
                if let Some(o) = out
                    && !std::ptr::eq(o, first)
                {
                    reduce::copy(o, first, bytes, call.nt);
                }
            }
        }
        if call.nt {
            reduce::store_fence();
        }
    }
}

/// Folds raw contributions, already in rank order, into `dst`: `pre(s0) op pre(s1) op
/// ...`, then the post-operation. Every rank evaluates the same expression, so all get
/// identical bits.
///
/// # Safety
/// `dst` writable and each source readable for `count` elements; no source aliases `dst`.
pub(super) unsafe fn fold_raw(r: &Reducer, dst: *mut u8, srcs: &[(Rank, *const u8, bool)], count: usize, nt: bool) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        let mut rest = &srcs[1..];
        if r.has_pre() {
            r.load_input(dst, srcs[0].1, count, false);
        } else if let Some(s1) = rest.first() {
            r.combine(dst, srcs[0].1, s1.1, count, nt && rest.len() == 1);
            rest = &rest[1..];
        } else {
            reduce::copy(dst, srcs[0].1, count * r.dtype().size(), false);
        }
        for (i, s) in rest.iter().enumerate() {
            r.combine_input(dst, dst, s.1, count, nt && i + 1 == rest.len());
        }
        if r.has_post() {
            r.finalize(dst, dst, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DataType, ReduceOp};

    #[test]
    fn raw_contributions_fold_in_rank_order_with_the_ops_pre_and_post() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [10.0f32, 20.0, 30.0];
        let c = [100.0f32, 200.0, 300.0];
        let srcs: Vec<(Rank, *const u8, bool)> =
            [&a, &b, &c].iter().enumerate().map(|(r, s)| (r, s.as_ptr() as *const u8, true)).collect();
        let mut out = [0f32; 3];
        let sum = Reducer::new(DataType::Float32, ReduceOp::Sum, 3).unwrap();
        // SAFETY: every source and the output hold 3 f32; none aliases the output.
        unsafe { fold_raw(&sum, out.as_mut_ptr() as *mut u8, &srcs, 3, false) };
        assert_eq!(out, [111.0, 222.0, 333.0]);
        let avg = Reducer::new(DataType::Float32, ReduceOp::Avg, 3).unwrap();
        // SAFETY: as above.
        unsafe { fold_raw(&avg, out.as_mut_ptr() as *mut u8, &srcs, 3, false) };
        assert_eq!(out, [37.0, 74.0, 111.0]);
    }

    #[test]
    fn a_span_past_its_buffer_is_an_internal_error_not_a_wild_pointer() {
        use crate::algo::Chunking;
        use crate::call::{Algo, Collective};
        let (send, mut recv) = ([0u8; 16], [0u8; 16]);
        let c = Call {
            send: send.as_ptr(),
            send_len: 4,
            recv: recv.as_mut_ptr(),
            recv_len: 4,
            elem: 4,
            reducer: None,
            desc: [0; 2],
            nt: false,
            seq: 1,
            by_ref: false,
            coll: Collective::AllGather { count: 4 },
            algo: Algo::Ring,
            chunking: Chunking { chunk: 4, align: 1 },
            path: super::super::Path::Streams,
        };
        assert!(span_ptr(&c, Span { buf: Buf::Recv, offset: 2 }, 2).is_ok());
        let e = span_ptr(&c, Span { buf: Buf::Send, offset: 3 }, 2).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Internal, "{e}");
    }
}
