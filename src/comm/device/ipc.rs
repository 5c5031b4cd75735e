//! The communicator's side of CUDA IPC (`OXCCL_CUDA_IPC=1`): when a device all-reduce
//! takes the IPC path, and setting the path up with the other ranks (exchanging buffer
//! handles and the counters' segment through the communicator's own collectives). The
//! buffers, counters and stream work are `transport::cuda_ipc`'s.

use cudarc::driver::sys::CUstream;

use super::super::{CallSpec, Comm};
use crate::call::Collective;
use crate::cuda::driver;
use crate::error::Result;
use crate::sys::shmem::{self, Segment};
use crate::transport::cuda_ipc::{Ipc, flags_len, kernel_op};

/// A communicator's IPC path, once set up.
pub(crate) type IpcState = Ipc;

impl Comm {
    /// Runs `specs` through CUDA IPC if this is an all-reduce the IPC path takes and it
    /// is enabled; returns whether it did.
    ///
    /// # Safety
    /// As [`Comm::run_raw_on`]: `specs` name device memory of `stream`'s context (the
    /// current one).
    pub(super) unsafe fn try_ipc(&mut self, specs: &[CallSpec], stream: CUstream) -> Result<bool> {
        let [s] = specs else { return Ok(false) };
        let Collective::AllReduce { count } = s.coll else { return Ok(false) };
        let Some(op) = s.op.and_then(kernel_op) else { return Ok(false) };
        let one_host = self.topology.as_ref().is_some_and(|t| t.hosts.len() == 1);
        if !self.settings.cuda_ipc || !one_host || count == 0 {
            return Ok(false);
        }
        let bytes = count * s.dtype.size();
        if self.ipc.as_ref().is_none_or(|i| i.cap() < bytes) {
            self.setup_ipc(bytes)?;
        }
        let ipc = self.ipc.as_mut().expect("set up above");
        // SAFETY: the caller's contract; `bytes` fits the buffers.
        unsafe { ipc.all_reduce(s.send as u64, s.recv as u64, count, s.dtype, op, stream)? };
        Ok(true)
    }

    /// (Re)creates the IPC buffers with room for `bytes` (every rank does this at the
    /// same operation: they make the same calls).
    fn setup_ipc(&mut self, bytes: usize) -> Result<()> {
        if self.ipc.is_some() {
            // Nobody may still read the buffers about to be freed.
            driver::synchronize()?;
            self.barrier()?;
            self.ipc = None;
        }
        let cap = bytes.next_power_of_two().max(1 << 20);
        let (mine, handle) = Ipc::export(cap)?;
        let mut all = vec![0u8; 64 * self.nranks];
        self.all_gather(&handle, &mut all)?;
        let handles: Vec<[u8; 64]> = all.chunks(64).map(|c| c.try_into().expect("64 bytes")).collect();
        // Rank 0 creates the counters' segment under a random name; the others map it.
        let len = flags_len(self.nranks);
        let mut name = [0u8; 64];
        let created = (self.rank == 0).then(|| {
            let n = shmem::random_name()?;
            let s = Segment::create(&n, len)?;
            name[..n.len()].copy_from_slice(n.as_bytes());
            Ok(s)
        });
        // An empty name tells the others that rank 0 could not create it.
        self.broadcast_in_place(&mut name, 0)?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(64);
        let seg = match created {
            Some(s) => s,
            None if end == 0 => Err(crate::error::Error::remote(
                "rank 0 could not create the CUDA IPC counters' shared memory (see its error)",
            )),
            None => Segment::open(&String::from_utf8_lossy(&name[..end]), len),
        };
        // Every rank has mapped it (or failed) before rank 0 removes its name.
        self.barrier()?;
        let mut seg = seg?;
        seg.unlink();
        self.ipc = Some(Ipc::open(self.rank, mine, &handles, seg, self.fault.clone())?);
        Ok(())
    }
}
