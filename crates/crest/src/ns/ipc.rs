//! Private IPC namespaces: their System V semaphore sets and message
//! queues (their POSIX message queues: see `crate::ns::mqueue`).
//!
//! Dump joins the namespace on a thread of crest for a moment and reads
//! every object listed in its /proc/sysvipc files: a semaphore set's
//! values (GETALL), a message queue's messages, copied without taking
//! them (msgrcv MSG_COPY), with each object's key, id, owner and mode.
//! Restore creates the namespace with the process that first entered it
//! (CLONE_NEWIPC), then, before any process of the tree runs, joins it
//! the same way and recreates each object with its id (through
//! /proc/sys/kernel/{sem,msg}_next_id of that namespace), key, values or
//! messages, owner and mode.
//!
//! Not kept: semaphore undo state (SEM_UNDO adjustments a process would
//! have applied at exit: the kernel offers no way to read them), the
//! creator ids (cuid/cgid become crest's) and the last-operation times
//! and PIDs.  System V shared memory in a private IPC namespace is
//! refused by dump (crest's shm support is for its own namespace).

use crate::error::{Context, Error, Result};
use crate::model::{IpcPerm, IpcState, MsgQueue, NsState, SemSet};
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

fn read_state() -> crest_sys::Result<(IpcState, Vec<i32>, Vec<String>)> {
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
    let shm = sysvipc::list_ids("shm")?;
    let mq = crate::ns::mqueue::read_own_ns()?;
    st.mqueues = mq.queues;
    Ok((st, shm, mq.refused))
}

/// The objects of the IPC namespace of `pid`.
pub fn collect(pid: i32, obstacles: &mut Vec<Obstacle>) -> Result<NsState> {
    let (st, shm, refused) = crest_sys::ns::run_in(pid, "ipc", libc::CLONE_NEWIPC, read_state)
        .context(|| format!("reading the IPC namespace of pid {pid}"))?
        .context(|| format!("reading the IPC namespace of pid {pid}"))?;
    if !shm.is_empty() {
        obstacles.push(Obstacle {
            pid,
            object: "ipc namespace".into(),
            reason: format!(
                "System V shared memory segments {shm:?} in a private IPC namespace are \
                 not supported yet"
            ),
        });
    }
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

fn create_all(st: &IpcState) -> Result<()> {
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
    Ok(())
}

/// Recreates the objects in the (new, empty) IPC namespace of `host`.
/// The namespace goes with its processes if the restore fails.
pub fn restore(host: i32, st: &IpcState) -> Result<()> {
    crest_sys::ns::run_in(host, "ipc", libc::CLONE_NEWIPC, || create_all(st))
        .context(|| format!("joining the IPC namespace of restored pid {host}"))?
        .context(|| format!("recreating the System V objects of pid {host}'s IPC namespace"))
}
