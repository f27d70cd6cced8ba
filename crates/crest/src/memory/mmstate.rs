//! Address-space state that is not a mapping: PR_SET_THP_DISABLE and the
//! private expedited membarrier registrations.
//!
//! Neither has a /proc interface that says it all.  PR_GET_THP_DISABLE is
//! asked in the task.  A registration for a private expedited membarrier
//! command is found by issuing that command in the task: the kernel
//! answers EPERM unless the process registered for it (the barrier itself
//! has no lasting effect).  Restore registers again.  The global
//! expedited registration (MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) has
//! no such test, since anyone may issue the global command: it is not
//! restored.

use crate::error::Result;
use crate::model::MmState;
use crate::task::freeze::{Call, Inject};

const PR_GET_THP_DISABLE: i32 = 42;
const PR_SET_THP_DISABLE: u64 = 41;
/// (command, its registration command), for the private expedited kinds.
const MEMBARRIER: [(u64, u64, &str); 3] = [
    (1 << 3, 1 << 4, "private expedited"),
    (1 << 5, 1 << 6, "private expedited sync-core"),
    (1 << 7, 1 << 8, "private expedited rseq"),
];

/// Reads the state from the frozen task `t`.
pub fn collect(t: &impl Inject) -> Result<MmState> {
    let thp = t.prctl(PR_GET_THP_DISABLE, &[], "reading PR_GET_THP_DISABLE")? as u32;
    let mut membarrier = 0;
    for (cmd, _, what) in MEMBARRIER {
        match t.call(
            libc::SYS_membarrier,
            &[cmd, 0, 0],
            &format!("testing the {what} membarrier registration"),
        ) {
            Ok(_) => membarrier |= cmd as u32,
            // Not registered (EPERM), or not supported here (EINVAL).
            Err(e) if matches!(e.errno(), Some(libc::EPERM) | Some(libc::EINVAL)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(MmState {
        thp_disable: thp,
        membarrier,
    })
}

/// Sets the state in the restored task (queued).
pub fn restore(t: &impl Inject, st: &MmState) -> Result<()> {
    if st.thp_disable & 1 != 0 {
        t.queue(Call::new(
            libc::SYS_prctl,
            &[PR_SET_THP_DISABLE, 1, (st.thp_disable & !1) as u64, 0, 0],
            "setting PR_SET_THP_DISABLE".into(),
        ))?;
    }
    for (cmd, register, what) in MEMBARRIER {
        if st.membarrier & cmd as u32 != 0 {
            t.queue(Call::new(
                libc::SYS_membarrier,
                &[register, 0, 0],
                format!("registering for {what} membarriers"),
            ))?;
        }
    }
    Ok(())
}
