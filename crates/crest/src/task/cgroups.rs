//! cgroups: which cgroup of every hierarchy (v1 controllers and the
//! unified v2 one) each process and thread belongs to.
//!
//! Dump reads /proc/PID/cgroup (and each thread's, kept only where it
//! differs).  Restore puts the new processes into the same cgroups, which
//! must exist on this machine (crest does not create or change cgroups):
//! crest writes each pid into the cgroup's `cgroup.procs` right after the
//! process is created, before its memory is filled (so its pages are
//! charged there), and each thread with a cgroup of its own into `tasks`
//! (v1) or `cgroup.threads` (v2) once it exists.  A process already in
//! the right cgroup (inherited from crest) is left alone.  A hierarchy
//! that is not mounted here, or a cgroup that does not exist, fails the
//! restore before anything is created, naming the process and the cgroup.

use crate::error::{Error, Result};
use crate::model::{CgroupMember, Checkpoint, TaskState, Thread};

/// Parses /proc/PID/cgroup text.
pub fn parse(text: &str) -> Result<Vec<CgroupMember>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut it = l.splitn(3, ':');
            let (Some(h), Some(c), Some(p)) = (it.next(), it.next(), it.next()) else {
                return Err(Error::msg(format!("unexpected cgroup line {l:?}")));
            };
            Ok(CgroupMember {
                hierarchy: h
                    .parse()
                    .map_err(|_| Error::msg(format!("unexpected cgroup line {l:?}")))?,
                controllers: c.to_string(),
                path: p.to_string(),
            })
        })
        .collect()
}

fn read(path: &str) -> Result<Vec<CgroupMember>> {
    match crest_sys::proc::read_bytes(path) {
        Ok(t) => parse(&String::from_utf8_lossy(&t)),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Reads the cgroups of process `pid` and of each of its threads `tids`
/// (threads get theirs only where they differ from the leader's).
pub fn collect(pid: i32, tids: &[i32], st: &mut TaskState, threads: &mut [Thread]) -> Result<()> {
    st.cgroups = read(&format!("/proc/{pid}/cgroup"))?;
    for (th, &tid) in threads.iter_mut().zip(tids).skip(1) {
        let own = read(&format!("/proc/{pid}/task/{tid}/cgroup"))?;
        if !own.is_empty() && own != st.cgroups {
            th.cgroups = Some(own);
        }
    }
    Ok(())
}

/// Where a hierarchy is mounted here: (mount point, root of the mount).
pub(crate) fn mount_of(
    mounts: &[crest_sys::proc::MountInfo],
    m: &CgroupMember,
) -> Option<(String, String)> {
    let found = if m.hierarchy == 0 {
        mounts.iter().find(|x| x.fs_type == "cgroup2")
    } else {
        let want: Vec<&str> = m.controllers.split(',').filter(|c| !c.is_empty()).collect();
        // A controller is bound to one hierarchy only: the mount that has
        // all of them is the one.
        mounts.iter().find(|x| {
            let have: Vec<&str> = x.super_options.split(',').collect();
            x.fs_type == "cgroup" && !want.is_empty() && want.iter().all(|c| have.contains(c))
        })
    };
    found.map(|x| (x.mount_point.clone(), x.root.clone()))
}

/// The directory of cgroup `m` here, checked to exist.
fn dir_of(
    mounts: &[crest_sys::proc::MountInfo],
    m: &CgroupMember,
) -> std::result::Result<String, String> {
    let what = if m.hierarchy == 0 {
        "the unified (v2) hierarchy".to_string()
    } else {
        format!("the {} hierarchy", m.controllers)
    };
    if !m.path.starts_with('/') || m.path.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!(
            "cgroup path {:?} of {what} is not a plain absolute path",
            m.path
        ));
    }
    if m.path.ends_with(" (deleted)") {
        return Err(format!("its cgroup {} of {what} was removed", m.path));
    }
    let Some((point, root)) = mount_of(mounts, m) else {
        return Err(format!("{what} (cgroup {}) is not mounted here", m.path));
    };
    let rel = if root == "/" {
        m.path.as_str()
    } else {
        match m.path.strip_prefix(root.as_str()) {
            Some(r) if r.is_empty() || r.starts_with('/') => r,
            _ => {
                return Err(format!(
                    "cgroup {} of {what} is outside the mount at {point}",
                    m.path
                ))
            }
        }
    };
    let dir = format!("{point}{}", rel.trim_end_matches('/'));
    if !std::path::Path::new(&dir).is_dir() {
        return Err(format!(
            "cgroup {} of {what} does not exist here ({dir})",
            m.path
        ));
    }
    Ok(dir)
}

/// The `cgroup.procs` file of cgroup `m` here (checked to exist).
pub fn procs_file(m: &CgroupMember) -> Result<String> {
    let mounts = crest_sys::proc::read_mountinfo(std::process::id() as i32)?;
    let dir = dir_of(&mounts, m).map_err(Error::Incompatible)?;
    Ok(format!("{dir}/cgroup.procs"))
}

/// Checks that every cgroup of the image exists here.
pub fn check(ckpt: &Checkpoint) -> Result<()> {
    let mounts = crest_sys::proc::read_mountinfo(std::process::id() as i32)?;
    for p in &ckpt.processes {
        let thread_sets = p.threads.iter().filter_map(|t| t.cgroups.as_ref());
        for m in std::iter::once(&p.task_state.cgroups)
            .chain(thread_sets)
            .flatten()
        {
            dir_of(&mounts, m).map_err(|why| {
                Error::Incompatible(format!("pid {}: cannot be restored: {why}", p.pid))
            })?;
        }
    }
    Ok(())
}

fn join(pid: i32, tid: i32, want: &[CgroupMember], file: fn(&CgroupMember) -> &str) -> Result<()> {
    let now = read(&format!("/proc/{pid}/task/{tid}/cgroup"))?;
    let mounts = crest_sys::proc::read_mountinfo(std::process::id() as i32)?;
    for m in want {
        if now.contains(m) {
            continue;
        }
        let dir = dir_of(&mounts, m)
            .map_err(|why| Error::Incompatible(format!("pid {pid}: cannot be restored: {why}")))?;
        let path = format!("{dir}/{}", file(m));
        std::fs::write(&path, format!("{tid}\n")).map_err(|e| {
            Error::msg(format!(
                "task {tid} of pid {pid}: cannot join cgroup {} ({path}): {e}",
                m.path
            ))
        })?;
    }
    Ok(())
}

/// Moves the new process `pid` (one thread yet) into its cgroups.
pub fn restore_process(pid: i32, st: &TaskState) -> Result<()> {
    join(pid, pid, &st.cgroups, |_| "cgroup.procs")
}

/// Moves thread `th` of `pid`, `tid` in crest's PID namespace (its
/// restored host ids: in a PID namespace below crest's they differ from
/// the image's), into its own cgroups, where it has them.
pub fn restore_thread(pid: i32, tid: i32, th: &Thread) -> Result<()> {
    match &th.cgroups {
        Some(own) => join(pid, tid, own, |m| {
            if m.hierarchy == 0 {
                "cgroup.threads"
            } else {
                "tasks"
            }
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_lines() {
        let m = parse("4:memory:/a/b\n1:name=systemd:/\n0::/x\n").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].controllers, "memory");
        assert_eq!(m[1].path, "/");
        assert_eq!(m[2].hierarchy, 0);
        assert!(parse("garbage").is_err());
    }
}
