//! The cgroups that belong to the tree, and their settings (limits).
//!
//! A cgroup belongs to the tree when it, and every cgroup below it, holds
//! only processes of the tree: a container's own cgroup, or one a user
//! made for the program.  Starting from each cgroup a process or thread of
//! the tree is in, dump climbs while the parent still belongs to the tree
//! (never to a hierarchy's root), and records that cgroup and everything
//! below it, parents first, with the values of the interface files that
//! configure it (`settings_of`: limits, weights and CPU/memory sets of the
//! memory, pids, cpu, cpuset, blkio/io, hugetlb and devices controllers,
//! and v2's `cgroup.type`, `cgroup.subtree_control` and descendant
//! limits).  Counters, statistics, events and one-shot actions are not
//! settings and are not recorded.
//!
//! Restore creates each recorded cgroup that does not exist here and
//! writes its settings, in order, before any process joins it (a cpuset
//! needs its CPUs and memory nodes first, a v1 `memsw` limit needs the
//! memory limit below it, a v2 child's files need the parent's
//! `subtree_control`).  A cgroup that exists is used as it is: crest never
//! changes a cgroup it did not create.  A value this machine refuses (a
//! CPU it does not have, a controller not enabled in a parent crest did
//! not create) fails the restore naming the cgroup, the file and the
//! value; a failed restore removes every cgroup it created, once the
//! stubs in them are gone ([`Created`]).

use crate::error::{Error, Result};
use crate::model::{CgroupDir, CgroupMember, CgroupSetting, Checkpoint, Process};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// Interface files of the unified (v2) hierarchy that configure a cgroup,
/// per controller, in the order they are written back.
const V2_FILES: &[(&str, &[&str])] = &[
    (
        "memory",
        &[
            "memory.min",
            "memory.low",
            "memory.high",
            "memory.max",
            "memory.swap.high",
            "memory.swap.max",
            "memory.zswap.max",
            "memory.oom.group",
        ],
    ),
    ("pids", &["pids.max"]),
    (
        "cpu",
        &[
            "cpu.weight",
            "cpu.max",
            "cpu.max.burst",
            "cpu.idle",
            "cpu.uclamp.min",
            "cpu.uclamp.max",
        ],
    ),
    (
        "cpuset",
        &[
            "cpuset.cpus",
            "cpuset.mems",
            "cpuset.cpus.exclusive",
            "cpuset.cpus.partition",
        ],
    ),
    ("io", &["io.weight"]),
];

/// The same for v1 hierarchies, by controller.
const V1_FILES: &[(&str, &[&str])] = &[
    (
        "memory",
        &[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.soft_limit_in_bytes",
            "memory.swappiness",
            "memory.move_charge_at_immigrate",
        ],
    ),
    ("pids", &["pids.max"]),
    (
        "cpu",
        &[
            "cpu.shares",
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "cpu.idle",
        ],
    ),
    (
        "cpuset",
        &[
            "cpuset.cpus",
            "cpuset.mems",
            "cpuset.cpu_exclusive",
            "cpuset.mem_exclusive",
            "cpuset.memory_migrate",
        ],
    ),
    ("blkio", &["blkio.weight", "blkio.bfq.weight"]),
];

/// The directory of hierarchy `h` (its id and controllers) here: (mount
/// point, root of the mount).
fn mount_of(
    mounts: &[crest_sys::proc::MountInfo],
    hierarchy: u32,
    controllers: &str,
) -> Option<(String, String)> {
    crate::task::cgroups::mount_of(
        mounts,
        &CgroupMember {
            hierarchy,
            controllers: controllers.to_string(),
            path: "/".into(),
        },
    )
}

/// Where cgroup `path` of the hierarchy mounted at `point` (mount root
/// `root`) is here, whether it exists or not; None when outside the mount.
fn dir_in(point: &str, root: &str, path: &str) -> Option<PathBuf> {
    let rel = if root == "/" {
        path
    } else {
        let r = path.strip_prefix(root)?;
        if !(r.is_empty() || r.starts_with('/')) {
            return None;
        }
        r
    };
    Some(PathBuf::from(format!(
        "{point}{}",
        rel.trim_end_matches('/')
    )))
}

fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    Some(match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    })
}

/// The pids in `dir` and every cgroup below it (None: unreadable).
fn procs_below(dir: &Path, out: &mut Vec<i32>) -> Option<()> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        if e.file_type().ok()?.is_dir() {
            procs_below(&e.path(), out)?;
        }
    }
    Some(())
}

/// Whether cgroup `dir` and everything below it hold only `tree`'s
/// processes.
fn belongs(dir: &Path, tree: &HashSet<i32>) -> bool {
    let mut pids = Vec::new();
    procs_below(dir, &mut pids).is_some() && pids.iter().all(|p| tree.contains(p))
}

fn read_value(dir: &Path, file: &str) -> Option<String> {
    let v = std::fs::read_to_string(dir.join(file)).ok()?;
    Some(v.trim_end_matches('\n').to_string())
}

/// The settings of cgroup `dir` of a hierarchy (0: v2) with
/// `controllers` (v1).
fn settings_of(dir: &Path, hierarchy: u32, controllers: &str) -> Vec<CgroupSetting> {
    let mut out = Vec::new();
    let mut put = |file: &str, value: String| {
        out.push(CgroupSetting {
            file: file.to_string(),
            value,
        })
    };
    if hierarchy == 0 {
        if let Some(t) = read_value(dir, "cgroup.type").filter(|t| t == "threaded") {
            put("cgroup.type", t);
        }
        for f in ["cgroup.max.descendants", "cgroup.max.depth"] {
            if let Some(v) = read_value(dir, f).filter(|v| v != "max") {
                put(f, v);
            }
        }
        let enabled = read_value(dir, "cgroup.controllers").unwrap_or_default();
        for c in enabled.split_whitespace() {
            for f in controller_files(dir, V2_FILES, c) {
                if let Some(v) = read_value(dir, &f) {
                    put(&f, v);
                }
            }
        }
        // Last: its children's controllers.
        if let Some(v) = read_value(dir, "cgroup.subtree_control").filter(|v| !v.is_empty()) {
            let plus: Vec<String> = v.split_whitespace().map(|c| format!("+{c}")).collect();
            put("cgroup.subtree_control", plus.join(" "));
        }
    } else {
        for c in controllers.split(',') {
            if c == "devices" {
                if let Some(list) = read_value(dir, "devices.list") {
                    if list != "a *:* rwm" {
                        put("devices.deny", "a".into());
                        for l in list.lines() {
                            put("devices.allow", l.to_string());
                        }
                    }
                }
                continue;
            }
            for f in controller_files(dir, V1_FILES, c) {
                if let Some(v) = read_value(dir, &f) {
                    put(&f, v);
                }
            }
        }
    }
    out
}

/// The setting files of controller `c` in `dir`, from `table` (hugetlb:
/// one limit per huge page size).
fn controller_files(dir: &Path, table: &[(&str, &[&str])], c: &str) -> Vec<String> {
    if c == "hugetlb" {
        return hugetlb_files(dir);
    }
    let files = table.iter().find(|(k, _)| *k == c).map(|(_, f)| *f);
    files
        .unwrap_or_default()
        .iter()
        .map(|f| f.to_string())
        .collect()
}

/// hugetlb limit files of `dir` (one per huge page size).
fn hugetlb_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n.starts_with("hugetlb.")
                && (n.ends_with(".limit_in_bytes") || n.ends_with(".max"))
                && !n.contains(".usage")
                && !n.contains(".max_usage")
        })
        .collect();
    v.sort();
    v
}

/// Whether `file` is one of the settings dump records (an image naming
/// any other file, `cgroup.procs` say, is refused).
fn is_setting(file: &str) -> bool {
    let listed = V2_FILES
        .iter()
        .chain(V1_FILES)
        .any(|(_, files)| files.contains(&file));
    let hugetlb = file.starts_with("hugetlb.")
        && !file.contains('/')
        && (file.ends_with(".limit_in_bytes") || file.ends_with(".max"));
    listed
        || hugetlb
        || matches!(
            file,
            "cgroup.type"
                | "cgroup.max.descendants"
                | "cgroup.max.depth"
                | "cgroup.subtree_control"
                | "devices.allow"
                | "devices.deny"
        )
}

/// Every cgroup membership of `p` (the process's and its threads' own).
fn memberships(p: &Process) -> impl Iterator<Item = &CgroupMember> {
    let threads = p
        .threads
        .iter()
        .filter_map(|t| t.cgroups.as_ref())
        .flatten();
    p.task_state.cgroups.iter().chain(threads)
}

/// The cgroups that belong to the tree of `processes`, whose host pids
/// (thread-group ids) are `tree`, with their settings.
pub fn collect(processes: &[Process], tree: &[i32]) -> Result<Vec<CgroupDir>> {
    let tree: HashSet<i32> = tree.iter().copied().collect();
    let mounts = crest_sys::proc::read_mountinfo(std::process::id() as i32)?;
    // (hierarchy, controllers, top path), each once.
    let mut tops: BTreeSet<(u32, String, String)> = BTreeSet::new();
    let members: BTreeSet<(u32, String, String)> = processes
        .iter()
        .flat_map(memberships)
        .map(|m| (m.hierarchy, m.controllers.clone(), m.path.clone()))
        .collect();
    for (h, ctl, path) in members {
        if ctl.starts_with("name=") || path.ends_with(" (deleted)") {
            continue;
        }
        let Some((point, root)) = mount_of(&mounts, h, &ctl) else {
            continue;
        };
        let mut top = None;
        let mut at = path.as_str();
        // Never the hierarchy's root, nor the mount's.
        while at != "/" && at != root {
            let Some(dir) = dir_in(&point, &root, at) else {
                break;
            };
            if !belongs(&dir, &tree) {
                break;
            }
            top = Some(at.to_string());
            match parent_of(at) {
                Some(p) => at = p,
                None => break,
            }
        }
        if let Some(t) = top {
            tops.insert((h, ctl, t));
        }
    }
    let mut out: Vec<CgroupDir> = Vec::new();
    for (h, ctl, top) in tops {
        // A top below another top of the same hierarchy is recorded with it.
        let nested = out.iter().any(|d| {
            d.hierarchy == h && d.controllers == ctl && top.starts_with(&format!("{}/", d.path))
        });
        if nested {
            continue;
        }
        let (point, root) = mount_of(&mounts, h, &ctl).expect("found above");
        let dir = dir_in(&point, &root, &top).expect("found above");
        walk(&dir, &top, h, &ctl, &mut out)?;
    }
    Ok(out)
}

/// Records cgroup `dir` (`path` in its hierarchy) and every cgroup below
/// it, parents first.
fn walk(dir: &Path, path: &str, h: u32, ctl: &str, out: &mut Vec<CgroupDir>) -> Result<()> {
    out.push(CgroupDir {
        hierarchy: h,
        controllers: ctl.to_string(),
        path: path.to_string(),
        settings: settings_of(dir, h, ctl),
    });
    let mut kids: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::msg(format!("listing cgroup {}: {e}", dir.display())))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    kids.sort();
    for k in kids {
        walk(&dir.join(&k), &format!("{path}/{k}"), h, ctl, out)?;
    }
    Ok(())
}

/// The cgroups a restore created: removed again (children first) when
/// dropped, unless [`Created::commit`]ted.  Dropped after the stubs are
/// gone, it waits a moment for each cgroup to empty.
#[derive(Default)]
pub struct Created {
    dirs: Vec<PathBuf>,
}

impl Created {
    /// The tree runs: what was made stays.
    pub fn commit(mut self) {
        self.dirs.clear();
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for d in self.dirs.drain(..).rev() {
            let mut last = None;
            for _ in 0..200 {
                match std::fs::remove_dir(&d) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                // A killed process leaves its cgroups a moment after it is
                // reaped.
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if let Some(e) = last {
                eprintln!(
                    "crest: warning: removing cgroup {} that this restore created: {e}",
                    d.display()
                );
            }
        }
    }
}

/// Creates every cgroup of `ckpt` that is missing here, with its settings
/// (parents first), and returns them (removed again if the restore fails).
pub fn prepare(ckpt: &Checkpoint) -> Result<Created> {
    let mounts = crest_sys::proc::read_mountinfo(std::process::id() as i32)?;
    let mut made = Created::default();
    for c in &ckpt.cgroups {
        let what = if c.hierarchy == 0 {
            format!("cgroup {} (v2)", c.path)
        } else {
            format!("cgroup {} ({})", c.path, c.controllers)
        };
        let bad_path = !c.path.starts_with('/') || c.path.split('/').any(|x| x == ".." || x == ".");
        if bad_path || c.path == "/" {
            return Err(Error::Invalid(format!(
                "{what}: not a plain absolute path below the hierarchy's root"
            )));
        }
        let Some((point, root)) = mount_of(&mounts, c.hierarchy, &c.controllers) else {
            return Err(Error::Incompatible(format!(
                "{what}: its hierarchy is not mounted here"
            )));
        };
        let Some(dir) = dir_in(&point, &root, &c.path) else {
            return Err(Error::Incompatible(format!(
                "{what}: outside the hierarchy's mount at {point}"
            )));
        };
        if let Some(s) = c.settings.iter().find(|s| !is_setting(&s.file)) {
            return Err(Error::Invalid(format!(
                "{what}: {:?} is not a cgroup setting crest restores",
                s.file
            )));
        }
        if dir.is_dir() {
            continue;
        }
        std::fs::create_dir(&dir)
            .map_err(|e| Error::msg(format!("{what}: creating {}: {e}", dir.display())))?;
        made.dirs.push(dir.clone());
        for s in &c.settings {
            let path = dir.join(&s.file);
            std::fs::write(&path, format!("{}\n", s.value)).map_err(|e| {
                Error::Incompatible(format!(
                    "{what}: writing {:?} into {}: {e}{}",
                    s.value,
                    path.display(),
                    if e.kind() == std::io::ErrorKind::NotFound {
                        " (the controller is not enabled for it here: crest does not change \
                         the cgroups it did not create)"
                    } else {
                        ""
                    }
                ))
            })?;
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_parents() {
        assert_eq!(parent_of("/a/b"), Some("/a"));
        assert_eq!(parent_of("/a"), Some("/"));
        assert_eq!(parent_of("/"), None);
        assert_eq!(
            dir_in("/sys/fs/cgroup/pids", "/", "/x/y"),
            Some(PathBuf::from("/sys/fs/cgroup/pids/x/y"))
        );
        assert_eq!(
            dir_in("/mnt", "/ctr", "/ctr/a"),
            Some(PathBuf::from("/mnt/a"))
        );
        assert_eq!(dir_in("/mnt", "/ctr", "/ctrx/a"), None);
    }

    #[test]
    fn only_settings_are_written_back() {
        for f in [
            "memory.max",
            "pids.max",
            "cpu.cfs_quota_us",
            "hugetlb.2MB.max",
            "devices.allow",
        ] {
            assert!(is_setting(f), "{f}");
        }
        for f in [
            "cgroup.procs",
            "tasks",
            "cgroup.kill",
            "memory.reclaim",
            "../x.max",
            "hugetlb.2MB.usage_in_bytes",
        ] {
            assert!(!is_setting(f), "{f}");
        }
    }
}
