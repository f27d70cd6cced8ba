//! Mount namespaces.
//!
//! Two shapes.  A copy of crest's mount tree in which proc is mounted
//! again (`unshare --mount --mount-proc`): every mount of the tree's
//! namespace is one crest also has (same mount point, filesystem type,
//! source, root and device) but proc mounts, which are recorded with
//! their flags, and the propagation of the root mount.  Restore creates
//! the namespace with the process that first entered it (CLONE_NEWNS: a
//! copy of crest's tree at restore), which sets the propagation on every
//! mount and mounts each proc again; paths are looked up in crest's
//! namespace, the same tree.
//!
//! Any other tree is recorded whole from /proc/PID/mountinfo (ids,
//! parents, mount points, types, sources, roots, options, peer groups),
//! each mount with how restore makes it ([`MountRec::how`]): a bind of a
//! path crest sees (a mount whose filesystem crest's namespace also has:
//! the container's root directory, bind mounts from outside), a bind of
//! another mount of the namespace, a filesystem created anew (tmpfs with
//! its whole content, devpts instances, cgroup, overlay), or proc,
//! mqueue and sysfs, which show the namespaces of the process that
//! mounts them.  Other types are refused with mount point and type.
//!
//! Restore builds the tree detached in crest, as soon as the image's
//! model is read (the new mount API: open_tree clones, fsopen/fsmount,
//! move_mount onto the detached tree, mount_setattr), fills each saved
//! tmpfs from the FILE_DATA records that follow, and opens the tree's
//! files, cwd and root through it (openat2 RESOLVE_IN_ROOT).  The process
//! creating the namespace makes every mount of its copy of crest's tree
//! private (nothing it does reaches crest's namespace), attaches the
//! tree on "/", pivots into it and detaches the old root, then mounts
//! proc, mqueue and sysfs and attaches what lies below them, and sets
//! the recorded propagation ([`propagation`]).  A restore that fails leaves nothing: the
//! detached tree goes with crest's descriptors, the namespace with its
//! last process.

use crate::error::{Context, Error, Result};
use crate::model::{Checkpoint, MntState, MountRec, NsState, TreeFile};
use crate::Obstacle;
use crest_sys::mount as m;

pub mod propagation;
pub mod tmpfs;
use crest_sys::proc::{self, MountInfo};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

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
    if f & (libc::MS_NOATIME | libc::MS_RELATIME) == 0 {
        // mountinfo shows no atime option for strictatime.
        f |= libc::MS_STRICTATIME;
    }
    f
}

/// The MOUNT_ATTR_* bits of a mount's per-mount options.
#[allow(dead_code)]
fn attrs(options: &str) -> u64 {
    let mut f = 0;
    for o in options.split(',') {
        f |= match o {
            "ro" => m::ATTR_RDONLY,
            "nosuid" => m::ATTR_NOSUID,
            "nodev" => m::ATTR_NODEV,
            "noexec" => m::ATTR_NOEXEC,
            "noatime" => m::ATTR_NOATIME,
            "strictatime" => m::ATTR_STRICTATIME,
            "nodiratime" => m::ATTR_NODIRATIME,
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

/// Filesystem types restore creates anew.
const NEW: [&str; 5] = ["tmpfs", "devpts", "cgroup", "cgroup2", "overlay"];
/// Filesystem types the process creating the namespace mounts: they
/// show what namespaces of the mounting process hold (proc its PID
/// namespace, mqueue its IPC namespace, sysfs the devices of its network
/// namespace), so they are mounted once it is in the tree's.
const IN_STUB: [&str; 3] = ["proc", "mqueue", "sysfs"];

/// `path` below `base` ("/a" below "/": "a"; "/a/b" below "/a": "b"),
/// or None when it is not below.
fn below(path: &str, base: &str) -> Option<String> {
    if base == "/" {
        return path.strip_prefix('/').map(str::to_string);
    }
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        return Some(String::new());
    }
    rest.strip_prefix('/').map(str::to_string)
}

fn join(base: &str, rel: &str) -> String {
    match (base.trim_end_matches('/'), rel) {
        ("", "") => "/".into(),
        (b, "") => b.into(),
        (b, r) => format!("{b}/{r}"),
    }
}

/// The mount namespace of `pid`, checked against crest's.
/// `external` are mount points of mounts whoever restores supplies
/// ([`crate::DumpOptions::external_mounts`]).
pub fn collect(
    pid: i32,
    external: &[(String, String)],
    obstacles: &mut Vec<Obstacle>,
) -> Result<NsState> {
    let mine = proc::read_mountinfo(std::process::id() as i32)?;
    let theirs = proc::read_mountinfo(pid)?;
    let copy = theirs
        .iter()
        .all(|m| m.fs_type == "proc" || mine.iter().any(|c| same(c, m)));
    let mut st = MntState::default();
    let root = theirs.iter().find(|m| m.mount_point == "/");
    st.propagation = match root {
        Some(r) if r.shared().is_some() => "shared",
        Some(r) if r.master().is_some() => "slave",
        _ => "private",
    }
    .into();
    if copy {
        for m in &theirs {
            if !mine.iter().any(|c| same(c, m)) {
                st.procs.push((m.mount_point.clone(), flags(&m.options)));
            }
        }
    } else {
        st.mounts = whole(pid, &mine, &theirs, external, obstacles)?;
    }
    let procs: Vec<&str> = theirs
        .iter()
        .filter(|m| m.fs_type == "proc" && (!copy || !mine.iter().any(|c| same(c, m))))
        .map(|m| m.mount_point.as_str())
        .collect();
    check_proc_pidns(pid, &procs, obstacles);
    Ok(NsState::Mnt(st))
}

/// Restore mounts each proc anew in the process that creates the mount
/// namespace, so it shows that process's PID namespace: a proc mounted
/// there by a process of another one (`unshare --pid --fork --mount-proc`
/// run inside the namespace leaves a proc of the inner PID namespace in
/// the mount namespace both share) would come back showing the wrong
/// PIDs, and is refused.  The proc visible at each mount point is
/// checked (through PID 1 of the namespace it shows).
fn check_proc_pidns(pid: i32, mount_points: &[&str], obstacles: &mut Vec<Obstacle>) {
    let Ok(own) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) else {
        return;
    };
    let mut seen: Vec<&str> = Vec::new();
    for &mp in mount_points {
        if seen.contains(&mp) {
            continue;
        }
        seen.push(mp);
        let shown = std::fs::read_link(format!("/proc/{pid}/root{mp}/1/ns/pid")).ok();
        if let Some(shown) = shown.filter(|s| *s != own) {
            obstacles.push(Obstacle {
                pid,
                object: format!("mount {mp}"),
                reason: format!(
                    "the proc mounted at {mp} shows another PID namespace ({}) than that of \
                     the process that creates this mount namespace at restore ({}); a proc of \
                     an inner PID namespace in a mount namespace it shares with an outer one \
                     is not supported yet (give the inner PID namespace a mount namespace of \
                     its own, made by its init)",
                    shown.display(),
                    own.display()
                ),
            });
        }
    }
}

/// `mounts` with every parent before its children, siblings in their
/// order (mountinfo lists a namespace's mounts in the order they were
/// attached, which after move_mount of a prepared subtree is not that).
fn parents_first(mounts: &[MountInfo]) -> Vec<MountInfo> {
    let ids: Vec<u64> = mounts.iter().map(|m| m.mnt_id).collect();
    let mut out: Vec<MountInfo> = Vec::with_capacity(mounts.len());
    let mut todo: Vec<&MountInfo> = mounts.iter().collect();
    while !todo.is_empty() {
        let before = todo.len();
        todo.retain(|m| {
            let ready = !ids.contains(&m.parent_id)
                || m.parent_id == m.mnt_id
                || out.iter().any(|o| o.mnt_id == m.parent_id);
            if ready {
                out.push((*m).clone());
            }
            !ready
        });
        if todo.len() == before {
            // A cycle cannot happen; keep the rest as listed.
            out.extend(todo.drain(..).cloned());
        }
    }
    out
}

/// The records of a tree recreated whole.
fn whole(
    pid: i32,
    mine: &[MountInfo],
    theirs: &[MountInfo],
    external: &[(String, String)],
    obstacles: &mut Vec<Obstacle>,
) -> Result<Vec<MountRec>> {
    let sorted = parents_first(theirs);
    let theirs = &sorted[..];
    let ids: Vec<u64> = theirs.iter().map(|m| m.mnt_id).collect();
    let mut out: Vec<MountRec> = Vec::new();
    let mut refuse = |m: &MountInfo, why: String| {
        obstacles.push(Obstacle {
            pid,
            object: format!("mount {}", m.mount_point),
            reason: format!("{} ({} from {}): {why}", m.mount_point, m.fs_type, m.source),
        })
    };
    let roots = theirs
        .iter()
        .filter(|m| !ids.contains(&m.parent_id))
        .count();
    for m in theirs {
        let top = !ids.contains(&m.parent_id);
        if top && (roots > 1 || m.mount_point != "/") {
            refuse(
                m,
                "a mount whose parent is outside the process's root; only trees \
                 with one root mount on / are supported"
                    .into(),
            );
            continue;
        }
        let mut r = MountRec {
            id: m.mnt_id,
            parent: if top { 0 } else { m.parent_id },
            mount_point: m.mount_point.clone(),
            fs_type: m.fs_type.clone(),
            source: m.source.clone(),
            root: m.root.clone(),
            options: m.options.clone(),
            super_options: m.super_options.clone(),
            shared: m.shared(),
            master: m.master(),
            propagate_from: m.propagate_from(),
            unbindable: m.unbindable(),
            ..Default::default()
        };
        // The filesystem as crest sees it: the mount of the same device
        // whose root holds this one's, the deepest.
        let host = mine
            .iter()
            .filter(|c| (c.major, c.minor) == (m.major, m.minor))
            .filter_map(|c| Some((c, below(&m.root, &c.root)?)))
            .max_by_key(|(c, _)| c.root.len())
            .map(|(c, rel)| join(&c.mount_point, &rel));
        let inside = out
            .iter()
            .filter(|e| e.how != "stub")
            .filter(|e| {
                theirs
                    .iter()
                    .any(|t| t.mnt_id == e.id && (t.major, t.minor) == (m.major, m.minor))
            })
            .find_map(|e| Some((e.id, below(&m.root, &e.root)?)));
        let ext = external.iter().find(|(p, _)| *p == m.mount_point);
        if let (false, Some((_, name))) = (top, ext) {
            // Supplied at restore by name; where it came from here is
            // only the default.
            r.how = "host".into();
            r.host = host.unwrap_or_default();
            r.ext = name.clone();
        } else if let Some(h) = host {
            r.how = "host".into();
            r.host = h;
        } else if let Some((from, rel)) = inside {
            r.how = "inside".into();
            r.from = from;
            r.host = rel;
        } else if NEW.contains(&m.fs_type.as_str()) {
            r.how = "new".into();
            if m.fs_type == "tmpfs" && m.root == "/" {
                let mut next = NEXT_DATA.load(Ordering::SeqCst);
                r.files = tmpfs::collect(pid, &m.mount_point, &mut next)?;
                NEXT_DATA.store(next, Ordering::SeqCst);
            } else if m.fs_type == "tmpfs" {
                refuse(
                    m,
                    format!(
                        "a bind of directory {} of a tmpfs mounted elsewhere; only whole \
                         tmpfs mounts are saved",
                        m.root
                    ),
                );
            }
        } else if let Some((from, rel)) = IN_STUB
            .contains(&m.fs_type.as_str())
            .then(|| {
                // A bind of (a directory of) a proc or mqueue mounted
                // before (runc's read-only /proc/sys and the like).
                out.iter()
                    .filter(|e| e.how == "stub")
                    .filter(|e| {
                        theirs
                            .iter()
                            .any(|t| t.mnt_id == e.id && (t.major, t.minor) == (m.major, m.minor))
                    })
                    .find_map(|e| Some((e.id, below(&m.root, &e.root)?)))
            })
            .flatten()
        {
            r.how = "stub-bind".into();
            r.from = from;
            r.host = rel;
        } else if IN_STUB.contains(&m.fs_type.as_str()) {
            r.how = "stub".into();
        } else {
            refuse(
                m,
                format!(
                    "a filesystem of type {} that crest cannot recreate (supported: binds of \
                     filesystems crest sees, {}, {})",
                    m.fs_type,
                    NEW.join(", "),
                    IN_STUB.join(", ")
                ),
            );
            continue;
        }
        out.push(r);
    }
    propagation::find_outside_masters(&mut out, mine, theirs);
    propagation::check(pid, &out, obstacles);
    Ok(out)
}

/// What the process creating the namespace does first (see
/// [`enter`]).
pub struct StubPlan {
    /// MS_PRIVATE, MS_SLAVE or 0: set on its copy of "/" recursively.
    prop: u64,
    /// crest's descriptor on the detached tree to pivot into (-1: none).
    root: RawFd,
    steps: Vec<Step>,
}

enum Step {
    /// mount(2) a filesystem of type `fstype` at `at`.
    Mount {
        fstype: CString,
        source: CString,
        at: CString,
        flags: u64,
        data: CString,
    },
    /// Attach the detached mount `fd` (crest's descriptor) at `at`.
    Attach { fd: RawFd, at: CString },
    /// Set the propagation flag on `at`.
    Propagate { at: CString, flag: u64 },
    /// Put the mount at `to` (private) in the peer group and under the
    /// master of the mount at `from` (move_mount MOVE_MOUNT_SET_GROUP).
    SetGroup { from: CString, to: CString },
    /// Make the (private) mount at `to` a slave of the peer group of
    /// crest's descriptor `from` (a mount of crest's namespace): a peer of
    /// it, then a slave.  Left private if the kernel refuses the first
    /// (a stub in a user namespace may not touch crest's namespace).
    SlaveOf { from: RawFd, to: CString },
}

/// The stub plan of a namespace of the image (`None`: not a mount
/// namespace).
pub fn plan(st: &NsState) -> Option<StubPlan> {
    let NsState::Mnt(m) = st else { return None };
    if !m.mounts.is_empty() {
        let t = TREE.lock().unwrap_or_else(|e| e.into_inner());
        return t.as_ref().map(|t| StubPlan {
            prop: libc::MS_PRIVATE,
            root: t.root.as_raw_fd(),
            steps: t.steps(),
        });
    }
    let prop = match m.propagation.as_str() {
        "private" => libc::MS_PRIVATE,
        "slave" => libc::MS_SLAVE,
        _ => 0,
    };
    let steps = m
        .procs
        .iter()
        .filter_map(|(p, f)| {
            Some(Step::Mount {
                fstype: c"proc".into(),
                source: c"proc".into(),
                at: CString::new(p.as_str()).ok()?,
                flags: *f,
                data: CString::default(),
            })
        })
        .collect();
    Some(StubPlan {
        prop,
        root: -1,
        steps,
    })
}

/// Sets up the new mount namespace of the calling (just cloned, single
/// threaded) process from its plan.  False: a step failed (errno set).
///
/// # Safety
/// Runs in a forked child: only raw syscalls on the plan, prepared
/// before the fork; the descriptors it names are inherited from crest.
pub(crate) unsafe fn enter(p: &StubPlan) -> bool {
    let none = std::ptr::null::<libc::c_char>();
    if p.prop != 0
        && libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | p.prop,
            none.cast(),
        ) != 0
    {
        return false;
    }
    if p.root >= 0 {
        let empty = c"".as_ptr();
        // Attach the tree on "/" and make it the root.  The old root
        // stays stacked on it (out of reach of paths, which start below
        // it) until the steps are done: in a user namespace the kernel
        // mounts a new proc or sysfs only while one is fully visible in
        // the namespace (crest's, in the old root).
        if libc::syscall(
            libc::SYS_move_mount,
            p.root,
            empty,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            4u32,
        ) != 0
            || libc::fchdir(p.root) != 0
            || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
        {
            return false;
        }
    }
    for s in &p.steps {
        let ok = match s {
            Step::Mount {
                fstype,
                source,
                at,
                flags,
                data,
            } => {
                libc::mount(
                    source.as_ptr(),
                    at.as_ptr(),
                    fstype.as_ptr(),
                    *flags,
                    data.as_ptr().cast(),
                ) == 0
            }
            Step::Attach { fd, at } => {
                libc::syscall(
                    libc::SYS_move_mount,
                    *fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    at.as_ptr(),
                    4u32,
                ) == 0
            }
            Step::Propagate { at, flag } => {
                libc::mount(none, at.as_ptr(), none, *flag, none.cast()) == 0
            }
            Step::SlaveOf { from, to } => {
                libc::syscall(
                    libc::SYS_move_mount,
                    *from,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    MOVE_MOUNT_SET_GROUP | 4u32,
                ) != 0
                    || libc::mount(none, to.as_ptr(), none, libc::MS_SLAVE, none.cast()) == 0
            }
            Step::SetGroup { from, to } => {
                libc::syscall(
                    libc::SYS_move_mount,
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    MOVE_MOUNT_SET_GROUP,
                ) == 0
            }
        };
        if !ok {
            return false;
        }
    }
    // Drop the old root (umount follows "." to the mount stacked on it).
    p.root < 0
        || (libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0 && libc::chdir(c"/".as_ptr()) == 0)
}

/// move_mount(2): copy the sharing group of the source to the target.
const MOVE_MOUNT_SET_GROUP: u32 = 0x100;

/// The detached tree of the restore under way (one per restore: crest
/// restores one tree at a time).
static TREE: Mutex<Option<Tree>> = Mutex::new(None);
/// Its root descriptor, for path lookups (-1: none, paths are crest's).
static ROOT: AtomicI32 = AtomicI32::new(-1);

/// The next saved tmpfs file's number (above [`DATA_BASE`]).
static NEXT_DATA: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The base of the object ids of saved tmpfs files' data (FILE_DATA
/// records), above any object table.
pub const DATA_BASE: u32 = 0x8000_0000;

struct Built {
    rec: MountRec,
    /// crest's descriptor on the detached mount (None: made by the stub).
    fd: Option<OwnedFd>,
    /// Attached by the stub (it or a parent is made there).
    late: bool,
}

/// A mount tree built detached for the restore.
struct Tree {
    root: OwnedFd,
    mounts: Vec<Built>,
    /// Saved files whose data follows, by object id.
    data: HashMap<u32, tmpfs::Data>,
    /// Data written and flags set ([`finish`]).
    done: bool,
    /// tmpfs mounts whose superblock becomes read-only once filled.
    ro: Vec<OwnedFd>,
    /// Mounts to make slaves of a peer group of crest's namespace again:
    /// (record id, descriptor on a member of the group).
    outside: Vec<(u64, OwnedFd)>,
}

impl Tree {
    fn steps(&self) -> Vec<Step> {
        let mut out = Vec::new();
        let c = |s: &str| CString::new(s).unwrap_or_default();
        for b in &self.mounts {
            let r = &b.rec;
            if !b.late || r.parent == 0 {
                continue;
            }
            let parent_late = self.mounts.iter().any(|p| p.rec.id == r.parent && p.late);
            match &b.fd {
                None if r.how == "stub-bind" => {
                    let src = self.mounts.iter().find(|s| s.rec.id == r.from);
                    let from = src.map_or_else(String::new, |s| join(&s.rec.mount_point, &r.host));
                    out.push(Step::Mount {
                        fstype: CString::default(),
                        source: c(&from),
                        at: c(&r.mount_point),
                        flags: libc::MS_BIND,
                        data: CString::default(),
                    });
                    let f = flags(&r.options)
                        & (libc::MS_RDONLY
                            | libc::MS_NOSUID
                            | libc::MS_NODEV
                            | libc::MS_NOEXEC
                            | libc::MS_NOATIME
                            | libc::MS_NODIRATIME
                            | libc::MS_STRICTATIME);
                    out.push(Step::Propagate {
                        at: c(&r.mount_point),
                        flag: libc::MS_REMOUNT | libc::MS_BIND | f,
                    });
                }
                None => out.push(Step::Mount {
                    fstype: c(&r.fs_type),
                    source: c(&r.source),
                    at: c(&r.mount_point),
                    flags: flags(&r.options),
                    data: c(&sb_data(&r.super_options)),
                }),
                // Attached by crest below its parent, unless the parent
                // is made in the stub.
                Some(fd) if parent_late => out.push(Step::Attach {
                    fd: fd.as_raw_fd(),
                    at: c(&r.mount_point),
                }),
                Some(_) => {}
            }
        }
        for b in self.mounts.iter().filter(|b| b.fd.is_some()) {
            let f = flags(&b.rec.options)
                & (libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC
                    | libc::MS_NOATIME
                    | libc::MS_NODIRATIME
                    | libc::MS_STRICTATIME);
            if f != 0 {
                out.push(Step::Propagate {
                    at: c(&b.rec.mount_point),
                    flag: libc::MS_REMOUNT | libc::MS_BIND | f,
                });
            }
        }
        let recs: Vec<&MountRec> = self.mounts.iter().map(|b| &b.rec).collect();
        let joined: Vec<u64> = self.outside.iter().map(|(id, _)| *id).collect();
        let outside = propagation::external_masters(&recs, &joined);
        if !outside.is_empty() {
            eprintln!(
                "crest: warning: mounts {} were slaves of peer groups outside the tree's mount \
                 namespace: they are restored private (the group is not mounted shared here, \
                 or the namespace is made in a user namespace, which may not join it)",
                outside.join(", ")
            );
        }
        out.extend(propagation::steps(&recs));
        for (id, fd) in &self.outside {
            if let Some(r) = recs.iter().find(|r| r.id == *id) {
                out.push(Step::SlaveOf {
                    from: fd.as_raw_fd(),
                    to: c(&r.mount_point),
                });
            }
        }
        out
    }
}

/// Superblock options without the generic ones mount(2) takes as flags.
fn sb_data(opts: &str) -> String {
    opts.split(',')
        .filter(|o| !matches!(*o, "rw" | "ro"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Paths outside the image the user maps at restore: the container's
/// root (`--root DIR`) and mounts from outside by mount point
/// (`--ext-mount NAME=PATH`).
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    pub root: Option<String>,
    pub ext: HashMap<String, String>,
}

/// While a restore with a mount tree of its own runs: the tree built
/// detached, cleared (and its mounts gone with crest's descriptors)
/// when dropped.
pub struct Restoring(());

impl Drop for Restoring {
    fn drop(&mut self) {
        ROOT.store(-1, Ordering::SeqCst);
        *PREFIX.write().unwrap_or_else(|e| e.into_inner()) = None;
        TREE.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Builds the mount tree of the image's mount namespace, if it has one
/// recorded whole.
pub fn start(ckpt: &Checkpoint, map: &Mapping) -> Result<Option<Restoring>> {
    let whole: Vec<&MntState> = ckpt
        .namespaces
        .table
        .iter()
        .filter_map(|n| match &n.state {
            NsState::Mnt(m) if !m.mounts.is_empty() => Some(m),
            _ => None,
        })
        .collect();
    let st = match whole.as_slice() {
        [] => return Ok(None),
        [st] => *st,
        _ => {
            return Err(Error::Invalid(
                "more than one mount namespace recorded whole: only one is supported".into(),
            ))
        }
    };
    let first = ckpt.processes[0].ns.mnt;
    let in_it = |p: &crate::model::Process| {
        crate::ns::state(&ckpt.namespaces, p.ns.mnt).is_some_and(|s| s == &NsState::Mnt(st.clone()))
    };
    if first.is_none() || !ckpt.processes.iter().all(in_it) {
        return Err(Error::Invalid(
            "a mount namespace recorded whole must hold every process of the tree".into(),
        ));
    }
    // A stub in a user namespace of the tree may not join a peer group of
    // crest's namespace: those mounts are restored private, and the
    // warning of `Tree::steps` names them.
    let join_outside = ckpt.processes[0].ns.user.is_none();
    let tree = build(st, map, join_outside)?;
    let guard = Restoring(());
    ROOT.store(tree.root.as_raw_fd(), Ordering::SeqCst);
    *PREFIX.write().unwrap_or_else(|e| e.into_inner()) =
        Some(format!("/proc/self/fd/{}", tree.root.as_raw_fd()));
    *TREE.lock().unwrap_or_else(|e| e.into_inner()) = Some(tree);
    Ok(Some(guard))
}

fn build(st: &MntState, map: &Mapping, join_outside: bool) -> Result<Tree> {
    let mut deferred_ro = Vec::new();
    let mut built: Vec<Built> = Vec::new();
    let mut data = HashMap::new();
    let mut root = None;
    for r in &st.mounts {
        let what = || format!("restoring mount {} ({})", r.mount_point, r.fs_type);
        let parent = built.iter().position(|b| b.rec.id == r.parent);
        if r.parent != 0 && parent.is_none() {
            return Err(Error::Invalid(format!(
                "mount {}: its parent {} comes later or is missing",
                r.mount_point, r.parent
            )));
        }
        let late_parent = parent.is_some_and(|p| built[p].late);
        // `--root DIR` makes the root a bind of DIR whatever it was (an
        // overlay mounted in the namespace: DIR is a new one of it).
        let how = if r.parent == 0 && map.root.is_some() {
            "host"
        } else {
            r.how.as_str()
        };
        let fd = match how {
            "stub" | "stub-bind" => None,
            "host" => {
                let path = if r.parent == 0 {
                    map.root.clone().unwrap_or_else(|| r.host.clone())
                } else {
                    let name = if r.ext.is_empty() {
                        &r.mount_point
                    } else {
                        &r.ext
                    };
                    map.ext.get(name).cloned().unwrap_or_else(|| r.host.clone())
                };
                if path.is_empty() {
                    return Err(Error::msg(format!(
                        "{}: a mount from outside named {}; map it with --ext-mount {}=PATH",
                        what(),
                        if r.ext.is_empty() {
                            &r.mount_point
                        } else {
                            &r.ext
                        },
                        if r.ext.is_empty() {
                            &r.mount_point
                        } else {
                            &r.ext
                        },
                    )));
                }
                Some(m::clone_tree(None, &path).context(|| {
                    format!(
                        "{}: the mount from outside {} (map it with --ext-mount {}=PATH)",
                        what(),
                        path,
                        r.mount_point
                    )
                })?)
            }
            "inside" => {
                let Some(src) = built.iter().find(|b| b.rec.id == r.from) else {
                    return Err(Error::Invalid(format!(
                        "mount {}: its source mount {} is missing",
                        r.mount_point, r.from
                    )));
                };
                let Some(sfd) = &src.fd else {
                    return Err(Error::Invalid(format!(
                        "mount {}: a bind of a {} mount",
                        r.mount_point, src.rec.fs_type
                    )));
                };
                Some(m::clone_tree(Some(sfd.as_fd()), &r.host).context(what)?)
            }
            "new" => {
                let fs = m::FsContext::open(&r.fs_type).context(what)?;
                fs.set("source", Some(&r.source)).context(what)?;
                for o in r.super_options.split(',').filter(|o| !o.is_empty()) {
                    let (k, v) = match o.split_once('=') {
                        Some((k, v)) => (k, Some(v)),
                        None => (o, None),
                    };
                    if matches!(k, "rw" | "seclabel") {
                        continue;
                    }
                    if k == "ro" && r.fs_type == "tmpfs" {
                        // Filled first; the mount is made read-only by
                        // its per-mount flag (see `Tree::steps`).
                        continue;
                    }
                    fs.set(k, v).context(what)?;
                }
                if r.fs_type == "devpts" && !r.super_options.contains("newinstance") {
                    // Harmless on current kernels (always a new instance).
                    let _ = ();
                }
                let fd = fs.mount(0).context(what)?;
                if r.fs_type == "tmpfs" {
                    fill(&fd, &r.files, &mut data).context(what)?;
                }
                if r.fs_type == "tmpfs" && r.super_options.split(',').any(|o| o == "ro") {
                    // Read-only once filled (its saved data is written
                    // through crest's descriptors, opened meanwhile).
                    deferred_ro.push(fd.try_clone().context(what)?);
                }
                Some(fd)
            }
            other => {
                return Err(Error::Invalid(format!(
                    "mount {}: unknown way {other:?}",
                    r.mount_point
                )))
            }
        };
        let late = fd.is_none() || late_parent;
        if let (Some(fd), Some(p)) = (&fd, parent) {
            if !late {
                let pfd = built[p].fd.as_ref().expect("not late");
                let rel = below(&r.mount_point, &built[p].rec.mount_point).ok_or_else(|| {
                    Error::Invalid(format!(
                        "mount {} is not below its parent {}",
                        r.mount_point, built[p].rec.mount_point
                    ))
                })?;
                m::attach(fd.as_fd(), pfd.as_fd(), &rel).context(what)?;
            }
        }
        if r.parent == 0 {
            match fd {
                Some(f) => root = Some(f.try_clone().context(what)?),
                None => return Err(Error::Invalid(format!("root mount of type {}", r.fs_type))),
            }
            built.push(Built {
                rec: r.clone(),
                fd: root
                    .as_ref()
                    .map(|f| f.try_clone())
                    .transpose()
                    .context(what)?,
                late: false,
            });
            continue;
        }
        built.push(Built {
            rec: r.clone(),
            fd,
            late,
        });
    }
    let Some(root) = root else {
        return Err(Error::Invalid("the mount tree has no root mount".into()));
    };
    let outside = built
        .iter()
        .filter(|_| join_outside)
        .filter_map(|b| Some((b.rec.id, propagation::open_outside_master(&b.rec)?)))
        .collect();
    Ok(Tree {
        root,
        mounts: built,
        data,
        done: false,
        ro: deferred_ro,
        outside,
    })
}

/// Once the saved data is written, before anything is opened through
/// the tree: the files' times.
pub fn finish() -> Result<()> {
    let mut t = TREE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(t) = t.as_mut() else { return Ok(()) };
    if t.done {
        return Ok(());
    }
    t.done = true;
    tmpfs::finish_data(std::mem::take(&mut t.data))?;
    // The saved files are closed: read-only superblocks now.
    for fd in t.ro.drain(..) {
        let fs = m::FsContext::pick(fd.as_fd(), "tmpfs")?;
        fs.set("ro", None)?;
        fs.reconfigure()?;
    }
    // The mounts' flags are set by the process creating the namespace
    // (a bind remount, see `Tree::steps`): mount_setattr refuses mounts
    // attached to a detached tree here.
    Ok(())
}

/// Recreates the saved files of a tmpfs (data to come: kept open in
/// `data` by object id).
fn fill(mnt: &OwnedFd, files: &[TreeFile], data: &mut HashMap<u32, tmpfs::Data>) -> Result<()> {
    tmpfs::restore_files(mnt, files, data)
}

/// Writes a FILE_DATA record of a saved tmpfs file; false: not one.
pub fn write_data(object: u64, offset: u64, bytes: &[u8]) -> Result<bool> {
    if object < DATA_BASE as u64 {
        return Ok(false);
    }
    let t = TREE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fd) = t.as_ref().and_then(|t| t.data.get(&(object as u32))) else {
        return Err(Error::Invalid(format!(
            "file data of object {object}: no saved tmpfs file has that id"
        )));
    };
    tmpfs::write_at(&fd.0, offset, bytes)?;
    Ok(true)
}

/// Where paths of the tree are seen from crest while a tree with a
/// mount namespace recorded whole is dumped ("/proc/PID/root") or
/// restored ("/proc/self/fd/ROOT": the detached tree).
static PREFIX: std::sync::RwLock<Option<String>> = std::sync::RwLock::new(None);

/// `path` of the tree as crest reaches it (itself when the tree sees
/// crest's mounts).
pub fn host_path(path: &str) -> std::borrow::Cow<'_, str> {
    let p = PREFIX.read().unwrap_or_else(|e| e.into_inner());
    match p.as_deref() {
        Some(pre) if path.starts_with('/') && !path.starts_with("/proc/self/") => {
            format!("{pre}{path}").into()
        }
        _ => path.into(),
    }
}

/// Before the files of a tree whose root is `pid` are collected: when
/// its mount namespace is recorded whole, its paths are looked up
/// through its root.
pub fn prepare_dump(pid: Option<i32>) -> Result<()> {
    let Some(pid) = pid else { return Ok(()) };
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    let mut pre = PREFIX.write().unwrap_or_else(|e| e.into_inner());
    *pre = None;
    if ns(pid) == ns(std::process::id() as i32) {
        return Ok(());
    }
    let mine = proc::read_mountinfo(std::process::id() as i32)?;
    let theirs = proc::read_mountinfo(pid)?;
    let copy = theirs
        .iter()
        .all(|m| m.fs_type == "proc" || mine.iter().any(|c| same(c, m)));
    if !copy {
        *pre = Some(format!("/proc/{pid}/root"));
    }
    Ok(())
}

/// Opens `path` of the restored tree when a tree is being restored
/// (`None`: paths are crest's).  Paths of crest's own /proc/self are
/// crest's.
pub fn open_rooted(path: &str, flags: i32) -> Option<Result<OwnedFd>> {
    let root = ROOT.load(Ordering::SeqCst);
    if root < 0 || !path.starts_with('/') || path.starts_with("/proc/self/") {
        return None;
    }
    // SAFETY: the tree's root descriptor stays open while ROOT is set
    // (cleared before the tree is dropped); only borrowed here.
    let root = unsafe { std::os::fd::BorrowedFd::borrow_raw(root) };
    Some(m::open_in_root(root, path, flags, 0).map_err(Into::into))
}
