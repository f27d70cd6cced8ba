//! Descriptors on /proc files of the tree's own processes
//! (`/proc/PID/status`, `/proc/PID/task/TID/…`, `/proc/PID` itself …).
//!
//! Such a file can only be opened once its process exists again, long
//! after restore opens the other descriptors in crest.  So these are left
//! out of the descriptor placement and opened later by the restored
//! process itself, by injected calls, once every process and thread of
//! the tree exists and its credentials are back (the kernel checks
//! access to some /proc files against the opener): openat, moved to the
//! descriptor number, seeked.  Other descriptors of the same process on
//! the same description are dups of it; a description shared with
//! another process cannot be recreated this way and is refused.

use crate::error::Result;
use crate::model::{Checkpoint, ObjectKind, OpenFile, OpenTarget, Process};
use crate::task::freeze::{Call, Inject};
use std::collections::HashMap;

/// The path of `o` when it is a /proc file of a task in `tree`.
pub fn deferred_path<'a>(o: &'a OpenFile, tree: &[i32]) -> Option<&'a str> {
    let path = match &o.target {
        OpenTarget::Regular(f) => &f.path,
        OpenTarget::Directory { path } | OpenTarget::Path { path, .. } => path,
        _ => return None,
    };
    let pid: i32 = path
        .strip_prefix("/proc/")?
        .split('/')
        .next()?
        .parse()
        .ok()?;
    tree.contains(&pid).then_some(path.as_str())
}

/// Every task id of the image.
pub fn tree_ids(ckpt: &Checkpoint) -> Vec<i32> {
    ckpt.processes
        .iter()
        .flat_map(|p| p.threads.iter().map(|t| t.tid))
        .collect()
}

/// Why a deferred description cannot be restored: it is held by several
/// processes (checked by the restore plan).
pub fn problem(ckpt: &Checkpoint, id: u32, path: &str) -> Option<String> {
    let holders: Vec<i32> = ckpt
        .processes
        .iter()
        .filter(|p| p.shares_files_with.is_none() && p.fds.iter().any(|f| f.file == id))
        .map(|p| p.pid)
        .collect();
    (holders.len() > 1).then(|| {
        format!(
            "{path}: a /proc file of the tree whose open file description is shared by pids \
             {holders:?} (not supported: each would reopen it on its own)"
        )
    })
}

/// Opens the deferred descriptors of `p` in the restored process `t`.
pub fn reopen(t: &impl Inject, ckpt: &Checkpoint, p: &Process, tree: &[i32]) -> Result<()> {
    if p.shares_files_with.is_some() {
        return Ok(()); // the table's owner opens them
    }
    let mut first: HashMap<u32, i32> = HashMap::new();
    for fd in &p.fds {
        let Some(ObjectKind::Open(o)) = ckpt.object(fd.file) else {
            continue;
        };
        let Some(path) = deferred_path(o, tree) else {
            continue;
        };
        let what = |s: &str| format!("fd {}: {s} {path}", fd.fd);
        let cloexec = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
        if let Some(&src) = first.get(&fd.file) {
            t.call(
                libc::SYS_dup3,
                &[src as u64, fd.fd as u64, cloexec as u64],
                &what("sharing the reopened"),
            )?;
            continue;
        }
        let mut c = path.as_bytes().to_vec();
        c.push(0);
        // For a call run at once (not queued): straight into the scratch
        // area (this flushes what is queued first).
        t.write_scratch(0, &c)?;
        let a = t.scratch();
        let flags = (o.flags as i32)
            & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_CLOEXEC)
            | cloexec;
        let r = t.call(
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, a, flags as u64, 0],
            &what("reopening"),
        )? as i32;
        if r != fd.fd {
            t.call(
                libc::SYS_dup3,
                &[r as u64, fd.fd as u64, cloexec as u64],
                &what("placing"),
            )?;
            t.call(libc::SYS_close, &[r as u64], &what("closing a copy of"))?;
        }
        if o.pos != 0 && o.flags & libc::O_PATH as u32 == 0 {
            t.queue(Call::new(
                libc::SYS_lseek,
                &[fd.fd as u64, o.pos, libc::SEEK_SET as u64],
                what("seeking"),
            ))?;
        }
        first.insert(fd.file, fd.fd);
    }
    t.flush()
}
