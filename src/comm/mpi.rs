//! Creating a communicator over the ranks of an MPI communicator (feature `mpi`).
//!
//! MPI only carries the unique id: rank 0 of the MPI communicator creates it (and starts
//! the bootstrap root), broadcasts its 128 bytes, and every rank joins with
//! [`Comm::init_rank`] at its MPI rank. From then on oxccl moves data over its own links
//! (threads, shared memory, TCP); the MPI communicator is no longer used and may be freed,
//! and MPI may even be finalized.

use ::mpi::traits::{Communicator, Root};

use super::Comm;
use crate::bootstrap::UniqueId;
use crate::bootstrap::id::UNIQUE_ID_BYTES;
use crate::error::{Error, Result};
use crate::settings::Config;

/// First bytes of the broadcast when rank 0 could not create the unique id; the rest is
/// its error message (cut to fit), so every rank fails with the reason instead of waiting.
const FAILED: &[u8; 4] = b"FAIL";

impl Comm {
    /// Creates a communicator whose ranks are the processes of the MPI communicator
    /// `mpi_comm` (`MPI_COMM_WORLD`, or any split or duplicate of it), with the same rank
    /// numbers. Every process of `mpi_comm` must call it, like a collective of that
    /// communicator.
    ///
    /// MPI serves only to broadcast the unique id from its rank 0; the data of the
    /// collectives moves over oxccl's own links. The MPI communicator is not kept: it may
    /// be freed, and MPI finalized, once this returns.
    ///
    /// ```no_run
    /// use mpi::traits::*;
    /// use oxccl::{Comm, ReduceOp};
    ///
    /// let universe = mpi::initialize().expect("MPI was already initialized");
    /// let world = universe.world();
    /// // Two oxccl communicators, of the even and of the odd MPI ranks.
    /// let half = world.split_by_color(mpi::topology::Color::with_value(world.rank() % 2)).unwrap();
    /// let mut comm = Comm::from_mpi(&half)?;
    /// assert_eq!((comm.rank(), comm.size()), (half.rank() as usize, half.size() as usize));
    /// let mut x = vec![1.0f32; 1 << 20];
    /// comm.all_reduce_in_place(&mut x, ReduceOp::Sum)?;
    /// # Ok::<(), oxccl::Error>(())
    /// ```
    ///
    /// Errors: an inter-communicator (`InvalidArgument`); rank 0 unable to start the
    /// bootstrap root (every rank fails, with rank 0's reason); any error of
    /// [`Comm::init_rank`].
    pub fn from_mpi<C: Communicator + ?Sized>(mpi_comm: &C) -> Result<Comm> {
        Self::from_mpi_with(mpi_comm, &Config::new())
    }

    /// Joins the job a launcher started, preferring oxccl's own rendezvous: when the
    /// environment names one (`OXCCL_COMM_ID`, `OXCCL_UNIQUE_ID` or `MASTER_ADDR`), as
    /// [`Comm::from_env_with`]; otherwise it initialises MPI, joins over
    /// `MPI_COMM_WORLD` ([`Comm::from_mpi_with`]) and finalises MPI again. This is how
    /// the `*_perf` examples built with the `mpi` feature start under a bare `mpirun`.
    /// A program that uses MPI itself should call [`Comm::from_mpi`] instead (MPI can
    /// be initialised only once).
    pub fn from_env_or_mpi(config: &Config) -> Result<Comm> {
        let named = super::launch::ADDRESS_VARS.iter().any(|k| crate::settings::env::var(k).is_some());
        if !named && let Some(universe) = ::mpi::initialize() {
            // `universe` is dropped on return: MPI_Finalize, after the id went round.
            return Self::from_mpi_with(&universe.world(), config);
        }
        Self::from_env_with(config)
    }

    /// As [`Comm::from_mpi`], with a configuration (its timeout also bounds how long the
    /// bootstrap root on rank 0 waits for the other ranks).
    pub fn from_mpi_with<C: Communicator + ?Sized>(mpi_comm: &C, config: &Config) -> Result<Comm> {
        if mpi_comm.test_inter() {
            return Err(Error::invalid_argument(
                "Comm::from_mpi needs an intra-communicator (MPI_COMM_WORLD, a split or a duplicate), not an inter-communicator",
            ));
        }
        let (rank, nranks) = (mpi_comm.rank(), mpi_comm.size());
        let (rank, nranks) = match (usize::try_from(rank), usize::try_from(nranks)) {
            (Ok(r), Ok(n)) if r < n => (r, n),
            _ => {
                return Err(Error::invalid_argument(format!(
                    "Comm::from_mpi: the MPI communicator reports rank {rank} of {nranks}"
                )));
            }
        };
        let mut buf = [0u8; UNIQUE_ID_BYTES];
        let made = if rank == 0 {
            let made = new_id(config);
            buf = match &made {
                Ok(id) => id.to_bytes(),
                Err(e) => failure_bytes(&e.to_string()),
            };
            Some(made)
        } else {
            None
        };
        mpi_comm.process_at_rank(0).broadcast_into(&mut buf[..]);
        let id = match made {
            Some(made) => made?,
            None => decode(&buf)?,
        };
        Comm::init_rank(&id, rank, nranks, config)
    }
}

/// A unique id whose bootstrap root runs in this process, as [`UniqueId::new`] makes
/// one, with `config`'s interface and timeout.
fn new_id(config: &Config) -> Result<UniqueId> {
    UniqueId::new_with(&config.resolve()?)
}

/// What rank 0 broadcasts when it failed: [`FAILED`] and its message.
fn failure_bytes(msg: &str) -> [u8; UNIQUE_ID_BYTES] {
    let mut b = [0u8; UNIQUE_ID_BYTES];
    b[..FAILED.len()].copy_from_slice(FAILED);
    let room = UNIQUE_ID_BYTES - FAILED.len();
    let mut end = msg.len().min(room);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    b[FAILED.len()..FAILED.len() + end].copy_from_slice(&msg.as_bytes()[..end]);
    b
}

/// The unique id a non-root rank received, or rank 0's failure.
fn decode(b: &[u8; UNIQUE_ID_BYTES]) -> Result<UniqueId> {
    if b.starts_with(FAILED) {
        let msg = String::from_utf8_lossy(&b[FAILED.len()..]);
        return Err(Error::remote(format!(
            "Comm::from_mpi: rank 0 of the MPI communicator could not create the unique id: {}",
            msg.trim_end_matches('\0')
        )));
    }
    UniqueId::from_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_travels_in_the_id_bytes() {
        let long = "é".repeat(100); // 200 bytes: cut at a character boundary
        let e = decode(&failure_bytes(&long)).unwrap_err().to_string();
        assert!(e.contains("rank 0 of the MPI communicator") && e.contains("éé"), "{e}");
        let e = decode(&failure_bytes("no usable network interface")).unwrap_err().to_string();
        assert!(e.ends_with("no usable network interface"), "{e}");
        let id = UniqueId::for_root("127.0.0.1:9".parse().unwrap()).unwrap();
        assert_eq!(decode(&id.to_bytes()).unwrap(), id);
    }
}
