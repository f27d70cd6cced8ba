//! Namespaces: which ones a tree lives in, what they hold, and how
//! restore recreates them.
//!
//! A namespace is identified by the inode of its /proc/PID/ns/KIND link.
//! Dump looks at every process of the tree and each namespace kind crest
//! handles (PID, UTS, IPC, mount): a process in crest's own namespace records
//! nothing; otherwise the namespace gets an entry in the checkpoint's
//! table (with its state: the UTS names, the IPC objects) the first time
//! a process of the tree is seen in it, in tree order (parents first).
//! That first process is the one restore creates it with: its parent
//! forks it with the CLONE_NEW* flag, and every descendant in the same
//! namespace inherits it.  So the shapes restore can rebuild are those in
//! which each namespace is entered by exactly one process of the tree and
//! its members are that process's descendants (what unshare and container
//! runtimes make); a process that joined a namespace another member also
//! reached from outside (setns), or whose parent is in a namespace it is
//! not a child of, is refused by name.  The kinds crest does not handle
//! are refused when they differ from crest's.
//!
//! - [`pid`]: PID namespaces (the PIDs of every task at each level).
//! - [`uts`]: host and domain names.
//! - [`ipc`]: System V semaphores, message queues and shared memory of
//!   a private IPC namespace.
//! - [`mnt`]: mount namespaces that copy crest's, with proc mounted again.
//! - [`net`]: network namespaces (links, addresses, routes, sysctls);
//!   made by crest before the tree's sockets, joined by the stub.

pub mod cgroup;
pub mod init;
pub mod ipc;
pub mod mnt;
pub mod mqueue;
pub mod net;
pub mod owned_net;
pub mod pid;
pub mod time;
pub mod user;
pub mod uts;

use crate::error::{Context, Result};
use crate::model::{Checkpoint, Namespace, Namespaces, NsId, NsState, ProcNs, Process};
use crate::restore::stub::StubTree;
use crate::Obstacle;
use crest_sys::proc;

/// The kinds crest recreates (the user namespace first: it owns the
/// others, see [`user`]).
pub const HANDLED: [&str; 8] = ["user", "pid", "uts", "ipc", "mnt", "net", "time", "cgroup"];

/// The CLONE_NEW* flag of a handled kind (none for "net": the stub
/// joins the namespace crest made, see [`net`]).
pub fn clone_flag(kind: &str) -> u64 {
    (match kind {
        "pid" => libc::CLONE_NEWPID,
        "uts" => libc::CLONE_NEWUTS,
        "ipc" => libc::CLONE_NEWIPC,
        "mnt" => libc::CLONE_NEWNS,
        "user" => libc::CLONE_NEWUSER,
        _ => 0,
    }) as u64
}

/// Obstacles of one process visible without stopping it: a namespace of
/// a kind crest does not handle that is not crest's.
pub fn preflight(pid: i32, obs: &mut Vec<Obstacle>) -> Result<()> {
    let mine = proc::read_ns(std::process::id() as i32)?;
    let theirs = read_ns_checked(pid)?;
    for (name, ino) in &theirs {
        let handled = HANDLED.contains(&name.as_str())
            || name == "pid_for_children"
            || name == "time_for_children";
        let Some((_, m)) = mine.iter().find(|(n, _)| n == name) else {
            continue;
        };
        if *m != *ino && !handled {
            obs.push(Obstacle {
                pid,
                object: format!("{name} namespace"),
                reason: format!(
                    "the process is in another {name} namespace than crest ({name}:[{ino}]); \
                     only user, PID, UTS, IPC, mount, network, time and cgroup namespaces are \
                     supported yet"
                ),
            });
        }
    }
    // A PID namespace unshared for its children: see `pid::for_children`.
    let get = |n: &str| theirs.iter().find(|(k, _)| k == n).map(|x| x.1);
    if let (Some(own), Some(kids)) = (get("time"), get("time_for_children")) {
        if own != kids {
            obs.push(Obstacle {
                pid,
                object: "time namespace".into(),
                reason: format!(
                    "the process unshared a new time namespace (time:[{kids}]) for its future \
                     children without entering it; only a namespace's members can be \
                     checkpointed"
                ),
            });
        }
    }
    Ok(())
}

fn read_ns_checked(pid: i32) -> Result<Vec<(String, u64)>> {
    proc::read_ns(pid).map_err(|e| match e.errno() {
        Some(libc::EACCES) | Some(libc::EPERM) => crate::Error::msg(format!(
            "permission denied: only pid {pid}'s owner or root may checkpoint it \
             (the kernel's ptrace access check)"
        )),
        _ => e.into(),
    })
}

/// Collects the namespaces of a frozen tree: the table, and per process
/// (same order as `procs`: parents first) where it is.  `ppids` gives each
/// process's parent.  Obstacles are pushed for shapes restore cannot make.
/// The shared memory segments of private IPC namespaces go to `objects`
/// and `data` (after the tree's mappings: see [`ipc::collect`]).
pub fn collect(
    procs: &[(i32, Vec<i32>)],
    ppids: &std::collections::HashMap<i32, i32>,
    opts: &crate::DumpOptions,
    objects: &mut crate::objects::ObjectTable,
    data: &mut Vec<crate::files::DataSource>,
    obstacles: &mut Vec<Obstacle>,
) -> Result<(Namespaces, Vec<ProcNs>)> {
    let mut mine = proc::read_ns(std::process::id() as i32)?;
    net::fix_home(&mut mine);
    let mut table = Namespaces::default();
    // (kind, inode) of each table entry.
    let mut known: Vec<(&str, u64)> = Vec::new();
    let ino_of = |l: &[(String, u64)], kind: &str| l.iter().find(|(n, _)| n == kind).map(|x| x.1);
    let my_user = ino_of(&mine, "user").unwrap_or(0);
    let mut out: Vec<ProcNs> = Vec::new();
    // Each process's PID namespace and the one for its children (inodes).
    let mut pid_inos: Vec<(Option<u64>, Option<u64>)> = Vec::new();
    for (i, (pid, tids)) in procs.iter().enumerate() {
        let pid = *pid;
        let theirs = read_ns_checked(pid)?;
        pid_inos.push((ino_of(&theirs, "pid"), ino_of(&theirs, "pid_for_children")));
        let parent = procs[..i].iter().position(|q| q.0 == ppids[&pid]);
        let mut me = pid::collect_ids(pid, tids)?;
        for kind in HANDLED {
            let ino = |l: &[(String, u64)]| l.iter().find(|(n, _)| n == kind).map(|x| x.1);
            let (Some(m), Some(t)) = (ino(&mine), ino(&theirs)) else {
                continue;
            };
            let slot = if m == t {
                None
            } else {
                Some(match known.iter().position(|k| *k == (kind, t)) {
                    Some(j) => j as NsId,
                    None => {
                        let id = table.table.len() as NsId;
                        let state = match kind {
                            "pid" => NsState::Pid {
                                level: me.pids.len() as u32,
                                last_pid: (!opts.checking).then(|| pid::last_pid(pid)).flatten(),
                            },
                            "uts" => uts::collect(pid)?,
                            "mnt" => mnt::collect(pid, &opts.external_mounts, obstacles)?,
                            "net" if opts.external_net => net::external(),
                            "net" => net::collect(pid, obstacles)?,
                            "time" => time::collect(pid)?,
                            "cgroup" => cgroup::collect(pid, obstacles)?,
                            "user" => {
                                let users: Vec<(u64, NsId)> = known
                                    .iter()
                                    .enumerate()
                                    .filter(|(_, k)| k.0 == "user")
                                    .map(|(j, k)| (k.1, j as NsId))
                                    .collect();
                                user::collect(pid, my_user, &users, obstacles)?
                            }
                            _ => {
                                let tree: Vec<i32> = procs.iter().map(|p| p.0).collect();
                                ipc::collect(pid, &tree, objects, data, obstacles)?
                            }
                        };
                        let their_user = ino_of(&theirs, "user").unwrap_or(my_user);
                        let mut state = state;
                        if user::check_owner(pid, kind, their_user, my_user, obstacles)? {
                            owned_net::collect(pid, &mut table, me.user, &mut state, obstacles)?;
                        }
                        table.table.push(Namespace { id, ino: t, state });
                        known.push((kind, t));
                        id
                    }
                })
            };
            set(&mut me, kind, slot);
            let from_parent = parent.and_then(|j| get(&out[j], kind));
            if slot != from_parent {
                // `pid` enters this namespace: it must be new here.
                let first = slot.is_some_and(|s| !out.iter().any(|q| get(q, kind) == Some(s)));
                if slot.is_none() || !first {
                    obstacles.push(Obstacle {
                        pid,
                        object: format!("{kind} namespace"),
                        reason: format!(
                            "the process is in another {kind} namespace than its parent, \
                             one that another process of the tree entered first (setns); \
                             restore can only recreate namespaces each entered by one process"
                        ),
                    });
                }
                if kind == "pid" {
                    let plen = parent.map_or(0, |j| out[j].pids.len());
                    pid::check_init(pid, &me, plen, obstacles);
                }
            }
        }
        out.push(me);
    }
    pid::for_children(procs, ppids, &pid_inos, &mut out, obstacles);
    net::check_shape(procs, &table, &out, obstacles);
    let named: Vec<(i32, ProcNs)> = procs.iter().map(|p| p.0).zip(out.iter().cloned()).collect();
    let forks = |i: usize| {
        procs[i].1.len() > 1 || procs.iter().any(|q| ppids.get(&q.0) == Some(&procs[i].0))
    };
    let parent = |i: usize| {
        procs
            .iter()
            .position(|q| ppids.get(&procs[i].0) == Some(&q.0))
    };
    user::check_forks(&table, &named, &forks, &parent, obstacles);
    Ok((table, out))
}

/// The namespace of `kind` a process is in (`None`: crest's).
pub fn get(p: &ProcNs, kind: &str) -> Option<NsId> {
    match kind {
        "pid" => p.pid,
        "uts" => p.uts,
        "ipc" => p.ipc,
        "mnt" => p.mnt,
        "net" => p.net,
        "time" => p.time,
        "cgroup" => p.cgroup,
        "user" => p.user,
        _ => None,
    }
}

fn set(p: &mut ProcNs, kind: &str, v: Option<NsId>) {
    match kind {
        "pid" => p.pid = v,
        "uts" => p.uts = v,
        "ipc" => p.ipc = v,
        "mnt" => p.mnt = v,
        "net" => p.net = v,
        "time" => p.time = v,
        "cgroup" => p.cgroup = v,
        "user" => p.user = v,
        _ => {}
    }
}

/// Whether process `i` of the image enters a new namespace of `kind`
/// (one its parent, or crest for the root, is not in).
pub fn enters(procs: &[Process], i: usize, kind: &str) -> bool {
    let p = &procs[i];
    let parent = procs[..i].iter().find(|q| q.pid == p.ppid);
    get(&p.ns, kind) != parent.and_then(|q| get(&q.ns, kind))
}

/// The CLONE_NEW* flags process `i` of the image is created with: the
/// kinds in which it is in another namespace than its parent (crest, for
/// the root).  Time and cgroup namespaces are not among them: the
/// process makes those itself (see [`time`], [`cgroup`]).
pub fn new_ns_flags(procs: &[Process], i: usize) -> u64 {
    let p = &procs[i];
    let parent = procs[..i].iter().find(|q| q.pid == p.ppid);
    HANDLED
        .iter()
        .filter(|k| get(&p.ns, k) != parent.and_then(|q| get(&q.ns, k)))
        .map(|k| clone_flag(k))
        .fold(0, |a, b| a | b)
}

/// Checks the namespace part of an image before anything is created.
pub fn validate(ns: &Namespaces, procs: &[Process]) -> Result<()> {
    let bad = |m: String| Err(crate::Error::Invalid(m));
    for (i, n) in ns.table.iter().enumerate() {
        if n.id as usize != i {
            return bad(format!("namespace {} out of order (expected {i})", n.id));
        }
        // The kernel's PID_MAX_LIMIT on 64-bit machines.
        if let NsState::Pid {
            last_pid: Some(v), ..
        } = n.state
        {
            if !(1..=4 * 1024 * 1024).contains(&v) {
                return bad(format!("PID namespace {i}: last PID {v} is not a PID"));
            }
        }
    }
    for (i, p) in procs.iter().enumerate() {
        for kind in HANDLED {
            let Some(id) = get(&p.ns, kind) else { continue };
            let ok = matches!(
                (kind, ns.table.get(id as usize).map(|n| &n.state)),
                ("pid", Some(NsState::Pid { .. }))
                    | ("uts", Some(NsState::Uts { .. }))
                    | ("ipc", Some(NsState::Ipc(_)))
                    | ("mnt", Some(NsState::Mnt(_)))
                    | ("net", Some(NsState::Net(_)))
                    | ("time", Some(NsState::Time(_)))
                    | ("cgroup", Some(NsState::Cgroup(_)))
                    | ("user", Some(NsState::User(_)))
            );
            if !ok {
                return bad(format!(
                    "pid {}: its {kind} namespace {id} is not a {kind} namespace of the image",
                    p.pid
                ));
            }
        }
        pid::validate(procs, i)?;
        if enters(procs, i, "user") && (p.shares_fs_with.is_some() || p.shares_files_with.is_some())
        {
            return bad(format!(
                "pid {}: it enters a user namespace and shares its parent's fs or files \
                 (not supported)",
                p.pid
            ));
        }
        let parent = procs[..i].iter().find(|q| q.pid == p.ppid);
        if p.ns.net.is_none() && parent.is_some_and(|q| q.ns.net.is_some()) {
            return bad(format!(
                "pid {}: in crest's network namespace below a process in another one",
                p.pid
            ));
        }
    }
    for n in &ns.table {
        if let NsState::Time(t) = &n.state {
            time::validate(t)?;
        }
    }
    Ok(())
}

/// Checks the System V segments the image's IPC namespaces list.
pub fn validate_ipc(ckpt: &Checkpoint) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let objects = |id| ckpt.object(id).cloned();
    for n in &ckpt.namespaces.table {
        if let NsState::Ipc(st) = &n.state {
            ipc::validate(st, &objects, &mut seen)?;
        }
    }
    Ok(())
}

/// The network namespace process `i` of the image joins as it starts
/// (it is in another one than its parent), if any.
pub fn joins_net(procs: &[Process], i: usize) -> Option<NsId> {
    let p = &procs[i];
    let parent = procs[..i].iter().find(|q| q.pid == p.ppid);
    p.ns.net
        .filter(|_| parent.and_then(|q| q.ns.net) != p.ns.net)
}

/// The namespace state of `id`.
pub fn state(ns: &Namespaces, id: Option<NsId>) -> Option<&NsState> {
    id.and_then(|i| ns.table.get(i as usize)).map(|n| &n.state)
}

/// Fills the namespaces the new stubs created, before any of them runs
/// (and before they attach shared memory): the System V objects of each
/// private IPC namespace, and its POSIX message queues unless it was made
/// with them before the tree (`unlinked.early_ipc`).
pub fn restore_after_spawn(
    ckpt: &Checkpoint,
    tree: &StubTree,
    unlinked: &mut crate::files::UnlinkedFiles,
) -> Result<()> {
    let hosts: Vec<i32> = tree.procs.iter().map(|p| p.pid).collect();
    pid::restore_cursors(ckpt, &hosts)?;
    let objects = |id| ckpt.object(id).cloned();
    for n in &ckpt.namespaces.table {
        let NsState::Ipc(st) = &n.state else { continue };
        let first = ckpt.processes.iter().position(|p| p.ns.ipc == Some(n.id));
        if let (Some(i), Some(sp)) = (first, first.and_then(|i| tree.procs.get(i))) {
            crate::fault::point("restore: ipc namespace")?;
            ipc::restore(sp.pid, st, &objects, unlinked.sysv())
                .context(|| format!("restoring pid {}", ckpt.processes[i].pid))?;
            if !unlinked.early_ipc.contains(n.id) {
                mqueue::restore_late(sp.pid, st)
                    .context(|| format!("restoring pid {}", ckpt.processes[i].pid))?;
            }
        }
    }
    Ok(())
}
