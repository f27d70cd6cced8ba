//! What restore checks against this machine before it builds anything:
//! the image's consistency, the privileges it needs, and every path and
//! object it will have to open or recreate.
//!
//! One function serves three callers: `restore` (before the first stub
//! exists), `dump` (on the collected model, before the tree is released
//! or killed: an image restore would reject is a dump error and the tree
//! runs on) and `check` (so it never says "can be checkpointed" for
//! something restore would refuse).  Checks that depend on the tree being
//! gone (its pids, its own socket files) are left to restore.

use crate::error::Error;
use crate::model::{Checkpoint, ObjectKind, OpenTarget};
use crate::Obstacle;
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Everything that would make restoring `ckpt` here fail.
pub fn check_here(ckpt: &Checkpoint) -> Vec<Obstacle> {
    let root = ckpt.processes.first().map_or(0, |p| p.pid);
    let mut out = Vec::new();
    if let Err(e) = crate::restore::validate(ckpt) {
        out.push(Obstacle {
            pid: root,
            object: "image".into(),
            reason: e.to_string(),
        });
        return out;
    }
    let tree: Vec<i32> = ckpt
        .processes
        .iter()
        .flat_map(|p| p.threads.iter().map(|t| t.tid))
        .collect();
    for p in &ckpt.processes {
        let mut push = |object: String, reason: String| {
            out.push(Obstacle {
                pid: p.pid,
                object,
                reason,
            })
        };
        let creds =
            std::iter::once(&p.creds).chain(p.threads.iter().filter_map(|t| t.creds.as_ref()));
        for c in creds {
            if let Err(e) = crate::task::creds::check_restorable(p.pid, c, p.ns.user.is_some()) {
                push("credentials".into(), e.to_string());
            }
        }
        let cwd_problem = match &p.fs.cwd_deleted {
            Some(n) => parent_exists(&n.path),
            None => directory_problem(&p.fs.cwd, &tree),
        };
        if let Some(why) = cwd_problem {
            push("cwd".into(), why);
        }
        if let Some(why) = directory_problem(&p.fs.root, &tree) {
            push("root".into(), why);
        }
        for why in rlimit_problems(&p.attrs.rlimits) {
            push("resource limits".into(), why);
        }
        for o in &p.fd_owners {
            if !crate::files::fown::owner_in(o, ckpt) {
                push(
                    format!("fd {}", o.fd),
                    format!(
                        "its SIGIO owner (F_SETOWN_EX type {}, id {}) is not a task, process \
                         or group of the tree (not supported)",
                        o.owner_type, o.owner
                    ),
                );
            }
        }
    }
    // Each open file description once, named by its first descriptor.
    let mut first: HashMap<u32, (i32, i32)> = HashMap::new();
    for p in &ckpt.processes {
        for fd in &p.fds {
            first.entry(fd.file).or_insert((p.pid, fd.fd));
        }
    }
    let mut firsts: Vec<(u32, (i32, i32))> = first.into_iter().collect();
    firsts.sort();
    for (id, (pid, fd)) in firsts {
        let Some(ObjectKind::Open(o)) = ckpt.object(id) else {
            continue;
        };
        let problem = match crate::files::procfiles::deferred_path(o, &tree) {
            Some(path) => crate::files::procfiles::problem(ckpt, id, path),
            None => target_problem(&o.target, o.flags, ckpt, &tree),
        };
        if let Some(reason) = problem {
            out.push(Obstacle {
                pid,
                object: format!("fd {fd}"),
                reason,
            });
        }
    }
    for obj in &ckpt.objects {
        if let ObjectKind::File(f) = &obj.kind {
            if let Err(e) = crate::files::same_file(f) {
                out.push(Obstacle {
                    pid: root,
                    object: format!("file {}", f.path),
                    reason: e.to_string(),
                });
            }
        }
    }
    out
}

/// [`check_here`] as a restore error.
pub fn require(ckpt: &Checkpoint) -> crate::Result<()> {
    let obs = check_here(ckpt);
    if obs.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = obs.iter().map(|o| o.to_string()).collect();
    Err(Error::Incompatible(format!(
        "the image cannot be restored here: {}",
        lines.join("; ")
    )))
}

/// The pid of a `/proc/PID/...` path.
fn proc_pid(path: &str) -> Option<i32> {
    path.strip_prefix("/proc/")?.split('/').next()?.parse().ok()
}

fn inside_tree(path: &str, tree: &[i32]) -> Option<String> {
    let pid = proc_pid(path)?;
    tree.contains(&pid).then(|| {
        format!(
            "{path} belongs to pid {pid} of the tree itself, which does not exist yet when \
             restore opens it (not supported)"
        )
    })
}

fn directory_problem(path: &str, tree: &[i32]) -> Option<String> {
    if path.ends_with(" (deleted)") {
        return Some(format!(
            "the directory {path} was deleted and cannot be made again (not supported)"
        ));
    }
    if let Some(why) = inside_tree(path, tree) {
        return Some(why);
    }
    match std::fs::metadata(&*crate::ns::mnt::host_path(path)) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!("{path} is no longer a directory")),
        Err(e) => Some(format!("directory {path}: {e}")),
    }
}

fn parent_exists(path: &str) -> Option<String> {
    let parent = std::path::Path::new(path).parent()?;
    let here = crate::ns::mnt::host_path(parent.to_str()?).into_owned();
    match std::fs::metadata(here) {
        Ok(m) if m.is_dir() => None,
        _ => Some(format!(
            "the directory {} no longer exists, so {path} cannot be recreated (not supported)",
            parent.display()
        )),
    }
}

/// Why the open file description `t` could not be opened again here.
fn target_problem(t: &OpenTarget, flags: u32, ckpt: &Checkpoint, tree: &[i32]) -> Option<String> {
    let stat = |path: &str, follow: bool| {
        let here = crate::ns::mnt::host_path(path);
        if follow {
            std::fs::metadata(&*here)
        } else {
            std::fs::symlink_metadata(&*here)
        }
        .map_err(|e| format!("{path}: {e}"))
    };
    match t {
        OpenTarget::Regular(f) => {
            inside_tree(&f.path, tree).or_else(|| match stat(&f.path, true) {
                Ok(m) if m.is_file() => None,
                Ok(_) => Some(format!("{} is no longer a regular file", f.path)),
                Err(e) => Some(e),
            })
        }
        OpenTarget::Directory { path } => directory_problem(path, tree),
        OpenTarget::CharDevice { path, rdev } => match stat(path, true) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == *rdev => None,
            Ok(_) => Some(format!("{path} is no longer the device it was")),
            Err(e) => Some(e),
        },
        OpenTarget::Fifo { path } | OpenTarget::FifoData { path, .. } => match stat(path, true) {
            Ok(m) if m.file_type().is_fifo() => None,
            Ok(_) => Some(format!("{path} is no longer a FIFO")),
            Err(e) => Some(e),
        },
        OpenTarget::Unlinked { path, .. } => parent_exists(path),
        OpenTarget::Deleted(n) => parent_exists(&n.path),
        OpenTarget::Path { path, kind } => {
            let follow = flags & libc::O_NOFOLLOW as u32 == 0;
            inside_tree(path, tree).or_else(|| match stat(path, follow) {
                Ok(m) if m.mode() & libc::S_IFMT == *kind => None,
                Ok(_) => Some(format!("{path} is no longer the same kind of file")),
                Err(e) => Some(e),
            })
        }
        OpenTarget::PipeEnd { pipe, .. } => match ckpt.object(*pipe) {
            Some(ObjectKind::Pipe(p)) => pipe_size_problem(p.size),
            _ => None,
        },
        OpenTarget::Unix(u) => crate::net::unix::name_problem(u, ckpt),
        OpenTarget::Inotify { watches } => watches.iter().find_map(|w| watch_problem(w, tree)),
        OpenTarget::SystemTty(t) => crate::files::console::problem(t),
        OpenTarget::PosixMq { name, ipc_ns: None } => crate::ns::mqueue::host_problem(name),
        OpenTarget::Fanotify(g) => g
            .marks
            .iter()
            .find_map(|m| crate::files::fanotify::object_problem(&m.object)),
        OpenTarget::Epoll { targets } => targets.iter().find_map(|t| {
            let p = ckpt.processes.iter().find(|p| p.pid == t.pid)?;
            let f = p.fds.iter().find(|f| f.fd == t.fd)?;
            let Some(ObjectKind::Open(o)) = ckpt.object(f.file) else {
                return None;
            };
            crate::files::procfiles::deferred_path(o, tree).map(|path| {
                format!(
                    "epoll watches {path} (pid {} fd {}), a /proc file of the tree that is \
                     opened only once its process exists (not supported)",
                    t.pid, t.fd
                )
            })
        }),
        _ => None,
    }
}

/// Why inotify watch `w` could not be added again: its file is gone or
/// another one, or it is a /proc file of the tree (watches are added
/// before the processes exist).
fn watch_problem(w: &crate::model::InotifyWatch, tree: &[i32]) -> Option<String> {
    if w.unlinked.is_some() {
        return None; // on a file of the image, recreated by the restore
    }
    if let Some(why) = inside_tree(&w.path, tree) {
        return Some(format!("inotify watch {}: {why}", w.wd));
    }
    match std::fs::symlink_metadata(&w.path) {
        Err(e) => Some(format!(
            "inotify watch {} is on {}, which is gone: {e}",
            w.wd, w.path
        )),
        Ok(m) if m.dev() == w.dev && m.ino() != w.ino => Some(format!(
            "inotify watch {} is on {}, which is another file now",
            w.wd, w.path
        )),
        Ok(_) => None,
    }
}

/// Without CAP_SYS_RESOURCE a pipe cannot be made larger than
/// /proc/sys/fs/pipe-max-size.
fn pipe_size_problem(size: u32) -> Option<String> {
    let max: u32 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (size > max).then(|| {
        format!("its pipe holds {size} bytes of buffer, above this machine's pipe-max-size {max}")
    })
}

/// Hard resource limits above this restorer's own cannot be set again
/// without CAP_SYS_RESOURCE (the restored process starts with crest's).
fn rlimit_problems(limits: &[(u32, u64, u64)]) -> Vec<String> {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if eff & (1 << CAP_SYS_RESOURCE) != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for &(r, _, max) in limits {
        let mut mine = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills one struct rlimit.
        if unsafe { libc::getrlimit(r as _, &mut mine) } != 0 {
            continue;
        }
        if max > mine.rlim_max {
            let show = |v: u64| {
                if v == libc::RLIM_INFINITY {
                    "unlimited".to_string()
                } else {
                    v.to_string()
                }
            };
            out.push(format!(
                "resource limit {r}: its hard limit {} is above this restorer's {}, and \
                 raising it needs CAP_SYS_RESOURCE",
                show(max),
                show(mine.rlim_max)
            ));
        }
    }
    out
}
