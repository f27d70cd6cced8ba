//! PID namespaces.
//!
//! Dump reads every task's `NSpid:` line: its PID in crest's namespace
//! (the model's `pid`/`tid`, used as the task's name in the image) and in
//! each PID namespace below it, down to its own ([`ProcNs::pids`]).  A
//! PID namespace of the tree must have its init (PID 1) in the tree, as
//! the first process of the tree in it, a child of a process one level
//! up: restore creates it with `clone3(CLONE_NEWPID, set_tid = [1, …])`
//! so it is a real init again (the kernel's init signal semantics hold).
//! Every other task gets the same PIDs it had in each namespace below
//! crest's (clone3 set_tid, innermost first); its PID in crest's own
//! namespace is whatever the kernel picks, so the PIDs a container sees
//! never change while the outside PIDs may.  Nested PID namespaces (a
//! container in a container) work the same way, one level at a time.
//!
//! At restore, calls crest makes *as* a task (setpgid, rt_tgsigqueueinfo,
//! a thread's clone3, a timer's target thread) take PIDs as that task
//! sees them: [`View`] translates the image's names to those.

use crate::error::{Error, Result};
use crate::model::{ProcNs, Process};
use crate::Obstacle;
use crest_sys::proc;
use std::collections::HashMap;

/// A task's PIDs below crest's namespace, outermost first.
fn levels_of(pid: i32, tid: i32) -> Result<Vec<i32>> {
    let st = if pid == tid {
        proc::read_status(pid)?
    } else {
        proc::read_task_status(pid, tid)?
    };
    Ok(st.ns_pid.get(1..).unwrap_or_default().to_vec())
}

/// The PID task `tid` of process `pid` has in its own PID namespace
/// (`tid` itself if that cannot be read).
pub fn own_pid(pid: i32, tid: i32) -> i32 {
    levels_of(pid, tid)
        .ok()
        .and_then(|l| l.last().copied())
        .unwrap_or(tid)
}

/// The PIDs of process `pid`, its threads `tids` (leader first) and its
/// zombie children in the PID namespaces below crest's.
pub fn collect_ids(pid: i32, tids: &[i32]) -> Result<ProcNs> {
    let mut me = ProcNs {
        pids: levels_of(pid, pid)?,
        ..Default::default()
    };
    if me.pids.is_empty() {
        return Ok(me);
    }
    for &t in &tids[1..] {
        me.tids.push(levels_of(pid, t)?);
    }
    Ok(me)
}

/// The PIDs of a zombie child below crest's namespace.
pub fn zombie_levels(pid: i32) -> Result<Vec<i32>> {
    levels_of(pid, pid)
}

/// A process entering a new PID namespace must be its init, one level
/// below its parent's.
pub fn check_init(pid: i32, me: &ProcNs, parent_levels: usize, obstacles: &mut Vec<Obstacle>) {
    if me.pids.last() != Some(&1) || me.pids.len() != parent_levels + 1 {
        obstacles.push(Obstacle {
            pid,
            object: "pid namespace".into(),
            reason: format!(
                "the process is in another PID namespace than its parent but is not that \
                 namespace's init (its PIDs there: {:?}); checkpoint the namespace's init \
                 (PID 1) with everything below it",
                me.pids
            ),
        });
    }
}

/// Processes whose children go into another PID namespace than their own
/// (they unshared one and forked its init, as `unshare --pid --fork`
/// does): that namespace must be the one of a child of theirs in the
/// tree, its init; it is recorded so that the restored process's next
/// children go there too (see `crate::restore::stub`).  `inos`: each
/// process's PID namespace and the one for its children, by inode.
pub fn for_children(
    procs: &[(i32, Vec<i32>)],
    ppids: &HashMap<i32, i32>,
    inos: &[(Option<u64>, Option<u64>)],
    out: &mut [ProcNs],
    obstacles: &mut Vec<Obstacle>,
) {
    for (i, &(pid, _)) in procs.iter().enumerate() {
        let (Some(own), Some(kids)) = inos[i] else {
            continue;
        };
        if own == kids {
            continue;
        }
        let init = (0..procs.len()).find(|&j| {
            ppids.get(&procs[j].0) == Some(&pid)
                && inos[j].0 == Some(kids)
                && out[j].pids.last() == Some(&1)
        });
        match init.and_then(|j| out[j].pid) {
            Some(ns) => out[i].pid_for_children = Some(ns),
            None => obstacles.push(Obstacle {
                pid,
                object: "pid namespace".into(),
                reason: format!(
                    "the process unshared a new PID namespace (pid:[{kids}]) for its future \
                     children, and no child of it in the tree is that namespace's init; only \
                     a namespace's members can be checkpointed (give its init, or the \
                     process with its init)"
                ),
            }),
        }
    }
}

/// The last PID the PID namespace of `pid` handed out (see
/// [`NsState::Pid`](crate::model::NsState)), read by a helper crest forks
/// into it: the helper takes the next free PID (what the namespace's next
/// process would have got) and reads it as the last, so the cursor before
/// it is the one below.  `None` if it cannot be read (the restore then
/// leaves the cursor where the kernel has it).  The one PID the helper
/// takes is the dump's only trace in a tree left running.
pub fn last_pid(pid: i32) -> Option<i32> {
    crest_sys::ns::last_pid_in(pid).ok().map(|p| (p - 1).max(1))
}

/// Sets the cursor of each PID namespace of the restored tree to what it
/// was (see [`last_pid`]): `hosts[i]` is process `i`'s PID here.
pub fn restore_cursors(ckpt: &crate::model::Checkpoint, hosts: &[i32]) -> Result<()> {
    for n in &ckpt.namespaces.table {
        let crate::model::NsState::Pid {
            last_pid: Some(last),
            ..
        } = n.state
        else {
            continue;
        };
        let Some(i) = ckpt.processes.iter().position(|p| p.ns.pid == Some(n.id)) else {
            continue;
        };
        let host = hosts.get(i).copied().unwrap_or(0);
        crest_sys::ns::set_last_pid_in(host, last).map_err(|e| {
            Error::msg(format!(
                "restoring pid {}: the next PID of its PID namespace ({last}): {e}",
                ckpt.processes[i].pid
            ))
        })?;
    }
    Ok(())
}

/// Checks the PIDs of process `i`: as many per thread and zombie as for
/// the process, each level one more than its parent's when it is the
/// init of a new namespace, else the same.
pub fn validate(procs: &[Process], i: usize) -> Result<()> {
    let p = &procs[i];
    let n = p.ns.pids.len();
    let bad = |m: &str| {
        Err(Error::Invalid(format!(
            "pid {}: its namespace PIDs {:?}: {m}",
            p.pid, p.ns.pids
        )))
    };
    if p.ns.pids.iter().any(|&x| x < 1) {
        return bad("not a PID");
    }
    if (n == 0) != p.ns.pid.is_none() {
        return bad("they do not match its PID namespace");
    }
    if p.ns.tids.len() != if n == 0 { 0 } else { p.threads.len() - 1 }
        || p.ns.tids.iter().any(|t| t.len() != n || t.contains(&1))
    {
        return bad("its threads' PIDs do not match");
    }
    if !p.ns.zombie_pids.is_empty()
        && (p.ns.zombie_pids.len() != p.zombies.len()
            || p.ns.zombie_pids.iter().any(|z| z.len() != n))
    {
        return bad("its zombies' PIDs do not match");
    }
    let parent = procs[..i].iter().find(|q| q.pid == p.ppid);
    let (pn, pns) = parent.map_or((0, None), |q| (q.ns.pids.len(), q.ns.pid));
    let new = p.ns.pid != pns;
    if new && (n != pn + 1 || p.ns.pids.last() != Some(&1)) {
        return bad("it enters a PID namespace but is not its init, one level down");
    }
    if !new && n != pn {
        return bad("not as many levels as its parent's");
    }
    if !new && p.ns.pids.last() == Some(&1) {
        return bad("PID 1 that did not create its namespace");
    }
    if let Some(kids) = p.ns.pid_for_children {
        let init = procs[i + 1..]
            .iter()
            .any(|c| c.ppid == p.pid && c.ns.pid == Some(kids) && c.ns.pids.last() == Some(&1));
        if !init || p.ns.pid == Some(kids) {
            return bad("the PID namespace for its children has no init among its children");
        }
    }
    Ok(())
}

/// The `set_tid` array (innermost first) a task with these PIDs below
/// crest's namespace is created with: its PID in crest's namespace too
/// (`host`) when it has no others, or when `outer` and that PID is free
/// (as CRIU, a container keeps the PID its runtime knows it by when it
/// can; else the kernel picks the outer one).
pub fn set_tid(levels: &[i32], host: i32, outer: bool) -> Vec<i32> {
    if levels.is_empty() {
        vec![host]
    } else {
        let mut v: Vec<i32> = levels.iter().rev().copied().collect();
        if outer && host > 0 && !crest_sys::process::exists(host) {
            v.push(host);
        }
        v
    }
}

/// Translates the image's names of tasks (their PIDs in crest's namespace
/// at the dump) into the PIDs a given process sees.
#[derive(Default)]
pub struct View {
    levels: HashMap<i32, Vec<i32>>,
}

impl View {
    pub fn new(procs: &[Process]) -> View {
        let mut levels = HashMap::new();
        for p in procs {
            if p.ns.pids.is_empty() {
                continue;
            }
            levels.insert(p.pid, p.ns.pids.clone());
            for (t, l) in p.threads[1..].iter().zip(&p.ns.tids) {
                levels.insert(t.tid, l.clone());
            }
            for (z, l) in p.zombies.iter().zip(&p.ns.zombie_pids) {
                levels.insert(z.pid, l.clone());
            }
        }
        View { levels }
    }

    /// Whether any task is in a PID namespace below crest's.
    pub fn nested(&self) -> bool {
        !self.levels.is_empty()
    }

    /// The PID `p` sees for the task the image names `who` (0 if it is
    /// not visible there: a task outside `p`'s namespace).
    pub fn of(&self, p: &Process, who: i32) -> i32 {
        let depth = p.ns.pids.len();
        if depth == 0 {
            return who;
        }
        match self.levels.get(&who) {
            Some(l) if l.len() >= depth => l[depth - 1],
            _ => 0,
        }
    }
}

/// The children of `host` (a pid in crest's namespace) with their PIDs
/// below it, in the order they were created.
pub fn children_levels(host: i32) -> Result<Vec<(i32, Vec<i32>)>> {
    let mut out = Vec::new();
    for c in proc::task_children(host, host)? {
        if let Ok(st) = proc::read_status(c) {
            out.push((c, st.ns_pid.get(1..).unwrap_or_default().to_vec()));
        }
    }
    Ok(out)
}

/// The thread of process `host` whose PIDs below crest's namespace end
/// with `inner` (its own PID): its PID in crest's namespace.
pub fn thread_host_tid(host: i32, inner: i32) -> Result<i32> {
    for t in proc::list_tasks(host)? {
        if let Ok(st) = proc::read_task_status(host, t) {
            if st.ns_pid.len() > 1 && st.ns_pid.last() == Some(&inner) {
                return Ok(t);
            }
        }
    }
    Err(Error::msg(format!(
        "pid {host}: no thread with PID {inner} in its namespace"
    )))
}

/// `restore --new-pidns`: puts a tree that lived in crest's PID namespace
/// into a new one below it, where every task keeps its PID.  The new
/// namespace's PID 1 is crest's own small init (see `crate::restore::stub`); the
/// tree's root becomes its child.
pub fn into_new_pidns(ckpt: &mut crate::model::Checkpoint) -> Result<()> {
    use crate::model::{Namespace, NsState};
    if let Some(p) = ckpt.processes.iter().find(|p| !p.ns.pids.is_empty()) {
        return Err(Error::Incompatible(format!(
            "pid {} already lives in a PID namespace of its own; --new-pidns is for trees \
             that were in the PID namespace of crest",
            p.pid
        )));
    }
    if ckpt.processes.iter().any(|p| p.pid == 1) {
        return Err(Error::Invalid(
            "PID 1 cannot be restored under a new init".into(),
        ));
    }
    let id = ckpt.namespaces.table.len() as u32;
    ckpt.namespaces.table.push(Namespace {
        id,
        ino: 0,
        state: NsState::Pid {
            level: 1,
            last_pid: None,
        },
    });
    for p in &mut ckpt.processes {
        p.ns.pid = Some(id);
        p.ns.pids = vec![p.pid];
        p.ns.tids = p.threads[1..].iter().map(|t| vec![t.tid]).collect();
        p.ns.zombie_pids = p.zombies.iter().map(|z| vec![z.pid]).collect();
    }
    Ok(())
}
