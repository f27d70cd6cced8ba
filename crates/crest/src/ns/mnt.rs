//! Mount namespaces, in the shape `unshare --mount --mount-proc` and
//! similar tools make: a copy of crest's mount tree in which proc is
//! mounted again (for the tree's PID namespace).
//!
//! Dump compares the tree's /proc/PID/mountinfo with crest's: every
//! mount of the tree's namespace must be one crest also has (same mount
//! point, filesystem type, source, root and device), except proc mounts,
//! which are recorded with their flags; a mount only the tree has, or one
//! of crest's the tree unmounted, is refused with its mount point and
//! type (mounts crest has that the tree does not, such as those made
//! after a private copy was taken, are there after restore).  The propagation of the tree's root mount (private, slave or
//! shared) is recorded too.  Restore creates the namespace with the
//! process that first entered it (CLONE_NEWNS: a copy of crest's tree at
//! restore), which sets the propagation on every mount and mounts each
//! proc again before anything else: that proc shows the PID namespace of
//! that process.  Paths the restore opens (files, cwd, root) are looked
//! up in crest's namespace, the same tree.

use crate::error::Result;
use crate::model::{MntState, NsState};
use crate::Obstacle;
use crest_sys::proc::{self, MountInfo};

/// The MS_* flags of a mount's per-mount options.
fn flags(options: &str) -> u64 {
    let mut f = 0;
    for o in options.split(',') {
        f |= match o {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            _ => 0,
        };
    }
    f
}

fn same(a: &MountInfo, b: &MountInfo) -> bool {
    (
        &a.mount_point,
        &a.fs_type,
        &a.source,
        &a.root,
        a.major,
        a.minor,
    ) == (
        &b.mount_point,
        &b.fs_type,
        &b.source,
        &b.root,
        b.major,
        b.minor,
    )
}

/// The mount namespace of `pid`, checked against crest's.
pub fn collect(pid: i32, obstacles: &mut Vec<Obstacle>) -> Result<NsState> {
    let mine = proc::read_mountinfo(std::process::id() as i32)?;
    let theirs = proc::read_mountinfo(pid)?;
    let mut st = MntState::default();
    let mut refuse = |m: &MountInfo, why: &str| {
        obstacles.push(Obstacle {
            pid,
            object: format!("mount {}", m.mount_point),
            reason: format!(
                "{} ({} from {}) {why}; only a copy of crest's mounts with proc mounted \
                 again is supported yet",
                m.mount_point, m.fs_type, m.source
            ),
        })
    };
    for m in &theirs {
        if m.fs_type == "proc" && !mine.iter().any(|c| same(c, m)) {
            st.procs.push((m.mount_point.clone(), flags(&m.options)));
        } else if !mine.iter().any(|c| same(c, m)) {
            refuse(m, "is mounted only in the process's mount namespace");
        }
    }
    let root = theirs.iter().find(|m| m.mount_point == "/");
    st.propagation = match root {
        Some(r) if r.shared().is_some() => "shared",
        Some(r) if r.master().is_some() => "slave",
        _ => "private",
    }
    .into();
    Ok(NsState::Mnt(st))
}

/// What the stub creating the namespace does first: the propagation to
/// set on "/" recursively (0: leave it) and the proc mounts (mount
/// point as a C string, flags).
pub fn plan(st: &NsState) -> Option<(u64, Vec<(std::ffi::CString, u64)>)> {
    let NsState::Mnt(m) = st else { return None };
    let prop = match m.propagation.as_str() {
        "private" => libc::MS_PRIVATE,
        "slave" => libc::MS_SLAVE,
        _ => 0,
    };
    let procs = m
        .procs
        .iter()
        .filter_map(|(p, f)| Some((std::ffi::CString::new(p.as_str()).ok()?, *f)))
        .collect();
    Some((prop, procs))
}
