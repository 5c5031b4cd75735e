//! The verbs wrapper against real RDMA devices (feature `ib`): inside the Soft-RoCE VM
//! (`scripts/ib-vm-test.sh` boots it), reliable connections between `rxe0` and `rxe1`
//! (two "hosts" joined by a veth pair):
//! - 1 MiB as eight RDMA WRITE WITH IMMEDIATE chunks into the peer's registered buffer,
//!   checked byte for byte with their immediates (the receiver waits on a completion
//!   channel), then a SEND into a posted receive buffer;
//! - a write to the queue pair of a peer that has been destroyed ends in an error
//!   completion (transport retries exceeded) instead of hanging;
//! - a write with a remote key the peer never handed out ends in an error completion.
//!
//! Outside the VM each test prints `skipped: ...` and passes.
#![cfg(feature = "ib")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use oxccl::internals::transport::ib::verbs::{
    Address, CompChannel, Completion, Context, Cq, Mr, Pd, PortInfo, Qp, QpTuning, SendWr,
};

const LIMIT: Duration = Duration::from_secs(120);

fn in_vm(test: &str) -> bool {
    if std::env::var("RDMA_VM").is_err() {
        println!("skipped: {test}: not inside the Soft-RoCE VM (scripts/ib-vm-test.sh runs it there)");
        return false;
    }
    true
}

/// Polls `cq` until `n` completions came, failing after `limit` (busy polling).
fn poll_for(cq: &Cq, n: usize, limit: Duration) -> Vec<Completion> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(cq.poll(16).unwrap());
        assert!(t0.elapsed() < limit, "only {} of {n} completions after {limit:?}: {got:?}", got.len());
        std::thread::yield_now();
    }
    got
}

/// Like `poll_for`, but sleeping on the queue's completion channel between polls.
fn wait_for(cq: &Cq, n: usize, limit: Duration) -> (Vec<Completion>, usize) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut events = 0;
    loop {
        got.extend(cq.poll(16).unwrap());
        if got.len() >= n {
            return (got, events);
        }
        cq.req_notify(false).unwrap();
        // A completion between the poll and the arming raises no event: poll again.
        got.extend(cq.poll(16).unwrap());
        if got.len() >= n {
            return (got, events);
        }
        assert!(t0.elapsed() < limit, "only {} of {n} completions after {limit:?}: {got:?}", got.len());
        if cq.wait_event(Duration::from_secs(5)).unwrap() {
            events += 1;
        }
    }
}

/// One end: a device, its PD, a CQ (with a completion channel) and an RC QP.
struct Side {
    qp: Qp,
    cq: Arc<Cq>,
    pd: Arc<Pd>,
    port: PortInfo,
    gid: [u8; 16],
    _ctx: Arc<Context>,
}

fn gid_index() -> u8 {
    std::env::var("RDMA_VM_GID_INDEX").expect("RDMA_VM_GID_INDEX").parse().unwrap()
}

fn side(dev_var: &str) -> Side {
    let dev = std::env::var(dev_var).unwrap_or_else(|_| panic!("{dev_var} unset"));
    let ctx = Context::open(&dev).unwrap();
    let port = ctx.port(1).unwrap();
    assert!(port.active, "{dev} port 1 is not active");
    let pd = Pd::new(&ctx).unwrap();
    let ch = CompChannel::new(&ctx).unwrap();
    let cq = Cq::with_channel(&ctx, 64, &ch).unwrap();
    let qp = Qp::rc(&pd, &cq, 32).unwrap();
    let gid = ctx.gid(1, gid_index() as u32).unwrap();
    Side { qp, cq, pd, port, gid, _ctx: ctx }
}

/// Connects `a` and `b` (RESET → INIT → RTR → RTS on both).
fn connect(a: &Side, b: &Side) {
    let mtu = a.port.active_mtu.min(b.port.active_mtu);
    let aa = Address { qpn: a.qp.qpn(), psn: 100, lid: a.port.lid, gid: a.gid };
    let ab = Address { qpn: b.qp.qpn(), psn: 200, lid: b.port.lid, gid: b.gid };
    // A traffic class and service level as an operator would set them (OXCCL_IB_TC=106,
    // DSCP 26; OXCCL_IB_SL=3): the devices accept them.
    let tuning = QpTuning { traffic_class: 106, service_level: 3, ..QpTuning::default() };
    a.qp.connect(1, Some(gid_index()), mtu, aa.psn, &ab, &tuning).unwrap();
    b.qp.connect(1, Some(gid_index()), mtu, ab.psn, &aa, &tuning).unwrap();
}

#[test]
fn write_with_immediate_between_rxe0_and_rxe1() {
    if !in_vm("write_with_immediate_between_rxe0_and_rxe1") {
        return;
    }
    let s0 = side("RDMA_VM_DEV0");
    let s1 = side("RDMA_VM_DEV1");
    connect(&s0, &s1);

    const LEN: usize = 1 << 20;
    const CHUNKS: usize = 8;
    let mut src: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
    let mut dst = vec![0u8; LEN];
    // SAFETY: both vectors outlive their regions (deregistered before the vectors drop).
    let (m0, m1) = unsafe {
        (Mr::register(&s0.pd, src.as_mut_ptr(), LEN).unwrap(), Mr::register(&s1.pd, dst.as_mut_ptr(), LEN).unwrap())
    };
    assert_eq!((m0.len(), m1.len()), (LEN, LEN));
    for i in 0..CHUNKS as u64 {
        s1.qp.post_recv(i).unwrap();
    }
    let chunk = LEN / CHUNKS;
    let t0 = Instant::now();
    for i in 0..CHUNKS {
        let off = i * chunk;
        // SAFETY: the remote range is inside `dst`'s region; `src` is unchanged until done.
        unsafe {
            s0.qp.write_imm(&m0, off, chunk, (m1.addr() + off as u64, m1.rkey()), 0xab00 + i as u32, i as u64).unwrap()
        };
    }
    let sent = poll_for(&s0.cq, CHUNKS, LIMIT);
    assert!(sent.iter().all(Completion::is_ok), "send completions: {sent:?}");
    let (mut recvd, events) = wait_for(&s1.cq, CHUNKS, LIMIT);
    let elapsed = t0.elapsed();
    assert!(recvd.iter().all(Completion::is_ok), "receive completions: {recvd:?}");
    assert!(recvd.iter().all(|c| c.opcode == rdma_sys::ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM));
    recvd.sort_by_key(|c| c.imm);
    let imms: Vec<Option<u32>> = recvd.iter().map(|c| c.imm).collect();
    assert_eq!(imms, (0..CHUNKS as u32).map(|i| Some(0xab00 + i)).collect::<Vec<_>>());
    assert!(recvd.iter().all(|c| c.byte_len as usize == chunk), "{recvd:?}");
    assert!(dst == src, "the written bytes differ");
    println!(
        "1 MiB in {CHUNKS} RDMA WRITE WITH IMMEDIATE chunks rxe0 -> rxe1: bytes and immediates correct \
         ({elapsed:?}, {events} completion-channel events)"
    );

    // A SEND lands in the next posted receive buffer.
    // SAFETY: the first 4 KiB of `dst` are not touched until the receive completes.
    unsafe { s1.qp.post_recv_buf(&m1, 0, 4096, 77).unwrap() };
    src[LEN - 100..].fill(0x5e);
    // Armed before the completion exists, so the channel must see an event.
    assert!(s1.cq.poll(16).unwrap().is_empty());
    s1.cq.req_notify(false).unwrap();
    // SAFETY: inside `src`'s region, unchanged until the completion.
    let send = SendWr {
        wr_id: 78,
        local: Some((m0.addr() + (LEN - 100) as u64, 100, m0.lkey())),
        signaled: true,
        ..Default::default()
    };
    unsafe { s0.qp.post_send(&[send]).unwrap() };
    assert!(s1.cq.wait_event(LIMIT).unwrap(), "no completion-channel event for the SEND's receive");
    let c = poll_for(&s0.cq, 1, LIMIT);
    assert!(c[0].is_ok() && c[0].wr_id == 78 && c[0].opcode == rdma_sys::ibv_wc_opcode::IBV_WC_SEND, "{c:?}");
    let c = poll_for(&s1.cq, 1, LIMIT);
    assert!(c[0].is_ok() && c[0].wr_id == 77 && c[0].byte_len == 100 && c[0].imm.is_none(), "{c:?}");
    assert!(dst[..100].iter().all(|&b| b == 0x5e) && dst[100] == src[100]);
    println!("SEND of 100 bytes rxe0 -> rxe1 into a posted receive buffer: correct (woken by its completion channel)");

    // A write the peer must refuse (a key it never handed out) ends in an error
    // completion, not a hang.
    s1.qp.post_recv(9).unwrap();
    let t0 = Instant::now();
    // SAFETY: the key is wrong on purpose: the peer refuses the write, nothing is written.
    unsafe { s0.qp.write_imm(&m0, 0, 4096, (m1.addr(), m1.rkey() ^ 0x5a5a_0000), 1, 99).unwrap() };
    let c = poll_for(&s0.cq, 1, LIMIT);
    assert!(!c[0].is_ok(), "a write with a bad remote key succeeded");
    println!("write with a bad remote key: '{}' after {:?}", c[0].status_text(), t0.elapsed());
    m1.deregister().unwrap();
    m0.deregister().unwrap();
    drop((s1, s0, dst, src));
}

#[test]
fn a_write_to_a_destroyed_peer_ends_in_an_error_completion() {
    if !in_vm("a_write_to_a_destroyed_peer_ends_in_an_error_completion") {
        return;
    }
    let s0 = side("RDMA_VM_DEV0");
    let s1 = side("RDMA_VM_DEV1");
    connect(&s0, &s1);
    let mut src = vec![1u8; 65536];
    let mut dst = vec![0u8; 65536];
    // SAFETY: both vectors outlive their regions.
    let (m0, m1) = unsafe {
        (Mr::register(&s0.pd, src.as_mut_ptr(), 65536).unwrap(), Mr::register(&s1.pd, dst.as_mut_ptr(), 65536).unwrap())
    };
    let remote = (m1.addr(), m1.rkey());
    // Prove the connection first.
    s1.qp.post_recv(1).unwrap();
    // SAFETY: inside both regions.
    unsafe { s0.qp.write_imm(&m0, 0, 4096, remote, 1, 1).unwrap() };
    assert!(poll_for(&s0.cq, 1, LIMIT)[0].is_ok());
    assert!(wait_for(&s1.cq, 1, LIMIT).0[0].is_ok());

    // The peer goes away entirely (QP, MR, CQ, PD, device context), as when its process
    // dies; the device stays, so the packets arrive for a queue pair that is gone.
    drop((m1, s1));
    let t0 = Instant::now();
    // SAFETY: the remote memory no longer takes writes (its region is deregistered);
    // `src` stays unchanged until the completion.
    unsafe { s0.qp.write_imm(&m0, 0, 4096, remote, 2, 2).unwrap() };
    let c = poll_for(&s0.cq, 1, LIMIT);
    assert!(!c[0].is_ok(), "a write to a destroyed queue pair succeeded: {c:?}");
    println!("write to a destroyed peer: error completion '{}' after {:?}", c[0].status_text(), t0.elapsed());
    // The queue pair is now in the error state: a further post is flushed, not lost.
    // SAFETY: as above.
    unsafe { s0.qp.write_imm(&m0, 0, 4096, remote, 3, 3).unwrap() };
    let c = poll_for(&s0.cq, 1, LIMIT);
    assert!(!c[0].is_ok() && c[0].wr_id == 3, "{c:?}");
    println!("next post on that queue pair: '{}'", c[0].status_text());
    drop((m0, s0, src, dst));
}
