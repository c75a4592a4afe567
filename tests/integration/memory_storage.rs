//! MemoryStorage against etcd's table cases and against the naive model.

use bytes::Bytes;
use proptest::prelude::*;
use raftwal::{ConfState, Entry, HardState, MemoryStorage, Result, Snapshot, Storage};

use crate::etcd_cases::Subject;
use crate::model::{arb_op, run_against_model};

impl Subject for MemoryStorage {
    fn storage(&self) -> &dyn Storage {
        self
    }
    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        MemoryStorage::append(self, entries)
    }
    fn set_hard_state(&mut self, hs: HardState) -> Result<()> {
        MemoryStorage::set_hard_state(self, hs)
    }
    fn compact(&mut self, index: u64) -> Result<()> {
        MemoryStorage::compact(self, index)
    }
    fn create_snapshot(
        &mut self,
        index: u64,
        cs: Option<ConfState>,
        data: Bytes,
    ) -> Result<Snapshot> {
        MemoryStorage::create_snapshot(self, index, cs, data)
    }
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        MemoryStorage::apply_snapshot(self, snapshot)
    }
}

fn fresh_memory() -> Box<dyn Subject> {
    Box::new(MemoryStorage::new())
}

mod etcd {
    use super::fresh_memory;
    crate::etcd_case_tests!(fresh_memory);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn memory_storage_answers_like_the_model(ops in proptest::collection::vec(arb_op(), 1..40)) {
        run_against_model(&mut MemoryStorage::new(), &ops);
    }
}
