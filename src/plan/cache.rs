//! The plans of recent calls: everything about a call that depends only on its shape
//! (collective and counts, data type, op, whether it runs alone) is worked out once and
//! reused, so a repeated call (the common case in training loops and benchmarks) skips
//! planning, building its reducer and encoding its descriptor.

use super::{Plan, Shape, plan};
use crate::call::{Collective, Desc, desc};
use crate::error::Result;
use crate::reduce::Reducer;
use crate::settings::Settings;
use crate::types::{DataType, ReduceOp};

/// How many distinct calls keep their plan.
pub const CAPACITY: usize = 16;

/// A call's plan and what goes with it.
#[derive(Clone, Copy)]
pub struct Prepared {
    coll: Collective,
    dtype: DataType,
    op: Option<ReduceOp>,
    alone: bool,
    shared: bool,
    /// The plan.
    pub plan: Plan,
    /// The reduction, for reducing calls.
    pub reducer: Option<Reducer>,
    /// The call's descriptor (without its tag).
    pub desc: Desc,
    /// The links this call uses are known to be connected.
    pub connected: bool,
}

impl Prepared {
    fn new(coll: Collective, dtype: DataType, op: Option<ReduceOp>, shape: Shape, s: &Settings) -> Result<Prepared> {
        let plan = plan(&coll, dtype, shape, s)?;
        let reducer = match (&op, coll.reduces()) {
            (Some(op), true) => Some(Reducer::new(dtype, *op, shape.n)?),
            _ => None,
        };
        let desc = desc::encode(&coll, dtype, op.as_ref(), plan.algo);
        Ok(Prepared {
            coll,
            dtype,
            op,
            alone: shape.alone,
            shared: shape.shared,
            plan,
            reducer,
            desc,
            connected: false,
        })
    }

    fn matches(&self, coll: &Collective, dtype: DataType, op: Option<ReduceOp>, shape: &Shape) -> bool {
        self.coll == *coll
            && self.dtype == dtype
            && self.op == op
            && self.alone == shape.alone
            && self.shared == shape.shared
    }
}

/// The plans of the last [`CAPACITY`] distinct calls.
#[derive(Default)]
pub struct Cache {
    entries: Vec<Prepared>,
}

impl Cache {
    /// The plan of a call, planned now if it is not cached (an error if it cannot run).
    pub fn get(
        &mut self,
        coll: Collective,
        dtype: DataType,
        op: Option<ReduceOp>,
        shape: Shape,
        s: &Settings,
    ) -> Result<&mut Prepared> {
        let i = match self.entries.iter().position(|p| p.matches(&coll, dtype, op, &shape)) {
            Some(i) => i,
            None => {
                let p = Prepared::new(coll, dtype, op, shape, s)?;
                if self.entries.len() == CAPACITY {
                    self.entries.remove(0);
                }
                self.entries.push(p);
                self.entries.len() - 1
            }
        };
        Ok(&mut self.entries[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Algo;
    use crate::exec::Path;

    fn shape(alone: bool) -> Shape {
        Shape { n: 2, shared: false, hierarchical: false, network: false, alone, slot_bytes: 1 << 18 }
    }

    #[test]
    fn a_repeated_call_reuses_its_plan_and_keeps_what_it_learned() {
        let s = Settings::default();
        let mut c = Cache::default();
        let ar = Collective::AllReduce { count: 4 };
        let p = c.get(ar, DataType::Float32, Some(ReduceOp::Sum), shape(true), &s).unwrap();
        assert_eq!((p.plan.algo, p.plan.path), (Algo::OneShot, Path::OneSlot));
        assert!(p.reducer.is_some() && !p.connected);
        p.connected = true;
        assert!(c.get(ar, DataType::Float32, Some(ReduceOp::Sum), shape(true), &s).unwrap().connected);
        // In a group the same call is planned apart: it cannot take the one-slot path.
        let g = c.get(ar, DataType::Float32, Some(ReduceOp::Sum), shape(false), &s).unwrap();
        assert_eq!((g.connected, g.plan.path), (false, Path::Streams));
        // The oldest entries make room for new ones.
        for count in 0..CAPACITY {
            c.get(Collective::AllGather { count }, DataType::Int8, None, shape(true), &s).unwrap();
        }
        assert!(!c.get(ar, DataType::Float32, Some(ReduceOp::Sum), shape(true), &s).unwrap().connected);
    }

    #[test]
    fn a_call_that_cannot_run_is_an_error_and_is_not_cached() {
        let s = crate::settings::Config::new().algo(Algo::Doubling).resolve_with(|_| None).unwrap();
        let mut c = Cache::default();
        let b = Collective::Broadcast { count: 4, root: 0 };
        assert!(c.get(b, DataType::Float32, None, shape(true), &s).is_err());
        assert!(c.entries.is_empty());
    }
}
