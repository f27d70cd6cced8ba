//! One checkpoint of a process at a time.
//!
//! A dump holds a lock named after its root process (pid and start time)
//! for its whole run — the pre-copy, when the tree runs untraced between
//! two freezes, included — so a second `crest dump` of the same tree
//! refuses at once, naming the first, instead of racing it for the
//! tasks.  The lock is an abstract UNIX socket (`crest_sys::namelock`):
//! the kernel drops it when crest exits, however it dies.

use crate::error::{Error, Result};
use crest_sys::proc;
use std::os::fd::OwnedFd;

/// Held while a dump of one tree runs.
pub struct DumpLock(#[allow(dead_code)] OwnedFd);

/// Takes the dump lock of the tree rooted at `pid`.
pub fn take(pid: i32) -> Result<DumpLock> {
    let start = proc::read_stat(pid)
        .map_err(|_| Error::msg(format!("no process with pid {pid}")))?
        .starttime;
    match crest_sys::namelock::take(&format!("crest-dump/{pid}/{start}"))? {
        Ok(fd) => Ok(DumpLock(fd)),
        Err(holder) => Err(Error::msg(format!(
            "pid {pid} is being checkpointed by another crest{}; try again once it is done",
            holder
                .map(|h| format!(" ({})", describe(h)))
                .unwrap_or_default()
        ))),
    }
}

/// "pid N (comm)" for messages about another process.
pub fn describe(pid: i32) -> String {
    match proc::read_stat(pid) {
        Ok(st) => format!("pid {pid}, {}", st.comm),
        Err(_) => format!("pid {pid}"),
    }
}
