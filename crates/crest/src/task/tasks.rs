//! Tasks: identity (pid, pgid, sid), per-thread CPU state, and the
//! process attributes that are neither memory, files nor signals.

use crate::error::{Context, Result};
use crate::model::{Attrs, Process, Rseq, TaskState, Thread};
use crate::task::freeze::{Call, Inject, ThreadView};
use crate::task::signals;
use crest_sys::arch::{self, UserRegs};
use crest_sys::proc::Stat;
use crest_sys::{process, ptrace};

/// Number of resource limits (RLIM_NLIMITS).
pub const RLIM_NLIMITS: u32 = 16;
const NR_RESTART_SYSCALL: u64 = 219;

/// Reads the state of one stopped thread of process `pid`, whose
/// /proc status (read once by the caller, for its credentials too) is
/// `status`.
pub fn collect_thread(
    s: &ThreadView,
    pid: i32,
    tid: i32,
    status: &crest_sys::proc::Status,
) -> Result<Thread> {
    let regs = s.regs().to_words().to_vec();
    let xsave = ptrace::get_xstate(tid, arch::cpuid(0xd, 0).ecx.max(4096) as usize)?;
    let rseq = ptrace::get_rseq_config(tid)?;
    s.call(
        libc::SYS_prctl,
        &[libc::PR_GET_TID_ADDRESS as u64, s.scratch()],
        "reading clear_child_tid",
    )?;
    let mut b = [0u8; 8];
    s.read_scratch(0, &mut b)?;
    let comm_raw = read_comm_raw(&format!("/proc/{pid}/task/{tid}/comm"))?;
    Ok(Thread {
        tid,
        comm: String::from_utf8_lossy(&comm_raw).into_owned(),
        regs,
        xsave,
        sigmask: s.sigmask(),
        pending: signals::collect_pending(tid, false)?,
        altstack: signals::collect_altstack(s)?,
        rseq: (rseq.rseq_abi_pointer != 0).then_some(Rseq {
            addr: rseq.rseq_abi_pointer,
            len: rseq.rseq_abi_size,
            signature: rseq.signature,
        }),
        robust_list: process::get_robust_list(tid)?,
        clear_child_tid: u64::from_ne_bytes(b),
        creds: None,
        comm_raw,
        cgroups: None,
        seccomp: crate::task::seccomp::collect(tid, status.seccomp)?,
    })
}

/// A task name's exact bytes from a `comm` file (which adds a newline).
pub fn read_comm_raw(path: &str) -> Result<Vec<u8>> {
    let mut b = crest_sys::proc::read_bytes(path)?;
    if b.last() == Some(&b'\n') {
        b.pop();
    }
    Ok(b)
}

/// The name a thread or zombie is restored with: its exact bytes when
/// the image has them.
pub fn comm_of<'a>(comm: &'a str, raw: &'a [u8]) -> &'a [u8] {
    if raw.is_empty() {
        comm.as_bytes()
    } else {
        raw
    }
}

/// Reads a number from /proc/PID/NAME (None when the kernel lacks it).
fn read_proc_num<T: std::str::FromStr>(pid: i32, name: &str) -> Result<Option<T>> {
    let path = format!("/proc/{pid}/{name}");
    match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| crate::Error::msg(format!("{path}: unexpected contents {s:?}"))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(crate::Error::msg(format!("reading {path}: {e}"))),
    }
}

/// Reads the OOM score adjustment and the audit login uid and session id.
pub fn collect_task_state(pid: i32, st: &mut TaskState) -> Result<()> {
    st.oom_score_adj = read_proc_num(pid, "oom_score_adj")?;
    st.loginuid = read_proc_num(pid, "loginuid")?;
    st.sessionid = read_proc_num(pid, "sessionid")?;
    Ok(())
}

/// Sets the OOM score adjustment from outside (crest writes the stub's
/// /proc file), when it differs from the one the stub inherited.
pub fn restore_oom_score_adj(pid: i32, st: &TaskState) -> Result<()> {
    let Some(want) = st.oom_score_adj else {
        return Ok(());
    };
    if read_proc_num::<i32>(pid, "oom_score_adj")? == Some(want) {
        return Ok(());
    }
    let path = format!("/proc/{pid}/oom_score_adj");
    std::fs::write(&path, format!("{want}\n")).map_err(|e| {
        let why = if e.raw_os_error() == Some(libc::EACCES) {
            " (lowering it below crest's own needs CAP_SYS_RESOURCE)"
        } else {
            ""
        };
        crate::Error::msg(format!(
            "pid {pid}: cannot set oom_score_adj to {want}: {e}{why}"
        ))
    })
}

/// Sets the audit login uid when it differs from the one the stub
/// inherited from crest.  Only the task itself may write its
/// /proc/self/loginuid, so the open and write are injected; this must run
/// before its credentials drop (changing a set login uid needs
/// CAP_AUDIT_CONTROL).  The kernel gives the task a new audit session id
/// when the login uid changes: the session id is kept only when it does
/// not have to be set.
pub fn restore_loginuid(t: &impl Inject, pid: i32, st: &TaskState) -> Result<()> {
    let Some(want) = st.loginuid else {
        return Ok(());
    };
    if read_proc_num::<u32>(pid, "loginuid")? == Some(want) {
        return Ok(());
    }
    // Written to the scratch area (not placed): these calls run at once.
    t.write_scratch(0, b"/proc/self/loginuid\0")?;
    let path = t.scratch();
    let fd = t.call(
        libc::SYS_openat,
        &[libc::AT_FDCWD as u64, path, libc::O_WRONLY as u64, 0],
        "opening /proc/self/loginuid",
    )?;
    let text = format!("{want}");
    t.write_scratch(0, text.as_bytes())?;
    let at = t.scratch();
    let r = t.call(
        libc::SYS_write,
        &[fd, at, text.len() as u64],
        &format!("setting the audit login uid to {want}"),
    );
    t.call(libc::SYS_close, &[fd], "closing /proc/self/loginuid")?;
    r.map(drop)
        .context(|| format!("pid {pid}: the audit login uid cannot be restored"))
}

/// Reads the process attributes.
pub fn collect_attrs(s: &impl Inject, pid: i32, stat: &Stat, umask: u32) -> Result<Attrs> {
    let mut rlimits = Vec::new();
    let mut b = [0u8; 16];
    for r in 0..RLIM_NLIMITS {
        // prlimit on another process needs the same ids or
        // CAP_SYS_RESOURCE: without them, ask the task itself.
        let (cur, max) = match process::get_rlimit(pid, r) {
            Ok(l) => l,
            Err(e) if e.errno() == Some(libc::EPERM) => {
                s.call(
                    libc::SYS_prlimit64,
                    &[0, r as u64, 0, s.scratch()],
                    &format!("reading resource limit {r}"),
                )?;
                s.read_scratch(0, &mut b)?;
                let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
                (w(0), w(1))
            }
            Err(e) => return Err(e.into()),
        };
        rlimits.push((r, cur, max));
    }
    let (policy, prio) = process::get_sched(pid)?;
    s.call(
        libc::SYS_prctl,
        &[libc::PR_GET_PDEATHSIG as u64, s.scratch()],
        "reading the parent-death signal",
    )?;
    let mut b = [0u8; 4];
    s.read_scratch(0, &mut b)?;
    let pdeath = i32::from_ne_bytes(b);
    s.call(
        libc::SYS_prctl,
        &[libc::PR_GET_CHILD_SUBREAPER as u64, s.scratch()],
        "reading the child-subreaper flag",
    )?;
    s.read_scratch(0, &mut b)?;
    let subreaper = i32::from_ne_bytes(b) != 0;
    let dumpable = s.prctl(libc::PR_GET_DUMPABLE, &[], "reading the dumpable flag")? as i32;
    Ok(Attrs {
        umask,
        personality: crest_sys::proc::read_personality(pid)?,
        nice: stat.nice as i32,
        sched_policy: policy,
        sched_priority: prio,
        rlimits,
        dumpable,
        pdeath_signal: pdeath,
        child_subreaper: subreaper,
    })
}

/// The current program break, read by running brk(0) in the task.
pub fn collect_brk(s: &impl Inject) -> Result<u64> {
    s.call(libc::SYS_brk, &[0], "reading the program break")
}

/// The registers a restored thread resumes with.  A thread frozen inside
/// an interrupted syscall is set up to re-issue it, as the kernel would
/// have on its way back to user space; one frozen in `restart_syscall`
/// cannot be continued (its restart state lives in the old kernel task)
/// and sees EINTR instead.
pub fn resume_regs(words: &[u64]) -> Result<UserRegs> {
    let w: &[u64; arch::USER_REGS_WORDS] = words.try_into().map_err(|_| {
        crate::Error::Invalid(format!(
            "thread registers have {} words, expected {}",
            words.len(),
            arch::USER_REGS_WORDS
        ))
    })?;
    let mut r = UserRegs::from_words(w);
    if r.in_restartable_syscall() {
        if r.rip < 2 {
            return Err(crate::Error::Invalid(format!(
                "a thread interrupted in a syscall at rip {:#x}",
                r.rip
            )));
        }
        if r.orig_rax == NR_RESTART_SYSCALL {
            r.rax = (-libc::EINTR) as i64 as u64;
        } else {
            // A restart block lives in the old kernel task: issue the
            // original call again instead.
            r.rax = r.orig_rax;
            r.rip -= 2;
        }
    }
    r.orig_rax = u64::MAX;
    Ok(r)
}

/// Sets the resource limits, from inside the task (before its
/// credentials change, while it may still lower any limit); queued.
pub fn restore_rlimits(t: &impl Inject, a: &Attrs) -> Result<()> {
    for &(r, cur, max) in &a.rlimits {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&cur.to_ne_bytes());
        b[8..].copy_from_slice(&max.to_ne_bytes());
        let at = t.place(&b)?;
        t.queue(Call::new(
            libc::SYS_prlimit64,
            &[0, r as u64, at, 0],
            format!("setting resource limit {r} to {cur}/{max}"),
        ))?;
    }
    Ok(())
}

/// Sets what crest can set from outside once the task exists: nice value
/// and scheduling policy.
pub fn restore_attrs_outside(pid: i32, a: &Attrs) -> Result<()> {
    process::set_nice(pid, a.nice)?;
    process::set_sched(pid, a.sched_policy, a.sched_priority)?;
    Ok(())
}

/// A task name as the kernel stores it (at most 15 bytes and a NUL).
pub fn comm_bytes(name: &[u8]) -> [u8; 16] {
    let mut comm = [0u8; 16];
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name[..n]);
    comm
}

/// Sets the thread's name (queued).
pub fn restore_comm(t: &impl Inject, th: &Thread) -> Result<()> {
    let at = t.place(&comm_bytes(comm_of(&th.comm, &th.comm_raw)))?;
    t.queue(Call::new(
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, at],
        "setting the thread name".into(),
    ))
}

/// Sets the parent-death signal (a per-thread attribute; queued).
pub fn restore_pdeath(t: &impl Inject, a: &Attrs) -> Result<()> {
    t.queue(Call::new(
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, a.pdeath_signal as u64],
        "setting the parent-death signal".into(),
    ))
}

/// Sets the process-wide prctl attributes (queued).
pub fn restore_prctl(t: &impl Inject, a: &Attrs) -> Result<()> {
    t.queue(Call::new(
        libc::SYS_prctl,
        &[
            libc::PR_SET_CHILD_SUBREAPER as u64,
            a.child_subreaper as u64,
        ],
        "setting the child-subreaper flag".into(),
    ))
}

/// Restores per-thread kernel registrations: rseq, robust list,
/// clear_child_tid (queued).
pub fn restore_thread_regs(t: &impl Inject, th: &Thread) -> Result<()> {
    if let Some(r) = th.rseq {
        t.queue(Call::new(
            libc::SYS_rseq,
            &[r.addr, r.len as u64, 0, r.signature as u64],
            "registering rseq".into(),
        ))?;
    }
    if th.robust_list.0 != 0 {
        t.queue(Call::new(
            libc::SYS_set_robust_list,
            &[th.robust_list.0, th.robust_list.1],
            "setting the robust futex list".into(),
        ))?;
    }
    t.queue(Call::new(
        libc::SYS_set_tid_address,
        &[th.clear_child_tid],
        "setting clear_child_tid".into(),
    ))
}

/// How each zombie child of `p` is recreated.  A zombie in its parent's
/// session is forked after the parent joined it, and put into its process
/// group by the parent once every group exists ([`join_zombie_groups`]);
/// one still in the session its parent left (by setsid, after forking
/// it) is forked before the parent's setsid and joins its group itself.
pub fn zombie_plans(
    p: &Process,
    parent: Option<&Process>,
    sid_here: i32,
    view: &crate::ns::pid::View,
) -> Result<Vec<crate::restore::stub::ZombiePlan>> {
    let first_sid = parent.map_or(sid_here, |q| q.sid);
    p.zombies
        .iter()
        .enumerate()
        .map(|(k, z)| {
            let setsid = z.sid == z.pid;
            let early = !setsid && z.sid != p.sid;
            if early && !(p.sid == p.pid && z.sid == first_sid) {
                return Err(crate::Error::Incompatible(format!(
                    "pid {}: its zombie child {} belongs to session {}, which cannot be \
                     recreated here",
                    p.pid, z.pid, z.sid
                )));
            }
            let pgid = if setsid {
                None
            } else if z.pgid == z.pid {
                Some(0)
            } else if early {
                Some(view.of(p, z.pgid))
            } else {
                None
            };
            Ok(crate::restore::stub::ZombiePlan {
                comm: comm_bytes(comm_of(&z.comm, &z.comm_raw)),
                pid: z.pid,
                tids: crate::ns::pid::set_tid(
                    p.ns.zombie_pids.get(k).map_or(&[][..], |l| l.as_slice()),
                    z.pid,
                    false,
                ),
                setsid,
                early,
                pgid,
                status: z.status,
            })
        })
        .collect()
}

/// Puts each zombie child of `p` that shares `p`'s session into its
/// process group (the parent may move an exited child that never ran
/// exec), once every group of the tree exists (queued).
/// PIDs are passed as `p` sees them (`view`: it may live in a PID
/// namespace of its own).
pub fn join_zombie_groups(p: &Process, t: &impl Inject, view: &crate::ns::pid::View) -> Result<()> {
    for z in &p.zombies {
        if z.sid == p.sid && z.sid != z.pid && z.pgid != z.pid {
            t.queue(Call::new(
                libc::SYS_setpgid,
                &[view.of(p, z.pid) as u64, view.of(p, z.pgid) as u64],
                format!("putting zombie {} into process group {}", z.pid, z.pgid),
            ))?;
        }
    }
    Ok(())
}
