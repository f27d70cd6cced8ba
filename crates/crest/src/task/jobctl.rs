//! Job-control stops: which signal stopped a process (SIGSTOP, SIGTSTP,
//! SIGTTIN, SIGTTOU) and whether its parent has already collected that
//! stop with waitpid(WUNTRACED).
//!
//! Dump learns the signal from the group stop the freeze found (a seized
//! task in a job-control stop reports its stop signal), and asks the
//! parent, by an injected `waitid(WSTOPPED | WNOWAIT | WNOHANG)`, whether
//! the stop is still waiting to be reported: the kernel clears a stop's
//! code once the parent has collected it.
//!
//! Restore stops the process again with the same signal (the leader is
//! detached from a syscall stop with it, so the kernel sends it to the
//! process).  The parent, still held, must not get a second SIGCHLD for
//! a stop it was told about once: while its children stop, its SIGCHLD
//! action carries SA_NOCLDSTOP (the kernel then wakes waiters without
//! signalling).  A stop the parent had collected is collected again, by
//! the parent, with an injected `waitid(WSTOPPED | WNOHANG)`.
//!
//! A SIGTSTP, SIGTTIN or SIGTTOU is discarded by the kernel for a process
//! in an orphaned process group; such a process (which the kernel would
//! have sent SIGHUP and SIGCONT when its group became orphaned) is
//! stopped with SIGSTOP instead.

use crate::error::{Error, Result};
use crate::model::Checkpoint;
use crate::task::freeze::Inject;
use std::time::{Duration, Instant};

const P_PID: u64 = 1;
const WNOHANG: u64 = 1;
const WSTOPPED: u64 = 2;
const WNOWAIT: u64 = 0x0100_0000;
const WALL: u64 = 0x4000_0000;
const SA_NOCLDSTOP: u64 = 1;

/// How one restored process is stopped at release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub signal: i32,
    /// The parent had collected the stop: collect it again.
    pub collected: bool,
}

/// Whether the stop of child `child` is still waiting for its parent,
/// asked by the parent `t` itself (without consuming it).
pub fn stop_pending_in_parent(t: &impl Inject, child: i32) -> Result<bool> {
    let info = t.scratch();
    t.write_scratch(0, &[0u8; 128])?;
    t.call(
        libc::SYS_waitid,
        &[
            P_PID,
            child as u64,
            info,
            WSTOPPED | WNOWAIT | WNOHANG | WALL,
            0,
        ],
        &format!("asking whether the stop of child {child} was collected"),
    )?;
    let mut b = [0u8; 20];
    t.read_scratch(0, &mut b)?;
    // siginfo_t: si_pid at byte 16 (0: nothing to report).
    Ok(i32::from_ne_bytes(b[16..20].try_into().expect("4 bytes")) == child)
}

/// The stop plan of every process of the image (None: not stopped).
/// `here` is crest's (session, process group): the root's parent at
/// restore.
pub fn plan(ckpt: &Checkpoint, here: (i32, i32)) -> Vec<Option<Stop>> {
    ckpt.processes
        .iter()
        .map(|p| {
            if !p.stopped {
                return None;
            }
            let mut signal = match p.task_state.stop_signal {
                0 => libc::SIGSTOP,
                s => s,
            };
            if signal != libc::SIGSTOP && orphaned_group(ckpt, p.pgid, here) {
                signal = libc::SIGSTOP;
            }
            Some(Stop {
                signal,
                collected: p.task_state.stop_collected,
            })
        })
        .collect()
}

/// Whether process group `pgid` will be orphaned after the restore: no
/// member has a parent in another group of the same session.
fn orphaned_group(ckpt: &Checkpoint, pgid: i32, here: (i32, i32)) -> bool {
    !ckpt.processes.iter().filter(|q| q.pgid == pgid).any(|q| {
        let (psid, ppgid) = ckpt
            .processes
            .iter()
            .find(|r| r.pid == q.ppid)
            .map(|r| (r.sid, r.pgid))
            .unwrap_or(here);
        psid == q.sid && ppgid != q.pgid
    })
}

/// Reads the SIGCHLD action of `t` and sets it again with SA_NOCLDSTOP;
/// returns the original `struct sigaction` bytes for [`restore_sigchld`].
pub fn quiet_sigchld(t: &impl Inject) -> Result<Vec<u8>> {
    let len = crate::task::signals::KSIGACTION_LEN;
    let s = t.scratch();
    t.call(
        libc::SYS_rt_sigaction,
        &[libc::SIGCHLD as u64, 0, s, 8],
        "reading the SIGCHLD action",
    )?;
    let mut old = vec![0u8; len];
    t.read_scratch(0, &mut old)?;
    let mut quiet = old.clone();
    let flags = u64::from_ne_bytes(quiet[8..16].try_into().expect("8 bytes")) | SA_NOCLDSTOP;
    quiet[8..16].copy_from_slice(&flags.to_ne_bytes());
    t.write_scratch(0, &quiet)?;
    t.call(
        libc::SYS_rt_sigaction,
        &[libc::SIGCHLD as u64, s, 0, 8],
        "keeping its children's stops from signalling it while they are restored",
    )?;
    Ok(old)
}

/// Puts back the SIGCHLD action [`quiet_sigchld`] returned.
pub fn restore_sigchld(t: &impl Inject, old: &[u8]) -> Result<()> {
    t.write_scratch(0, old)?;
    t.call(
        libc::SYS_rt_sigaction,
        &[libc::SIGCHLD as u64, t.scratch(), 0, 8],
        "restoring the SIGCHLD action",
    )
    .map(drop)
}

/// Collects, in the parent `t`, the stop of `child` (which it had
/// collected before the checkpoint).
pub fn collect_again(t: &impl Inject, child: i32) -> Result<()> {
    let got = t.call(
        libc::SYS_waitid,
        &[
            P_PID,
            child as u64,
            t.scratch(),
            WSTOPPED | WNOHANG | WALL,
            0,
        ],
        &format!("collecting the stop of child {child} again"),
    )?;
    let mut b = [0u8; 20];
    t.read_scratch(0, &mut b)?;
    if got != 0 || i32::from_ne_bytes(b[16..20].try_into().expect("4 bytes")) != child {
        return Err(Error::msg(format!(
            "pid {}: the stop of child {child} could not be collected again",
            t.pid()
        )));
    }
    Ok(())
}

/// Waits until task `tid` is in a stop (state T) for up to `limit`.
pub fn wait_stopped(tid: i32, limit: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        if matches!(crest_sys::proc::read_stat(tid), Ok(st) if st.state == 'T') {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
