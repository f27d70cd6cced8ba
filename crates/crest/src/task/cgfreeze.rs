//! The cgroup freezer before seizing a tree that has a cgroup of its own.
//!
//! Seizing a tree task by task lets the tasks not yet seized run on:
//! a big tree keeps forking while it is scanned, and processes whose
//! parent exits leave for their reaper.  When the tree's root is in a
//! cgroup that holds only processes of the tree (and so does every
//! cgroup below it), dump freezes that cgroup first (v2
//! `cgroup.freeze`, else the v1 freezer's `freezer.state`): the whole
//! tree stops at once.  Frozen tasks can be seized and interrupted
//! (PTRACE_SEIZE and PTRACE_INTERRUPT need no cooperation of the task)
//! but reach their ptrace stop only when they run again: crest seizes
//! and interrupts every task of the frozen tree, thaws the cgroup, then
//! waits for each stop.
//!
//! A process waiting for a vfork child (in `wait_for_vfork_done`) would
//! reach its stop only once that child has exec'd or exited, which never
//! happens if crest has stopped the child: such a process and its
//! subtree are left alone while frozen and seized one by one after the
//! thaw, parents first, as without the freezer.
//!
//! A cgroup that is frozen already (by its owner) is not used: crest
//! never thaws what it did not freeze.  `CREST_CGROUP_FREEZE=0` turns
//! the freezer off (to compare), `=1` requires it: the dump fails,
//! leaving the tree running, when the tree has no cgroup of its own it
//! could freeze.

use crate::error::{Error, Result};
use crest_sys::proc;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a cgroup may take to report frozen.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// A cgroup crest froze; thawed when dropped.
pub struct CgroupFreeze {
    dir: PathBuf,
    v2: bool,
    thawed: bool,
}

impl CgroupFreeze {
    /// The frozen cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lets the cgroup run again.
    pub fn thaw(&mut self) {
        if !self.thawed {
            self.thawed = true;
            let (file, v) = if self.v2 {
                ("cgroup.freeze", "0")
            } else {
                ("freezer.state", "THAWED")
            };
            let _ = std::fs::write(self.dir.join(file), v);
        }
    }
}

impl Drop for CgroupFreeze {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// The processes of the tree of `root` (host pids), read from /proc.
fn tree_pids(root: i32) -> HashSet<i32> {
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if seen.insert(p) {
            todo.extend(proc::process_children(p).unwrap_or_default());
        }
    }
    seen
}

/// The processes in cgroup `dir` and every cgroup below it.
fn cgroup_pids(dir: &Path, out: &mut Vec<i32>) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return false;
    };
    out.extend(
        text.split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok()),
    );
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) && !cgroup_pids(&e.path(), out) {
            return false;
        }
    }
    true
}

/// Whether every process in `dir` (and below) is one of the tree of
/// `root`.  The tree is listed after the cgroup, so a process forked
/// meanwhile is in it; one that exited meanwhile does not count.
fn only(dir: &Path, root: i32) -> bool {
    let mut pids = Vec::new();
    if !cgroup_pids(dir, &mut pids) || pids.is_empty() {
        return false;
    }
    let tree = tree_pids(root);
    pids.iter()
        .all(|&p| tree.contains(&p) || !crest_sys::process::exists(p))
}

/// The freezable cgroup of `root`'s: (directory, v2).  The v2 one when
/// the unified hierarchy is mounted, else the v1 freezer's.
fn candidates(root: i32) -> Vec<(PathBuf, bool)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{root}/cgroup")) else {
        return Vec::new();
    };
    let Ok(mounts) = proc::read_mountinfo(std::process::id() as i32) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let v2 = ctl.is_empty();
        if path == "/" || path.ends_with(" (deleted)") {
            continue;
        }
        if !v2 && !ctl.split(',').any(|c| c == "freezer") {
            continue;
        }
        let m = mounts.iter().find(|m| {
            if v2 {
                m.fs_type == "cgroup2"
            } else {
                m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == "freezer")
            }
        });
        let Some(m) = m else { continue };
        // The cgroup's path below the mount's root.
        let rel = if m.root == "/" {
            path.trim_start_matches('/')
        } else {
            match path.strip_prefix(m.root.as_str()) {
                Some(r) => r.trim_start_matches('/'),
                None => continue,
            }
        };
        if rel.is_empty() {
            continue;
        }
        out.push((Path::new(&m.mount_point).join(rel), v2));
    }
    // v2 first.
    out.sort_by_key(|(_, v2)| !v2);
    out
}

fn is_frozen(dir: &Path, v2: bool) -> bool {
    if v2 {
        std::fs::read_to_string(dir.join("cgroup.events"))
            .is_ok_and(|t| t.lines().any(|l| l == "frozen 1"))
    } else {
        std::fs::read_to_string(dir.join("freezer.state")).is_ok_and(|t| t.trim() == "FROZEN")
    }
}

/// Freezes the cgroup of the tree of `root` when it has one of its own
/// (None: it has none, or the freezer is off or failed, and the tree is
/// seized as it runs; an error when `CREST_CGROUP_FREEZE=1` requires it).
pub fn freeze_own(root: i32) -> Result<Option<CgroupFreeze>> {
    match std::env::var("CREST_CGROUP_FREEZE").as_deref() {
        Ok("0") => Ok(None),
        Ok("1") => try_freeze(root).map(Some).ok_or_else(|| {
            Error::msg(format!(
                "pid {root}: CREST_CGROUP_FREEZE=1 but the tree has no cgroup of its own to \
                 freeze (its v2 cgroup or v1 freezer cgroup must hold only the tree's \
                 processes, and not be frozen already)"
            ))
        }),
        _ => Ok(try_freeze(root)),
    }
}

fn try_freeze(root: i32) -> Option<CgroupFreeze> {
    for (dir, v2) in candidates(root) {
        let file = if v2 { "cgroup.freeze" } else { "freezer.state" };
        if !dir.join(file).exists() || is_frozen(&dir, v2) {
            continue;
        }
        if v2 && std::fs::read_to_string(dir.join(file)).is_ok_and(|t| t.trim() == "1") {
            // Freezing or frozen by its owner.
            continue;
        }
        if !only(&dir, root) {
            continue;
        }
        let value = if v2 { "1" } else { "FROZEN" };
        if std::fs::write(dir.join(file), value).is_err() {
            continue;
        }
        let mut f = CgroupFreeze {
            dir: dir.clone(),
            v2,
            thawed: false,
        };
        let start = Instant::now();
        while !is_frozen(&dir, v2) {
            if start.elapsed() > FREEZE_TIMEOUT {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // Frozen, and still only the tree's (a process that joined
        // between the check and the freeze is not the tree's).
        if is_frozen(&dir, v2) && only(&dir, root) {
            return Some(f);
        }
        f.thaw();
    }
    None
}

/// Whether task `tid` waits for a vfork child to exec or exit: asleep
/// in the clone that made it (wait_for_vfork_done is inlined into
/// kernel_clone, where nothing else sleeps).
pub fn in_vfork_wait(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{tid}/wchan"))
        .is_ok_and(|w| w.contains("vfork") || w.trim() == "kernel_clone")
}
