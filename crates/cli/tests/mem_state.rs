//! Address-space state (issue 16): madvise advice of ranges (smaps
//! VmFlags), MAP_DROPPABLE mappings, PR_SET_THP_DISABLE, a memfd's mode
//! and owner and that it can be executed after the restore, membarrier
//! registrations.  The workload checks itself after the restore.

mod common;
use common::*;

#[test]
fn advice_droppable_thp_memfd_membarrier() {
    Workload::start("mem-state", &[]).cycle();
}
