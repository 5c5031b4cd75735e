//! The verbs wrapper against real RDMA devices (feature `ib`): inside the Soft-RoCE VM
//! (`scripts/ib-vm-test.sh` boots it), a reliable connection between `rxe0` and `rxe1`
//! (two "hosts" joined by a veth pair) carries 1 MiB as four RDMA WRITE WITH IMMEDIATE
//! chunks, checked byte for byte with their immediates; then a write with a remote key
//! the peer never handed out ends in an error completion instead of hanging.
//! Outside the VM the test prints `skipped: ...`.
#![cfg(feature = "ib")]

use std::time::{Duration, Instant};

use oxccl::transport::ib::verbs::{Address, Completion, Context, Cq, Mr, Pd, Qp};

fn wait(cq: &Cq, n: usize, limit: Duration) -> Vec<Completion> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(cq.poll(16).unwrap());
        assert!(t0.elapsed() < limit, "only {} of {n} completions after {limit:?}", got.len());
    }
    got
}

#[test]
fn write_with_immediate_between_rxe0_and_rxe1() {
    if std::env::var("RDMA_VM").is_err() {
        println!(
            "skipped: write_with_immediate_between_rxe0_and_rxe1: not inside the Soft-RoCE VM (scripts/ib-vm-test.sh runs it there)"
        );
        return;
    }
    let gid_index: u8 = std::env::var("RDMA_VM_GID_INDEX").unwrap().parse().unwrap();
    let side = |dev: &str| {
        let ctx = Context::open(dev).unwrap();
        let port = ctx.port(1).unwrap();
        assert!(port.active, "{dev} port 1 is not active");
        let pd = Pd::new(&ctx).unwrap();
        let cq = Cq::new(&ctx, 64).unwrap();
        let qp = Qp::rc(&pd, &cq, 32).unwrap();
        let gid = ctx.gid(1, gid_index as u32).unwrap();
        (ctx, pd, cq, qp, gid, port)
    };
    let (_c0, pd0, cq0, qp0, gid0, p0) = side(&std::env::var("RDMA_VM_DEV0").unwrap());
    let (_c1, pd1, cq1, qp1, gid1, p1) = side(&std::env::var("RDMA_VM_DEV1").unwrap());
    let mtu = p0.active_mtu.min(p1.active_mtu);
    let a0 = Address { qpn: qp0.qpn(), psn: 100, lid: p0.lid, gid: gid0 };
    let a1 = Address { qpn: qp1.qpn(), psn: 200, lid: p1.lid, gid: gid1 };
    qp0.connect(1, gid_index, mtu, a0.psn, &a1).unwrap();
    qp1.connect(1, gid_index, mtu, a1.psn, &a0).unwrap();

    const LEN: usize = 1 << 20;
    let mut src: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
    let mut dst = vec![0u8; LEN];
    // SAFETY: both vectors outlive their regions (dropped at the end of the test).
    let (m0, m1) = unsafe {
        (Mr::register(&pd0, src.as_mut_ptr(), LEN).unwrap(), Mr::register(&pd1, dst.as_mut_ptr(), LEN).unwrap())
    };
    for i in 0..4 {
        qp1.post_recv(i).unwrap();
    }
    let chunk = LEN / 4;
    for i in 0..4u32 {
        let off = i as usize * chunk;
        // SAFETY: the remote range is inside `dst`'s region; `src` is unchanged until done.
        unsafe { qp0.write_imm(&m0, off, chunk, (m1.addr() + off as u64, m1.rkey()), 0xab00 + i, i as u64).unwrap() };
    }
    let sent = wait(&cq0, 4, Duration::from_secs(60));
    assert!(sent.iter().all(|c| c.status == 0), "send completions: {sent:?}");
    let mut recvd = wait(&cq1, 4, Duration::from_secs(60));
    assert!(recvd.iter().all(|c| c.status == 0), "receive completions: {recvd:?}");
    recvd.sort_by_key(|c| c.imm);
    let imms: Vec<Option<u32>> = recvd.iter().map(|c| c.imm).collect();
    assert_eq!(imms, (0..4).map(|i| Some(0xab00 + i)).collect::<Vec<_>>());
    assert!(dst == src, "the written bytes differ");
    println!("1 MiB in 4 RDMA WRITE WITH IMMEDIATE chunks rxe0 -> rxe1: bytes and immediates correct");

    // A write the peer must refuse (a key it never handed out) ends in an error
    // completion, not a hang.
    qp1.post_recv(9).unwrap();
    let t0 = Instant::now();
    // SAFETY: the key is wrong on purpose: the peer refuses the write, nothing is written.
    unsafe { qp0.write_imm(&m0, 0, 4096, (m1.addr(), m1.rkey() ^ 0x5a5a_0000), 1, 99).unwrap() };
    let c = wait(&cq0, 1, Duration::from_secs(60));
    assert_ne!(c[0].status, 0, "a write with a bad remote key succeeded");
    println!("write with a bad remote key: '{}' after {:?}", c[0].status_text(), t0.elapsed());
    drop((m1, qp1, dst));
}
