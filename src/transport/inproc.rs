//! The in-process link: ranks are threads of one process and each FIFO is heap memory
//! both ends point to. Connecting needs no handshake: the first of the two ends to ask
//! creates the FIFO in a table shared by the whole "world" of ranks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::fifo::{Fifo, FifoShape, Region};
use super::{Dir, Endpoint, LinkKey, Transport};
use crate::error::{Error, Result};
use crate::sync::Doorbell;

/// State shared by the ranks (threads) of one in-process world.
pub struct World {
    shape: FifoShape,
    bells: Vec<Doorbell>,
    board: Arc<crate::fault::Board>,
    fifos: Mutex<HashMap<(usize, usize, u8), Fifo>>,
}

impl World {
    /// A world of `nranks` ranks whose FIFOs have `shape`.
    pub fn new(nranks: usize, shape: FifoShape) -> Result<Arc<World>> {
        shape.validate()?;
        Ok(Arc::new(World {
            shape,
            bells: (0..nranks).map(|_| Doorbell::new_private()).collect(),
            board: crate::fault::Board::new(),
            fifos: Mutex::new(HashMap::new()),
        }))
    }

    /// The doorbell of `rank`.
    pub fn bell(&self, rank: usize) -> &Doorbell {
        &self.bells[rank]
    }

    /// The fault board of the world's ranks: a failure on one reaches the others.
    pub fn board(&self) -> &Arc<crate::fault::Board> {
        &self.board
    }

    fn fifo(&self, src: usize, dst: usize, ch: u8) -> Result<Fifo> {
        let mut t = self.fifos.lock().map_err(|_| Error::internal("in-process link table poisoned"))?;
        if let Some(f) = t.get(&(src, dst, ch)) {
            return Ok(f.clone());
        }
        let region = Arc::new(Region::heap(self.shape.region_bytes())?);
        let f = Fifo::init(region, 0, self.shape)?;
        t.insert((src, dst, ch), f.clone());
        Ok(f)
    }
}

/// The in-process transport of one rank.
pub struct InProc {
    world: Arc<World>,
    me: usize,
}

impl InProc {
    /// The transport of rank `me` of `world`.
    pub fn new(world: Arc<World>, me: usize) -> InProc {
        InProc { world, me }
    }
}

impl Transport for InProc {
    fn mem(&self) -> super::MemStats {
        // The FIFOs this rank's links use: its share (each FIFO has two ends).
        let Ok(t) = self.world.fifos.lock() else { return Default::default() };
        let mine = t.keys().filter(|(src, dst, _)| *src == self.me || *dst == self.me).count();
        super::MemStats { heap_bytes: (mine * self.world.shape.region_bytes() / 2) as u64, ..Default::default() }
    }

    fn name(&self) -> &'static str {
        "inproc"
    }

    fn shares_address_space(&self) -> bool {
        true
    }

    fn connect(&self, me: usize, keys: &[LinkKey], _opener: crate::call::Desc) -> Result<Vec<Endpoint>> {
        keys.iter()
            .map(|k| {
                Ok(match k.dir {
                    Dir::Send => {
                        let f = self.world.fifo(me, k.peer, k.channel)?;
                        Endpoint::Tx(f.sender(self.world.bells[k.peer].clone()))
                    }
                    Dir::Recv => {
                        let f = self.world.fifo(k.peer, me, k.channel)?;
                        Endpoint::Rx(f.receiver(self.world.bells[k.peer].clone()))
                    }
                })
            })
            .collect()
    }
}
