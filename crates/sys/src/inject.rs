//! Running system calls as another task, without loading code into it.
//!
//! The task sits in a ptrace stop.  To make it run `syscall(nr, args…)`
//! crest points its RIP at a `syscall` instruction that is mapped in the
//! task, loads the number and arguments into its registers and resumes it
//! with PTRACE_SYSCALL: the kernel stops it at the syscall's entry and
//! exit, and crest reads the result at the exit stop.  `orig_rax` is -1
//! so the kernel's syscall-restart logic never touches the injected call.
//!
//! Between calls the task holds its own registers again — with an
//! interrupted syscall already set to restart, as the kernel's signal
//! path would have done — so if crest dies at any stop the kernel lets
//! the task go and it simply carries on.  No single-step trap flag is
//! ever armed.  A signal that arrives meanwhile is taken off (its siginfo
//! kept, see [`Remote::take_suppressed`]) so the caller can queue it
//! again when done.
//!
//! # Self-unwinding calls
//!
//! That alone leaves one window: a task in the middle of an injected call
//! (between setting its registers and putting them back) holds crest's
//! registers, and if crest dies then, the kernel lets it return to user
//! space with them.  A [`Remote::unwinding`] task closes it: its calls run
//! through the code of [`crate::trampoline`] with the stack pointer on a
//! block of the task's own state, and between calls it waits at the
//! trampoline's restoring code.  Whenever crest vanishes, the task
//! finishes the call it is in (if any) and returns to its own registers
//! and signal mask by itself.  Signals cannot be taken off such a task
//! (they stay queued; the caller blocks them meanwhile and the block
//! unblocks them): one that stops the task anyway (SIGSTOP) is delivered
//! as it comes.

use crate::arch::UserRegs;
use crate::ptrace::{self, RawSiginfo, WaitStatus, SYSCALL_STOP};
use crate::trampoline;
use crate::{Error, Result};
use libc::pid_t;
use std::cell::RefCell;

const PTRACE_EVENT_STOP: i32 = 128;

/// A stopped task that crest runs system calls in.  It must have been
/// seized with PTRACE_O_TRACESYSGOOD.
pub struct Remote {
    pid: pid_t,
    syscall_ip: u64,
    base: UserRegs,
    /// What the task resumes with: `base` with a pending restart applied.
    resume: UserRegs,
    suppressed: RefCell<Vec<RawSiginfo>>,
    /// Self-unwinding calls: the trampoline's address and the stack
    /// pointer on the task's signal frame.
    unwind: Option<(u64, u64)>,
}

impl Remote {
    /// `pid` must be in a ptrace stop; `syscall_ip` is the address of a
    /// `syscall` instruction (bytes 0f 05) mapped executable in it.
    pub fn new(pid: pid_t, syscall_ip: u64) -> Result<Self> {
        let base = ptrace::get_regs(pid)?;
        Ok(Remote {
            pid,
            syscall_ip,
            base,
            resume: base.restarted_in_place(),
            suppressed: RefCell::new(Vec::new()),
            unwind: None,
        })
    }

    /// A task whose calls unwind themselves if crest dies (see the module
    /// documentation).  `tramp` is the address of [`trampoline::TRAMPOLINE`]
    /// mapped executable in the task, `sp` the address of a
    /// [`trampoline::Block`] of the task's own state, already written.
    /// The task is parked at the trampoline's [`trampoline::PARK`] at once; it
    /// holds its own registers again after [`Remote::restore_regs`].
    /// `base` are its registers as read before the frame was built.
    pub fn unwinding(pid: pid_t, base: UserRegs, tramp: u64, sp: u64) -> Result<Self> {
        let r = Remote {
            pid,
            syscall_ip: tramp + trampoline::PLAIN_ENTRY,
            base,
            resume: base.restarted_in_place(),
            suppressed: RefCell::new(Vec::new()),
            unwind: Some((tramp, sp)),
        };
        let mut park = base;
        park.rip = tramp + trampoline::PARK;
        park.rsp = sp;
        park.orig_rax = u64::MAX;
        ptrace::set_regs(pid, &park)?;
        Ok(r)
    }

    pub fn pid(&self) -> pid_t {
        self.pid
    }

    /// The registers the task had when this `Remote` was made.
    pub fn saved_regs(&self) -> &UserRegs {
        &self.base
    }

    /// Signals that arrived while syscalls ran and were taken off; the
    /// caller queues them again.
    pub fn take_suppressed(&self) -> Vec<RawSiginfo> {
        std::mem::take(&mut self.suppressed.borrow_mut())
    }

    /// Resumes to the next syscall stop, taking off any signal that
    /// stops the task first.
    fn to_syscall_stop(&self, nr: i64) -> Result<()> {
        ptrace::syscall(self.pid, 0)?;
        loop {
            match ptrace::wait(self.pid)? {
                WaitStatus::Stopped {
                    sig: SYSCALL_STOP, ..
                } => return Ok(()),
                WaitStatus::Stopped { event: 0, sig } if self.unwind.is_some() => {
                    // Only a signal that cannot be blocked gets here
                    // (SIGSTOP): the task stops as it would have.
                    ptrace::syscall(self.pid, sig)?;
                }
                WaitStatus::Stopped { event: 0, .. } => {
                    // A signal about to be delivered: keep it for later.
                    let info = ptrace::get_siginfo(self.pid)?;
                    self.suppressed.borrow_mut().push(info);
                    ptrace::syscall(self.pid, 0)?;
                }
                WaitStatus::Stopped {
                    event: PTRACE_EVENT_STOP,
                    ..
                } => ptrace::syscall(self.pid, 0)?,
                other => {
                    return Err(Error::parse(
                        format!("pid {}", self.pid),
                        format!("unexpected {other:?} while running injected syscall {nr}"),
                    ))
                }
            }
        }
    }

    /// Runs one system call in the task and returns its raw result (a
    /// negative errno on failure).
    pub fn raw_syscall(&self, nr: i64, args: &[u64]) -> Result<i64> {
        self.run_call(nr, args, None)
    }

    /// Runs a system call whose result is a new descriptor in the task and
    /// closes that descriptor again in the task; `take(result)` runs in
    /// between (to take the descriptor over with pidfd_getfd).  In an
    /// unwinding task the close is part of the trampoline: if crest dies
    /// after the call, the task closes the descriptor itself.
    pub fn raw_syscall_closing(
        &self,
        nr: i64,
        args: &[u64],
        take: &mut dyn FnMut(i64),
    ) -> Result<i64> {
        if self.unwind.is_none() {
            let r = self.raw_syscall(nr, args)?;
            take(r);
            if r >= 0 {
                self.raw_syscall(libc::SYS_close, &[r as u64])?;
            }
            return Ok(r);
        }
        self.run_call(nr, args, Some(take))
    }

    fn run_call(&self, nr: i64, args: &[u64], take: Option<&mut dyn FnMut(i64)>) -> Result<i64> {
        let mut r = self.base;
        let arg = |i: usize| args.get(i).copied().unwrap_or(0);
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rip = self.syscall_ip;
        r.rdi = arg(0);
        r.rsi = arg(1);
        r.rdx = arg(2);
        r.r10 = arg(3);
        r.r8 = arg(4);
        r.r9 = arg(5);
        let closing = take.is_some();
        let (expect, result_at) = match self.unwind {
            Some((tramp, sp)) => {
                r.rsp = sp;
                if closing {
                    r.rip = tramp + trampoline::CLOSING_ENTRY;
                }
                let ret = tramp
                    + if closing {
                        trampoline::CLOSING_RETURN
                    } else {
                        trampoline::PARK
                    };
                (tramp + trampoline::PARK, ret)
            }
            None => (self.syscall_ip + 2, self.syscall_ip + 2),
        };
        ptrace::set_regs(self.pid, &r)?;
        self.to_syscall_stop(nr)?; // entry
        self.to_syscall_stop(nr)?; // exit
        let mut after = ptrace::get_regs(self.pid)?;
        let result = after.rax as i64;
        if let Some(take) = take {
            if after.rip == result_at {
                take(result);
                // The trampoline's close.
                self.to_syscall_stop(nr)?;
                self.to_syscall_stop(nr)?;
                after = ptrace::get_regs(self.pid)?;
            }
        }
        if self.unwind.is_none() {
            // The task's own registers again at once: if crest dies before
            // the next call, the task carries on as if never stopped.
            ptrace::set_regs(self.pid, &self.resume)?;
        }
        // An unwinding task stays parked in the trampoline.
        if after.rip != expect {
            return Err(Error::parse(
                format!("pid {}", self.pid),
                format!(
                    "injected syscall {nr} stopped at {:#x}, expected {expect:#x}",
                    after.rip
                ),
            ));
        }
        Ok(result)
    }

    /// Reads the dispositions of signals `first..end` (1 ≤ first < end ≤
    /// 65) into the task's memory at `buf` (`struct sigaction` of signal
    /// `sig` at `buf + (sig - first) * 32`) with one injected call: the
    /// trampoline's batch entry (see [`crate::trampoline`]).  Returns the
    /// `clone` result (the helper thread's id, or a negative errno: then
    /// nothing was read).  Unwinding tasks only; the task's seccomp
    /// filters, if any, would apply to the helper thread, which crest
    /// does not trace: the caller must make sure it has none.
    pub fn batch_sigactions(&self, first: i32, end: i32, buf: u64) -> Result<i64> {
        let Some((tramp, sp)) = self.unwind else {
            return Err(Error::parse(
                format!("pid {}", self.pid),
                "batched calls need the unwinding trampoline".to_string(),
            ));
        };
        if !(1 <= first && first < end && end <= 65) {
            return Err(Error::parse(
                format!("pid {}", self.pid),
                format!("signals {first}..{end}: not a range of signals"),
            ));
        }
        let nr = libc::SYS_clone;
        let mut r = self.base;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rip = tramp + trampoline::BATCH_ENTRY;
        r.rsp = sp;
        r.rdi = trampoline::BATCH_CLONE_FLAGS;
        (r.rsi, r.rdx, r.r10, r.r8, r.r9) = (0, 0, 0, 0, 0);
        r.rbx = first as u64;
        r.r13 = end as u64;
        r.r12 = buf.wrapping_sub(first as u64 * trampoline::BATCH_STRIDE);
        ptrace::set_regs(self.pid, &r)?;
        self.to_syscall_stop(nr)?; // entry
        self.to_syscall_stop(nr)?; // exit, once the thread has exited
        let after = ptrace::get_regs(self.pid)?;
        // The task stays at the batch return: from there, on its own, it
        // goes to the trampoline's park and restores itself.
        let expect = tramp + trampoline::BATCH_RETURN;
        if after.rip != expect {
            return Err(Error::parse(
                format!("pid {}", self.pid),
                format!(
                    "the batched signal reads stopped at {:#x}, expected {expect:#x}",
                    after.rip
                ),
            ));
        }
        Ok(after.rax as i64)
    }

    /// Runs one system call and turns a negative result into an error
    /// that says what was attempted (`what`) in which task.
    pub fn syscall(&self, nr: i64, args: &[u64], what: &str) -> Result<u64> {
        let r = self.raw_syscall(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(Error::io(
                format!("pid {}: {what}", self.pid),
                std::io::Error::from_raw_os_error(-r as i32),
            ));
        }
        Ok(r as u64)
    }

    /// Runs code already mapped in the task at `ip` until it executes the
    /// `int3` whose next byte is at `trap_at`, with registers prepared by
    /// `setup` from the task's own; the task's registers are put back
    /// afterwards and the registers at the trap are returned.  Any other
    /// signal (a SIGTRAP from elsewhere too) is taken off as in
    /// [`Remote::raw_syscall`].
    pub fn run_until_trap(
        &self,
        ip: u64,
        trap_at: u64,
        setup: impl FnOnce(&mut UserRegs),
    ) -> Result<UserRegs> {
        if self.unwind.is_some() {
            return Err(Error::parse(
                format!("pid {}", self.pid),
                "code runs only in a task that does not unwind",
            ));
        }
        let mut r = self.base;
        r.rip = ip;
        r.orig_rax = u64::MAX;
        setup(&mut r);
        ptrace::set_regs(self.pid, &r)?;
        ptrace::cont(self.pid, 0)?;
        let at = loop {
            match ptrace::wait(self.pid)? {
                WaitStatus::Stopped { sig, event: 0 } => {
                    let regs = ptrace::get_regs(self.pid)?;
                    if sig == libc::SIGTRAP && regs.rip == trap_at {
                        break regs;
                    }
                    let info = ptrace::get_siginfo(self.pid)?;
                    self.suppressed.borrow_mut().push(info);
                    ptrace::cont(self.pid, 0)?;
                }
                WaitStatus::Stopped { .. } => ptrace::cont(self.pid, 0)?,
                other => {
                    return Err(Error::parse(
                        format!("pid {}", self.pid),
                        format!("unexpected {other:?} while running injected code"),
                    ))
                }
            }
        };
        ptrace::set_regs(self.pid, &self.resume)?;
        Ok(at)
    }

    /// Puts back the registers the task resumes with.
    pub fn restore_regs(&self) -> Result<()> {
        ptrace::set_regs(self.pid, &self.resume)
    }
}

/// Finds a `syscall` instruction in `code` (bytes mapped at `base`).
pub fn find_syscall_insn(code: &[u8], base: u64) -> Option<u64> {
    code.windows(2)
        .position(|w| w == crate::arch::SYSCALL_INSN)
        .map(|i| base + i as u64)
}
