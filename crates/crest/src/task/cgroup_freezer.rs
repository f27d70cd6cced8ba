//! The cgroup freezer as the first step of seizing a tree: a tree that
//! keeps forking could otherwise make new processes as fast as crest
//! seizes them.
//!
//! The rule: the cgroup the tree's root is in, in the unified (v2)
//! hierarchy (`cgroup.freeze`) or else in the v1 `freezer` hierarchy
//! (`freezer.state`), is the tree's own when it is not a hierarchy's root
//! and every process in it and in the cgroups below it is the root or one
//! of its descendants.  Then crest freezes that cgroup, waits until the
//! kernel says it is frozen (no task of it runs, none can fork), seizes
//! and interrupts every thread in it (the interrupt stays pending while
//! frozen), and thaws the cgroup at once: each thread then stops in
//! ptrace before it runs one more instruction of its own, and the usual
//! scan ([`crate::task::freeze::FrozenTree::freeze`]) waits for those
//! stops instead of seizing again.  A cgroup shared with any other process
//! is never frozen (the tree is then seized task by task, as without a
//! cgroup), and crest changes nothing else in any cgroup.
//!
//! The cgroup is frozen only between those steps: it is thawed before
//! anything else of the dump runs, on success and on every failure (a
//! [`Thaw`] guard), so a dump that fails later, or `--leave-running`,
//! never leaves it frozen.  A SIGINT or SIGTERM in that window fails the
//! fault point there (crest's handler asks for a stop) and thaws it too;
//! only a SIGKILL of crest in those few milliseconds would leave the
//! cgroup frozen (then `echo 0 > cgroup.freeze`, or THAWED to
//! `freezer.state`, lets it go).

use crate::error::{Error, Result};
use crate::model::CgroupMember;
use crest_sys::ptrace;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A cgroup crest froze: thawed when dropped.
struct Thaw {
    dir: String,
    v2: bool,
}

impl Thaw {
    fn write(&self, frozen: bool) -> Result<()> {
        let (file, val) = match (self.v2, frozen) {
            (true, f) => ("cgroup.freeze", if f { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        let p = format!("{}/{file}", self.dir);
        std::fs::write(&p, val).map_err(|e| Error::msg(format!("writing {val} to {p}: {e}")))
    }

    fn frozen(&self) -> bool {
        if self.v2 {
            std::fs::read_to_string(format!("{}/cgroup.events", self.dir))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "frozen 1"))
        } else {
            std::fs::read_to_string(format!("{}/freezer.state", self.dir))
                .is_ok_and(|t| t.trim() == "FROZEN")
        }
    }
}

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = self.write(false);
    }
}

/// Every cgroup directory at and below `dir`.
fn subtree(dir: &str) -> Vec<String> {
    let mut out = vec![dir.to_string()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path().to_string_lossy().into_owned());
                }
            }
        }
        i += 1;
    }
    out
}

fn ids_in(dir: &str, file: &str) -> Vec<i32> {
    std::fs::read_to_string(format!("{dir}/{file}"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// Whether `pid` is `root` or one of its descendants.
fn in_tree(root: i32, mut pid: i32) -> bool {
    for _ in 0..4096 {
        if pid == root {
            return true;
        }
        match crest_sys::proc::read_stat(pid) {
            Ok(st) if st.ppid > 0 => pid = st.ppid,
            _ => return false,
        }
    }
    false
}

/// The cgroup of `root`'s tree to freeze, if it has one of its own:
/// (directory, v2).
pub fn own_cgroup(root: i32) -> Result<Option<(String, bool)>> {
    let text = match std::fs::read_to_string(format!("/proc/{root}/cgroup")) {
        Ok(t) => t,
        Err(_) => return Ok(None),
    };
    let members = crate::task::cgroups::parse(&text)?;
    let v2 = members.iter().find(|m| m.hierarchy == 0);
    let v1 = members
        .iter()
        .find(|m| m.controllers.split(',').any(|c| c == "freezer"));
    for (m, is_v2) in [(v2, true), (v1, false)] {
        let Some(m) = m else { continue };
        if m.path == "/" {
            continue;
        }
        let Some(dir) = dir_of(m) else { continue };
        let file = if is_v2 { "cgroup.freeze" } else { "freezer.state" };
        if !std::path::Path::new(&format!("{dir}/{file}")).exists() {
            continue;
        }
        let all_ours = subtree(&dir)
            .iter()
            .flat_map(|d| ids_in(d, "cgroup.procs"))
            .all(|p| in_tree(root, p));
        if all_ours {
            return Ok(Some((dir, is_v2)));
        }
    }
    Ok(None)
}

fn dir_of(m: &CgroupMember) -> Option<String> {
    let f = crate::task::cgroups::procs_file(m).ok()?;
    f.strip_suffix("/cgroup.procs").map(str::to_string)
}

/// Freezes the tree's own cgroup (if it has one), seizes and interrupts
/// every thread in it, and thaws it.  Returns the threads seized (their
/// stops are still to be waited for); empty when there is no cgroup of
/// the tree's own or the freezer could not be used.
pub fn preseize(root: i32) -> Result<HashSet<i32>> {
    let Some((dir, v2)) = own_cgroup(root)? else {
        return Ok(HashSet::new());
    };
    let thaw = Thaw { dir, v2 };
    if thaw.write(true).is_err() {
        // Not ours to freeze after all (permissions): seize one by one.
        return Ok(HashSet::new());
    }
    let start = Instant::now();
    while !thaw.frozen() {
        if start.elapsed() > Duration::from_secs(5) {
            return Err(Error::msg(format!(
                "the tree's cgroup {} did not freeze within 5 s (thawed again)",
                thaw.dir
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // A failure here (or a SIGINT/SIGTERM, which crest's handler turns
    // into one at this point) thaws the cgroup as `thaw` drops; nothing
    // is seized yet.
    crate::fault::point("dump: the tree's cgroup frozen")?;
    let file = if v2 { "cgroup.threads" } else { "tasks" };
    let mut seized = HashSet::new();
    for d in subtree(&thaw.dir) {
        for tid in ids_in(&d, file) {
            if ptrace::seize(tid, ptrace::SEIZE_OPTIONS).is_err() {
                continue; // the usual path seizes it, or says why not
            }
            if ptrace::interrupt(tid).is_ok() {
                seized.insert(tid);
            } else {
                let _ = ptrace::detach(tid, 0);
            }
        }
    }
    drop(thaw);
    Ok(seized)
}
