//! POSIX message queues: those of a private IPC namespace of the tree,
//! and descriptors on queues.
//!
//! Kept:
//! - every queue of a private IPC namespace of the tree, open or not:
//!   its name, mode, owner, `mq_maxmsg`, `mq_msgsize` and every queued
//!   message with its priority.  Dump lists the queues through a
//!   detached mqueue mount made (fsopen "mqueue") on a thread of crest
//!   that joined the namespace: that mount shows the namespace's own
//!   superblock.  Messages can be read only by mq_receive, which takes
//!   them: while the tree is frozen, dump takes them all (highest
//!   priority first, oldest first among equals) and sends them straight
//!   back in that order with their priorities, which gives the same
//!   receive order again.  Restore creates each queue with its
//!   attributes, sends its messages the same way, then gives it its
//!   owner and mode.
//! - descriptors on queues, reopened by name with the description's
//!   access mode and O_NONBLOCK (one description shared by several
//!   descriptors stays one, like any open file).  A queue of a private
//!   namespace of the tree is reopened in the restored namespace; a queue
//!   of crest's own IPC namespace is the machine's, like a file on disk:
//!   it is reopened by name and must exist at restore (its messages are
//!   not the tree's and stay where they are).
//!
//! Refused (by dump and check, before anything in the tree changes):
//! - a queue with an mq_notify registration, in a private namespace of
//!   the tree (any registration) or held by the tree in crest's
//!   namespace (one made by a process of the tree).  The registration's
//!   sigev_value cannot be read from userspace, so it could not be made
//!   again; and taking and re-sending the messages would fire it (the
//!   first message into an empty queue notifies, and ends the
//!   registration).
//! - a descriptor on a queue unlinked while open: it has no name left to
//!   be reopened by, and mq_open could only make another queue.
//! - a descriptor on a queue of an IPC namespace that is neither its
//!   holder's nor crest's (one passed over a socket, say).
//! - descriptors on queues of a private IPC namespace that a process of
//!   the tree enters together with a user namespace of its own: crest
//!   opens every descriptor before the tree's processes exist, and only
//!   an IPC namespace owned by crest's user namespace can be made that
//!   early (the queues of such a namespace themselves are kept: they are
//!   made once the namespace exists).
//!
//! Not kept: the queues' access and change times, and the user whose
//! RLIMIT_MSGQUEUE a queue is charged to (crest, at restore).

use crate::error::{Context, Error, Result};
use crate::model::{Checkpoint, IpcState, Namespaces, NsId, NsState, ObjectKind, OpenTarget};
use crate::model::{PosixQueue, ProcNs};
use crate::objects::ObjectTable;
use crate::Obstacle;
use crest_sys::mqueue;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

/// What dump learns about the queues of one IPC namespace.
pub struct NsQueues {
    pub queues: Vec<PosixQueue>,
    /// Why they cannot be checkpointed (nothing was taken then).
    pub refused: Vec<String>,
}

/// Why a registration is refused; `drained`: the queue's messages would
/// be taken and sent back (a queue of a private namespace of the tree).
fn describe_notify(s: &mqueue::Status, drained: bool) -> String {
    let how = match s.notify {
        0 => format!("SIGEV_SIGNAL, signal {}", s.signo),
        1 => "SIGEV_NONE".into(),
        2 => "SIGEV_THREAD".into(),
        n => format!("sigev_notify {n}"),
    };
    let why = if drained {
        "and reading the queue's messages (only mq_receive can, taking them) and sending them \
         back would fire it"
    } else {
        "so the restored process could not be registered again"
    };
    format!(
        "an mq_notify registration ({how}) by pid {} cannot be checkpointed: its sigev_value \
         cannot be read from userspace, {why}",
        s.notify_pid
    )
}

/// The queues of the calling thread's IPC namespace (run on a thread
/// that joined it, while every process that could use them is frozen).
/// Each queue's messages are taken and sent back in the same order; when
/// any queue cannot be kept, none is touched.
pub fn read_own_ns() -> crest_sys::Result<NsQueues> {
    let mnt = mqueue::mount_own_ns()?;
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for name in mqueue::list(mnt.as_fd())? {
        let (mode, uid, gid) = mqueue::stat_at(mnt.as_fd(), &name)?;
        let fd = mqueue::open(&name, libc::O_RDWR | libc::O_NONBLOCK)?;
        let attr = mqueue::getattr(fd.as_fd())?;
        let st = mqueue::status(fd.as_fd())?;
        if st.notify_pid != 0 {
            refused.push(format!(
                "POSIX message queue {name}: {}",
                describe_notify(&st, true)
            ));
        }
        open.push((
            PosixQueue {
                name,
                mode: mode & 0o7777,
                uid,
                gid,
                maxmsg: attr.maxmsg,
                msgsize: attr.msgsize,
                messages: Vec::new(),
            },
            fd,
            attr.curmsgs,
            st.qsize,
        ));
    }
    if !refused.is_empty() {
        return Ok(NsQueues {
            queues: Vec::new(),
            refused,
        });
    }
    let mut queues = Vec::new();
    for (mut q, fd, count, qsize) in open {
        let mut err = None;
        while q.messages.len() < count as usize {
            match mqueue::receive_now(fd.as_fd(), q.msgsize as usize) {
                Ok(Some((text, prio))) => q.messages.push((prio, text)),
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        // Back in the order taken: the same receive order again.
        for (prio, text) in &q.messages {
            mqueue::send_now(fd.as_fd(), text, *prio)?;
        }
        if let Some(e) = err {
            return Err(e);
        }
        let after = mqueue::status(fd.as_fd())?;
        let taken: u64 = q.messages.iter().map(|m| m.1.len() as u64).sum();
        if q.messages.len() as i64 != count || after.qsize != qsize || taken != qsize {
            return Err(crest_sys::Error::parse(
                q.name.clone(),
                format!(
                    "the queue changed while it was read ({count} messages of {qsize} bytes \
                     before, {} of {taken} bytes read)",
                    q.messages.len()
                ),
            ));
        }
        queues.push(q);
    }
    Ok(NsQueues {
        queues,
        refused: Vec::new(),
    })
}

/// Makes `queues` in the calling thread's (new, empty) IPC namespace.
fn create_in_own_ns(queues: &[PosixQueue]) -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    // The queues are charged to crest's user: lift its byte limit while
    // they are made (the kernel checks it only at creation).
    let old = getrlimit(Resource::Msgqueue);
    let unlimited = rustix::process::Rlimit {
        current: None,
        maximum: None,
    };
    let lifted = setrlimit(Resource::Msgqueue, unlimited).is_ok();
    let r = (|| -> Result<()> {
        for q in queues {
            let fd = mqueue::create(&q.name, 0o600, q.maxmsg, q.msgsize)?;
            for (prio, text) in &q.messages {
                mqueue::send_now(fd.as_fd(), text, *prio)
                    .context(|| format!("refilling POSIX message queue {}", q.name))?;
            }
            std::os::unix::fs::fchown(&fd, Some(q.uid), Some(q.gid))
                .context(|| format!("giving POSIX message queue {} its owner", q.name))?;
            rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(q.mode))
                .map_err(|e| crest_sys::Error::io(format!("fchmod {}", q.name), e.into()))?;
        }
        Ok(())
    })();
    if lifted {
        let _ = setrlimit(Resource::Msgqueue, old);
    }
    r
}

/// The IPC namespaces of the image made before the tree (so that the
/// descriptors on their queues can be opened with the others), by id.
#[derive(Default)]
pub struct Early {
    made: HashMap<NsId, OwnedFd>,
}

impl Early {
    /// The descriptor on namespace `id`, if it was made early.
    pub fn get(&self, id: NsId) -> Option<&OwnedFd> {
        self.made.get(&id)
    }

    pub fn contains(&self, id: NsId) -> bool {
        self.made.contains_key(&id)
    }
}

/// Whether namespace `id` can be made before the tree: the process that
/// enters it is in crest's user namespace.
fn makeable_early(procs: &[ProcNs], id: NsId) -> bool {
    procs
        .iter()
        .find(|p| p.ipc == Some(id))
        .is_some_and(|p| p.user.is_none())
}

/// Checks, before anything is made, that every queue descriptor of the
/// image names an IPC namespace of the image that restore makes before
/// the tree, and that queue names are names.
pub fn validate(ckpt: &Checkpoint) -> Result<()> {
    let procs: Vec<ProcNs> = ckpt.processes.iter().map(|p| p.ns.clone()).collect();
    let bad = |m: String| Err(Error::Invalid(m));
    let is_name =
        |n: &str| n.len() > 1 && n.starts_with('/') && !n[1..].contains('/') && !n.contains('\0');
    for n in &ckpt.namespaces.table {
        if let NsState::Ipc(st) = &n.state {
            if let Some(q) = st.mqueues.iter().find(|q| !is_name(&q.name)) {
                return bad(format!(
                    "IPC namespace {}: bad queue name {:?}",
                    n.id, q.name
                ));
            }
        }
    }
    for o in &ckpt.objects {
        let ObjectKind::Open(f) = &o.kind else {
            continue;
        };
        let OpenTarget::PosixMq { name, ipc_ns } = &f.target else {
            continue;
        };
        if !is_name(name) {
            return bad(format!("object {}: bad queue name {name:?}", o.id));
        }
        let Some(id) = *ipc_ns else { continue };
        let queues = match ckpt.namespaces.table.get(id as usize).map(|n| &n.state) {
            Some(NsState::Ipc(st)) => &st.mqueues,
            _ => {
                return bad(format!(
                    "object {}: {id} is not an IPC namespace of the image",
                    o.id
                ))
            }
        };
        if !queues.iter().any(|q| &q.name == name) {
            return bad(format!(
                "object {}: IPC namespace {id} of the image has no queue {name}",
                o.id
            ));
        }
        if !makeable_early(&procs, id) {
            return bad(format!(
                "object {}: a descriptor on queue {name} of IPC namespace {id}, which a process \
                 enters together with a user namespace (not supported)",
                o.id
            ));
        }
    }
    Ok(())
}

/// Makes, before the tree, each private IPC namespace of the image with
/// POSIX queues that a process of crest's user namespace enters, with its
/// queues in it (the processes join it as they start).
pub fn prepare(ckpt: &Checkpoint) -> Result<Early> {
    let procs: Vec<ProcNs> = ckpt.processes.iter().map(|p| p.ns.clone()).collect();
    let mut early = Early::default();
    for n in &ckpt.namespaces.table {
        let NsState::Ipc(st) = &n.state else { continue };
        if st.mqueues.is_empty() || !makeable_early(&procs, n.id) {
            continue;
        }
        crate::fault::point("restore: ipc namespace")?;
        let fd = crest_sys::ns::new_ipc()?;
        crest_sys::ns::run_in_fd(&fd, libc::CLONE_NEWIPC, || create_in_own_ns(&st.mqueues))?
            .context(|| {
                format!(
                    "recreating the POSIX message queues of IPC namespace {}",
                    n.id
                )
            })?;
        early.made.insert(n.id, fd);
    }
    Ok(early)
}

/// Makes the queues of a namespace that was not made early, in the
/// namespace of restored process `host` (before any process runs).
pub fn restore_late(host: i32, st: &IpcState) -> Result<()> {
    if st.mqueues.is_empty() {
        return Ok(());
    }
    crest_sys::ns::run_in(host, "ipc", libc::CLONE_NEWIPC, || {
        create_in_own_ns(&st.mqueues)
    })?
    .context(|| format!("recreating the POSIX message queues of pid {host}'s IPC namespace"))
}

/// Opens the description `flags` of queue `name`: in the early-made
/// namespace `ipc_ns`, or in crest's own.
pub fn open(name: &str, ipc_ns: Option<NsId>, flags: u32, early: &Early) -> Result<OwnedFd> {
    let flags = flags as i32;
    match ipc_ns {
        None => mqueue::open(name, flags).map_err(|e| {
            if e.errno() == Some(libc::ENOENT) {
                Error::Incompatible(format!(
                    "POSIX message queue {name} does not exist: it was a queue of crest's IPC \
                     namespace (the machine's, reopened by name) at the checkpoint"
                ))
            } else {
                e.into()
            }
        }),
        Some(id) => {
            let Some(ns) = early.get(id) else {
                return Err(Error::Invalid(format!(
                    "POSIX message queue {name}: IPC namespace {id} of the image was not made \
                     before the tree"
                )));
            };
            Ok(crest_sys::ns::run_in_fd(ns, libc::CLONE_NEWIPC, || {
                mqueue::open(name, flags)
            })??)
        }
    }
}

/// Why a descriptor on queue `name` of crest's namespace could not be
/// reopened here (restore's preflight), if it could not.
pub fn host_problem(name: &str) -> Option<String> {
    match mqueue::open(name, libc::O_RDONLY | libc::O_NONBLOCK) {
        Ok(_) => None,
        Err(e) if e.errno() == Some(libc::ENOENT) => Some(format!(
            "POSIX message queue {name} (of crest's IPC namespace, reopened by name) does \
             not exist"
        )),
        Err(_) => None,
    }
}

/// Dump's record of the queue descriptors met, to be tied to their
/// namespaces once those are known.
#[derive(Default)]
pub struct FdQueues {
    /// mqueue superblock device of an IPC namespace, by its inode.
    devs: HashMap<u64, u64>,
    /// (object, inode of its IPC namespace, holder pid, fd, name).
    private: Vec<(u32, u64, i32, i32, String)>,
    /// The last one collected, until its object is known.
    pending: Option<(u64, i32, i32, String)>,
}

fn ns_dev(pid: i32) -> Result<(u64, u64)> {
    let ino = crest_sys::ns::ino(&crest_sys::ns::open(pid, "ipc")?)?;
    let dev = crest_sys::ns::run_in(pid, "ipc", libc::CLONE_NEWIPC, || {
        mqueue::mount_own_ns().and_then(|m| mqueue::dev(m.as_fd()))
    })??;
    Ok((ino, dev))
}

impl FdQueues {
    fn dev_of(&mut self, pid: i32) -> Result<(u64, u64)> {
        let ino = crest_sys::ns::ino(&crest_sys::ns::open(pid, "ipc")?)?;
        if let Some(&d) = self.devs.get(&ino) {
            return Ok((ino, d));
        }
        let (ino, dev) = ns_dev(pid)?;
        self.devs.insert(ino, dev);
        Ok((ino, dev))
    }
}

/// The target of descriptor `fd` of `pid`, a queue (`link`: its
/// /proc/PID/fd link, `dev`/`nlink`: its stat); `Err(reason)` when
/// refused.  `tree`: the tree's pids.
pub fn collect_fd(
    pid: i32,
    fd: i32,
    link: &str,
    dev: u64,
    nlink: u64,
    tree: &std::collections::HashSet<i32>,
    index: &mut FdQueues,
) -> Result<std::result::Result<OpenTarget, String>> {
    if nlink == 0 || link.ends_with(" (deleted)") {
        let name = link.trim_end_matches(" (deleted)");
        return Ok(Err(format!(
            "POSIX message queue {name} was unlinked while open: it has no name left to \
             reopen it by (mq_open could only make another queue)"
        )));
    }
    let name = link.to_string();
    let text = std::fs::read_to_string(format!("/proc/{pid}/fd/{fd}"))
        .context(|| format!("reading the status of POSIX message queue {name}"))?;
    let st = mqueue::parse_status(&text)?;
    let me = std::process::id() as i32;
    let (_, mine) = index.dev_of(me)?;
    let (ino, theirs) = index.dev_of(pid)?;
    if dev == mine && mine != theirs {
        // A queue of crest's namespace held from a private one.
    } else if dev != theirs {
        return Ok(Err(format!(
            "POSIX message queue {name} belongs to an IPC namespace that is neither this \
             process's nor crest's (not supported)"
        )));
    }
    // One in a private namespace is refused with the namespace's queues.
    if st.notify_pid != 0 && dev == mine && tree.contains(&st.notify_pid) {
        return Ok(Err(format!(
            "POSIX message queue {name}: {}",
            describe_notify(&st, false)
        )));
    }
    if dev != mine {
        index.pending = Some((ino, pid, fd, name.clone()));
    }
    Ok(Ok(OpenTarget::PosixMq { name, ipc_ns: None }))
}

impl FdQueues {
    /// Records that the queue descriptor just collected is object `obj`.
    pub fn took(&mut self, obj: u32) {
        if let Some((ino, pid, fd, name)) = self.pending.take() {
            self.private.push((obj, ino, pid, fd, name));
        }
    }
}

/// Ties the descriptors on queues of private namespaces to those
/// namespaces, once they are in the table (`procs`: each process's).
pub fn link_descriptors(
    fdq: &FdQueues,
    objects: &mut ObjectTable,
    ns: &Namespaces,
    procs: &[ProcNs],
    obstacles: &mut Vec<Obstacle>,
) {
    for (obj, ino, pid, fd, name) in &fdq.private {
        let id = ns
            .table
            .iter()
            .find(|n| n.ino == *ino && matches!(n.state, NsState::Ipc(_)))
            .map(|n| n.id);
        let reason = match id {
            None => Some(format!(
                "POSIX message queue {name}: its IPC namespace is not one of the tree's"
            )),
            Some(id) if !makeable_early(procs, id) => Some(format!(
                "POSIX message queue {name}: a descriptor on a queue of an IPC namespace that \
                 the tree entered together with a user namespace of its own is not supported \
                 (crest opens descriptors before the tree's namespaces exist, and can make \
                 only an IPC namespace of its own user namespace that early)"
            )),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            obstacles.push(Obstacle {
                pid: *pid,
                object: format!("fd {fd}"),
                reason,
            });
            continue;
        }
        if let Some(ObjectKind::Open(o)) = objects.get_mut(*obj) {
            if let OpenTarget::PosixMq { ipc_ns, .. } = &mut o.target {
                *ipc_ns = id;
            }
        }
    }
}

/// A short description of a queue descriptor (inspect).
pub fn describe(name: &str, ipc_ns: Option<NsId>, flags: u32) -> String {
    let mode = match flags as i32 & libc::O_ACCMODE {
        libc::O_RDONLY => "read",
        libc::O_WRONLY => "write",
        _ => "read-write",
    };
    let nb = if flags as i32 & libc::O_NONBLOCK != 0 {
        ", O_NONBLOCK"
    } else {
        ""
    };
    match ipc_ns {
        Some(id) => format!("POSIX message queue {name} of IPC namespace {id} ({mode}{nb})"),
        None => format!("POSIX message queue {name} of the machine ({mode}{nb})"),
    }
}
