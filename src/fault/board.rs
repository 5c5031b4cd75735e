//! The fault states of the thread ranks of one in-process communicator: a fault one
//! records reaches the others at once, and a stuck member's position is compared with
//! every other member's.

use std::sync::{Arc, Mutex, Weak};

use super::msg::Where;
use super::{Fault, Herald};

/// The fault states of the thread ranks of one in-process communicator.
#[derive(Default)]
pub struct Board {
    members: Mutex<Vec<Weak<Fault>>>,
}

impl Board {
    /// An empty board.
    pub fn new() -> Arc<Board> {
        Arc::new(Board::default())
    }

    /// Adds a rank: faults it records reach the other members, and theirs reach it.
    pub fn join(self: &Arc<Board>, f: &Arc<Fault>) {
        self.members.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(f));
        f.set_herald(Herald::Board(self.clone()));
    }

    /// A stuck member's position, compared with every other member's.
    pub(super) fn compare(&self, from: &Fault, w: Where) {
        let members: Vec<Arc<Fault>> =
            self.members.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(Weak::upgrade).collect();
        for m in members.iter().filter(|m| !std::ptr::eq(&***m, from)) {
            if m.check_where(&w) {
                return;
            }
        }
    }

    pub(super) fn announce(&self, from: &Fault) {
        let Some(notice) = from.to_announce() else { return };
        let members: Vec<Arc<Fault>> =
            self.members.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(Weak::upgrade).collect();
        for m in members.iter().filter(|m| !std::ptr::eq(&***m, from)) {
            m.receive(notice.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::error::ErrorKind;
    use crate::sync::Doorbell;

    #[test]
    fn a_fault_on_one_thread_rank_reaches_the_others_once() {
        let board = Board::new();
        let f: Vec<Arc<Fault>> = (0..3).map(|r| Fault::new(r, Doorbell::new_private())).collect();
        for x in &f {
            board.join(x);
        }
        assert!(f.iter().all(|x| !x.tripped() && x.error().is_none()));
        f[1].fail(&Error::invalid_usage("rank 1 called a; rank 0 called b"));
        // Rank 2's call reports the fault its own way, naming its call; that report is what
        // its later calls return. The fault stays rank 1's.
        f[2].fail(&Error::remote("rank 2: barrier #3: the fault"));
        assert!(
            matches!(f[2].error(), Some(e) if e.kind() == ErrorKind::Remote && { let m = e.message(); m == "rank 2: barrier #3: the fault" })
        );
        for x in &f[..2] {
            assert!(x.tripped());
            assert_eq!(x.origin(), Some(1));
            match x.error() {
                Some(e) if e.kind() == ErrorKind::InvalidUsage => {
                    let m = e.message().to_string();
                    assert!(m.contains("rank 1 called a"), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
        f[0].abort();
        assert!(matches!(f[0].error(), Some(e) if e.kind() == ErrorKind::Aborted));
    }

    #[test]
    fn an_abort_reads_as_a_remote_error_elsewhere() {
        let board = Board::new();
        let f: Vec<Arc<Fault>> = (0..2).map(|r| Fault::new(r, Doorbell::new_private())).collect();
        for x in &f {
            board.join(x);
        }
        f[0].abort();
        match f[1].error() {
            Some(e) if e.kind() == ErrorKind::Remote => {
                let m = e.message().to_string();
                assert!(m.contains("rank 0") && m.contains("aborted"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
