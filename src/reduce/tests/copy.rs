//! The bulk copies of the data path (`copy`, temporal and streaming, and each level's
//! streaming copy), byte for byte, touching nothing outside the destination.

use super::*;

/// A copy routine under test.
type CopyFn = unsafe fn(*mut u8, *const u8, usize);

/// `copy` without streaming stores.
///
/// # Safety
/// As [`copy`].
unsafe fn copy_temporal(dst: *mut u8, src: *const u8, bytes: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { copy(dst, src, bytes, false) }
}

/// `copy` asking for streaming stores.
///
/// # Safety
/// As [`copy`].
unsafe fn copy_nt(dst: *mut u8, src: *const u8, bytes: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { copy(dst, src, bytes, true) }
}

/// `copy`, temporal and streaming, at every level: sizes around the block and threshold
/// sizes, misaligned source and destination.
#[test]
fn copy_copies_exactly() {
    let mut r = Rng(77);
    let sizes = [0, 1, 63, 64, 65, 200, 4095, 4096, 4097, 100_003];
    for bytes in sizes {
        for _ in 0..4 {
            let (os, od) = (r.below(64), r.below(64));
            let mut src = Buf::random_bytes(bytes, &mut r);
            let ps = src.ptr(os);
            let want = src.bytes(os, bytes).to_vec();
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut runs: Vec<(&str, CopyFn)> = vec![("copy", copy_temporal), ("copy nt", copy_nt)];
            #[cfg(target_arch = "x86_64")]
            {
                if Level::Avx2.is_available() {
                    runs.push(("avx2", avx2::copy_nt));
                }
                if Level::Avx512.is_available() {
                    runs.push(("avx512", avx512::copy_nt));
                }
            }
            for (name, f) in runs {
                let mut dst = Buf::new(bytes, 0x5a);
                let pd = dst.ptr(od);
                // SAFETY: `bytes` bytes at each pointer; separate buffers; the level was
                // checked available.
                unsafe { f(pd, ps, bytes) };
                store_fence();
                assert!(dst.bytes(od, bytes) == want, "{name} {bytes} bytes +{os} -> +{od}");
                let lo = dst.base + od;
                assert!(dst.mem[..lo].iter().all(|v| *v == 0x5a), "{name}: wrote before");
                assert!(dst.mem[lo + bytes..].iter().all(|v| *v == 0x5a), "{name}: wrote after");
            }
        }
    }
}
