//! Signals: dispositions, blocked masks, pending queues, the alternate stack.
//!
//! Dispositions and the alternate stack have no /proc interface: they are
//! read by running `rt_sigaction`/`sigaltstack` in the frozen task.  The
//! pending queues come from PTRACE_PEEKSIGINFO and are refilled at
//! restore by the task queueing each signal to itself, which the kernel
//! allows with the full siginfo.

use crate::error::Result;
use crate::model::{AltStack, SigAction, SigInfo};
use crate::task::freeze::{Call, Inject, STACK_SCRATCH};
use crest_sys::ptrace;

/// Size of the kernel's `struct sigaction` on x86-64.
pub const KSIGACTION_LEN: usize = 32;
/// Bytes of the signal set the kernel expects.
const SIGSET_LEN: u64 = 8;
const SS_ONSTACK: i32 = 1;

/// Whether `sig` can have a disposition.
fn settable(sig: i32) -> bool {
    sig != libc::SIGKILL && sig != libc::SIGSTOP
}

/// Whether a job-control stop signal is pending for process `pid` (or
/// its status cannot be read): a thread it creates now would stop.
pub fn stop_pending(pid: i32) -> bool {
    let bit = |s: i32| 1u64 << (s - 1);
    let stops = bit(libc::SIGSTOP) | bit(libc::SIGTSTP) | bit(libc::SIGTTIN) | bit(libc::SIGTTOU);
    crest_sys::proc::read_task_status(pid, pid)
        .map_or(true, |s| (s.sig_pnd | s.shd_pnd) & stops != 0)
}

/// Reads every non-default disposition of the task.  `one_by_one`: one
/// injected call per signal, never a batched read
/// (`Inject::read_sigactions`), whose helper thread the task's seccomp
/// filters or a job-control stop could stop short.  A stop signal that
/// comes during a batched read (a few hundred microseconds) holds it
/// until the process is continued; the process is never harmed.
pub fn collect_actions(t: &impl Inject, one_by_one: bool) -> Result<Vec<SigAction>> {
    // Signals per batch: as many sigactions as the scratch area holds.
    const PER: i32 = (STACK_SCRATCH / KSIGACTION_LEN as u64) as i32;
    let mut out = Vec::new();
    let mut first = 1;
    while first <= 64 {
        let end = (first + PER).min(65);
        let n = (end - first) as usize;
        let mut buf = vec![0xffu8; n * KSIGACTION_LEN];
        // A slot still all 0xff was not written (the kernel clears the
        // flags it does not know, so no sigaction reads so).
        let batched = !one_by_one && {
            t.write_scratch(0, &buf)?;
            t.read_sigactions(first, end)?
        };
        if batched {
            t.read_scratch(0, &mut buf)?;
        }
        for (k, slot) in buf.chunks_mut(KSIGACTION_LEN).enumerate() {
            let sig = first + k as i32;
            if !settable(sig) {
                continue;
            }
            if !batched || slot.iter().all(|&b| b == 0xff) {
                t.call(
                    libc::SYS_rt_sigaction,
                    &[sig as u64, 0, t.scratch(), SIGSET_LEN],
                    &format!("reading the action of signal {sig}"),
                )?;
                t.read_scratch(0, slot)?;
            }
            let w = |i: usize| u64::from_ne_bytes(slot[i * 8..i * 8 + 8].try_into().unwrap());
            let act = SigAction {
                signo: sig,
                handler: w(0),
                flags: w(1),
                restorer: w(2),
                mask: w(3),
            };
            if act.handler != 0 || act.flags != 0 || act.mask != 0 {
                out.push(act);
            }
        }
        first = end;
    }
    Ok(out)
}

/// The kernel's `struct sigaction` for an action.
pub fn ksigaction_bytes(a: &SigAction) -> [u8; KSIGACTION_LEN] {
    let mut b = [0u8; KSIGACTION_LEN];
    for (i, v) in [a.handler, a.flags, a.restorer, a.mask].iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }
    b
}

/// Sets one disposition in the task.
pub fn restore_action(t: &impl Inject, a: &SigAction) -> Result<()> {
    t.write_scratch(0, &ksigaction_bytes(a))?;
    t.call(
        libc::SYS_rt_sigaction,
        &[a.signo as u64, t.scratch(), 0, SIGSET_LEN],
        &format!("setting the action of signal {}", a.signo),
    )?;
    Ok(())
}

/// Pending signals of one thread (`shared == false`) or of its thread group.
pub fn collect_pending(tid: i32, shared: bool) -> Result<Vec<SigInfo>> {
    Ok(ptrace::peek_siginfo(tid, shared)?
        .into_iter()
        .map(|raw| SigInfo {
            signo: i32::from_ne_bytes(raw[0..4].try_into().unwrap()),
            raw: raw.to_vec(),
        })
        .collect())
}

/// Queues signals again: to the thread group, or to thread `tid`.  (The
/// injected calls are themselves queued, see [`Inject::queue`].)
pub fn restore_pending<'a>(
    t: &impl Inject,
    tid: Option<i32>,
    sigs: impl IntoIterator<Item = &'a SigInfo>,
) -> Result<()> {
    let pid = t.own_pid() as u64;
    for s in sigs {
        let at = t.place(&s.raw)?;
        let what = format!("queueing pending signal {}", s.signo);
        t.queue(match tid {
            None => Call::new(libc::SYS_rt_sigqueueinfo, &[pid, s.signo as u64, at], what),
            Some(tid) => Call::new(
                libc::SYS_rt_tgsigqueueinfo,
                &[pid, tid as u64, s.signo as u64, at],
                what,
            ),
        })?;
    }
    Ok(())
}

/// Reads the alternate signal stack of the task.
pub fn collect_altstack(t: &impl Inject) -> Result<AltStack> {
    t.call(
        libc::SYS_sigaltstack,
        &[0, t.scratch()],
        "reading the alternate signal stack",
    )?;
    let mut b = [0u8; 24];
    t.read_scratch(0, &mut b)?;
    Ok(AltStack {
        sp: u64::from_ne_bytes(b[0..8].try_into().unwrap()),
        flags: i32::from_ne_bytes(b[8..12].try_into().unwrap()),
        size: u64::from_ne_bytes(b[16..24].try_into().unwrap()),
    })
}

/// Sets the alternate signal stack (unless it is disabled).
pub fn restore_altstack(t: &impl Inject, ss: &AltStack) -> Result<()> {
    if ss.flags & libc::SS_DISABLE != 0 {
        return Ok(());
    }
    let mut b = [0u8; 24];
    b[0..8].copy_from_slice(&ss.sp.to_ne_bytes());
    // "on the stack" is a state, not a setting.
    b[8..12].copy_from_slice(&(ss.flags & !SS_ONSTACK).to_ne_bytes());
    b[16..24].copy_from_slice(&ss.size.to_ne_bytes());
    let at = t.place(&b)?;
    t.queue(Call::new(
        libc::SYS_sigaltstack,
        &[at, 0],
        "setting the alternate signal stack".into(),
    ))
}
