//! Private IPC namespaces: their System V semaphore sets, message
//! queues and shared memory segments (their POSIX message queues: see
//! `crate::ns::mqueue`).
//!
//! Dump joins the namespace on a thread of crest for a moment and reads
//! every object listed in its /proc/sysvipc files: a semaphore set's
//! values (GETALL), a message queue's messages, copied without taking
//! them (msgrcv MSG_COPY), with each object's key, id, owner and mode;
//! every shared memory segment, attached by the tree or not, is saved as
//! a shared-memory object of the image (see [`crate::memory::sysv`]).
//! Restore creates the namespace with the process that first entered it
//! (CLONE_NEWIPC), then, before any process of the tree runs, joins it
//! the same way and recreates each object with its id (through
//! /proc/sys/kernel/{sem,msg,shm}_next_id of that namespace), key, values,
//! messages or content, owner and mode; the processes then attach their
//! segments where they were.  If the restore fails the namespace, and
//! all that was made in it, goes with its processes.
//!
//! Not kept: semaphore undo state (SEM_UNDO adjustments a process would
//! have applied at exit: the kernel offers no way to read them), the
//! creator ids of semaphore sets and message queues (cuid/cgid become
//! crest's; a segment's are kept, see [`crate::memory::sysv`]) and the
//! last-operation times and PIDs of every kind of object.  Refused by check and dump: shared
//! memory in huge pages (SHM_HUGETLB), and a segment attached by a
//! process outside the tree.

use crate::error::{Context, Error, Result};
use crate::files::DataSource;
use crate::memory::sysv::{NsSegment, Segments};
use crate::model::{IpcPerm, IpcState, MsgQueue, NsState, ObjectKind, SemSet};
use crate::objects::ObjectTable;
use crate::Obstacle;
use crest_sys::sysvipc;

fn perm(p: &sysvipc::Perm, id: i32) -> IpcPerm {
    IpcPerm {
        key: p.key,
        id,
        mode: p.mode & 0o777,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
    }
}

type ShmList = std::result::Result<Vec<NsSegment>, String>;

fn read_state() -> crest_sys::Result<(IpcState, ShmList, Vec<String>)> {
    let mut st = IpcState::default();
    for id in sysvipc::list_ids("sem")? {
        let (p, n) = sysvipc::sem_stat(id)?;
        st.sems.push(SemSet {
            perm: perm(&p, id),
            values: sysvipc::sem_values(id, n)?,
        });
    }
    for id in sysvipc::list_ids("msg")? {
        let (p, qnum, qbytes) = sysvipc::msg_stat(id)?;
        let mut messages = Vec::new();
        for i in 0..qnum {
            messages.push(sysvipc::msg_copy(id, i)?);
        }
        st.msgqs.push(MsgQueue {
            perm: perm(&p, id),
            qbytes,
            messages,
        });
    }
    let mq = crate::ns::mqueue::read_own_ns()?;
    st.mqueues = mq.queues;
    Ok((st, crate::memory::sysv::list_here(), mq.refused))
}

/// The objects of the IPC namespace of `pid`; its shared memory segments
/// go to the object table (the tree's mappings of them are there already:
/// the namespaces are collected after the memory).  `tree`: the pids of
/// the tree (a segment attached by another process is refused).
pub fn collect(
    pid: i32,
    tree: &[i32],
    objects: &mut ObjectTable,
    data: &mut Vec<DataSource>,
    obstacles: &mut Vec<Obstacle>,
) -> Result<NsState> {
    let (mut st, shm, refused) = crest_sys::ns::run_in(pid, "ipc", libc::CLONE_NEWIPC, read_state)
        .context(|| format!("reading the IPC namespace of pid {pid}"))?
        .context(|| format!("reading the IPC namespace of pid {pid}"))?;
    let shm = shm.map_err(|e| {
        Error::msg(format!(
            "reading the System V shared memory of pid {pid}'s IPC namespace: {e}"
        ))
    })?;
    st.shm = crate::memory::sysv::add_ns_segments(pid, tree, shm, objects, data, obstacles);
    for reason in refused {
        obstacles.push(Obstacle {
            pid,
            object: "ipc namespace".into(),
            reason,
        });
    }
    Ok(NsState::Ipc(st))
}

fn sys_perm(p: &IpcPerm) -> sysvipc::Perm {
    sysvipc::Perm {
        key: p.key,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
        mode: p.mode,
    }
}

fn create_all(
    st: &IpcState,
    host: i32,
    objects: &dyn Fn(u32) -> Option<ObjectKind>,
    segs: &mut Segments,
) -> Result<()> {
    for s in &st.sems {
        sysvipc::set_next_id("sem", s.perm.id)?;
        let got = sysvipc::sem_create(&sys_perm(&s.perm), &s.values)?;
        if got != s.perm.id {
            return Err(Error::msg(format!(
                "semaphore set {} was recreated as {got}",
                s.perm.id
            )));
        }
    }
    for q in &st.msgqs {
        sysvipc::set_next_id("msg", q.perm.id)?;
        let got = sysvipc::msg_create(&sys_perm(&q.perm), q.qbytes, &q.messages)?;
        if got != q.perm.id {
            return Err(Error::msg(format!(
                "message queue {} was recreated as {got}",
                q.perm.id
            )));
        }
    }
    for &o in &st.shm {
        let Some(ObjectKind::Shmem(m)) = objects(o) else {
            return Err(Error::Invalid(format!(
                "IPC namespace segment object {o} is no shared memory"
            )));
        };
        segs.create_private(o, &m, host)?;
    }
    Ok(())
}

/// Recreates the objects in the (new, empty) IPC namespace of `host`.
/// The namespace goes with its processes if the restore fails.
pub fn restore(
    host: i32,
    st: &IpcState,
    objects: &(dyn Fn(u32) -> Option<ObjectKind> + Sync),
    segs: &mut Segments,
) -> Result<()> {
    crest_sys::ns::run_in(host, "ipc", libc::CLONE_NEWIPC, || {
        create_all(st, host, objects, segs)
    })
    .context(|| format!("joining the IPC namespace of restored pid {host}"))?
    .context(|| format!("recreating the System V objects of pid {host}'s IPC namespace"))
}

/// Checks the segment list of an image's IPC namespace: System V objects,
/// each in one namespace.
pub fn validate(
    st: &IpcState,
    objects: &dyn Fn(u32) -> Option<ObjectKind>,
    seen: &mut std::collections::HashSet<u32>,
) -> Result<()> {
    for &o in &st.shm {
        if !matches!(
            objects(o),
            Some(ObjectKind::Shmem(crate::model::ShmemObj {
                kind: crate::model::ShmemKind::SysV { .. },
                ..
            }))
        ) {
            return Err(Error::Invalid(format!(
                "IPC namespace segment object {o} is not System V shared memory"
            )));
        }
        if !seen.insert(o) {
            return Err(Error::Invalid(format!(
                "System V segment object {o} is listed twice among the IPC namespaces"
            )));
        }
    }
    Ok(())
}
