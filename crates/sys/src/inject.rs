//! Running system calls as another task, without loading code into it.
//!
//! The task sits in a ptrace stop.  To make it run `syscall(nr, args…)`
//! crest points its RIP at a `syscall` instruction that is mapped in the
//! task, loads the number and arguments into its registers and
//! single-steps it: the kernel runs the call as that task and stops it
//! again right after.  `orig_rax` is set to -1 so the kernel's
//! syscall-restart logic never touches the injected call.
//!
//! Signals must be blocked in the task meanwhile (see
//! [`crate::ptrace::set_sigmask`]), or a pending signal would stop it
//! before the call instead of after.

use crate::arch::UserRegs;
use crate::ptrace::{self, WaitStatus};
use crate::{Error, Result};
use libc::pid_t;

/// A stopped task that crest runs system calls in.
pub struct Remote {
    pid: pid_t,
    syscall_ip: u64,
    base: UserRegs,
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
        })
    }

    pub fn pid(&self) -> pid_t {
        self.pid
    }

    /// The registers the task had when this `Remote` was made.
    pub fn saved_regs(&self) -> &UserRegs {
        &self.base
    }

    /// Runs one system call in the task and returns its raw result (a
    /// negative errno on failure).
    pub fn raw_syscall(&self, nr: i64, args: &[u64]) -> Result<i64> {
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
        r.eflags &= !0x100; // TF: the kernel sets it for the step
        ptrace::set_regs(self.pid, &r)?;
        ptrace::singlestep(self.pid, 0)?;
        match ptrace::wait(self.pid)? {
            WaitStatus::Stopped {
                sig: libc::SIGTRAP, ..
            } => {}
            other => {
                return Err(Error::parse(
                    format!("pid {}", self.pid),
                    format!("unexpected {other:?} while running injected syscall {nr}"),
                ))
            }
        }
        let after = ptrace::get_regs(self.pid)?;
        // Put the task's own registers back at once: if crest dies before
        // the next call, the kernel lets the task go exactly as it was.
        ptrace::set_regs(self.pid, &self.base)?;
        if after.rip != self.syscall_ip + 2 {
            return Err(Error::parse(
                format!("pid {}", self.pid),
                format!(
                    "injected syscall {nr} stopped at {:#x}, expected {:#x}",
                    after.rip,
                    self.syscall_ip + 2
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

    /// Puts back the registers the task had when this `Remote` was made.
    pub fn restore_regs(&self) -> Result<()> {
        ptrace::set_regs(self.pid, &self.base)
    }
}

/// Finds a `syscall` instruction in `code` (bytes mapped at `base`).
pub fn find_syscall_insn(code: &[u8], base: u64) -> Option<u64> {
    code.windows(2)
        .position(|w| w == crate::arch::SYSCALL_INSN)
        .map(|i| base + i as u64)
}

impl Remote {
    /// A `Remote` whose base registers are not read yet (the task is not
    /// stopped); [`Remote::new`] must replace it before any syscall.
    pub fn new_unchecked(pid: pid_t, syscall_ip: u64) -> Self {
        Remote {
            pid,
            syscall_ip,
            base: UserRegs::default(),
        }
    }
}
