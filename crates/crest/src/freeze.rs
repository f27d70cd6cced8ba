//! Freezing a task with ptrace and running syscalls in it while frozen.
//!
//! A [`Frozen`] task is seized and stopped; dropping it without
//! [`Frozen::kill`] lets the task run on exactly as before.  A
//! [`Session`] borrows a frozen task to run syscalls in it: it blocks
//! signals, maps one scratch page and puts everything back when closed.

use crate::error::{Context, Error, Result};
use crest_sys::inject::{find_syscall_insn, Remote};
use crest_sys::mem::ProcMem;
use crest_sys::proc::MapEntry;
use crest_sys::ptrace::{self, WaitStatus};

const PTRACE_EVENT_STOP: i32 = 128;

/// A seized, stopped task.
pub struct Frozen {
    pid: i32,
    attached: bool,
}

impl Frozen {
    /// Seizes `pid` and stops it.  A signal that was about to be
    /// delivered is delivered first, as it would have been anyway.
    pub fn freeze(pid: i32) -> Result<Frozen> {
        ptrace::seize(pid, ptrace::SEIZE_OPTIONS).context(|| {
            format!("cannot attach to pid {pid} (is it yours, and not traced already?)")
        })?;
        let mut f = Frozen {
            pid,
            attached: true,
        };
        ptrace::interrupt(pid)?;
        loop {
            match ptrace::wait(pid)? {
                WaitStatus::Stopped {
                    event: PTRACE_EVENT_STOP,
                    sig,
                } => {
                    if sig != libc::SIGTRAP {
                        // A group stop (SIGSTOP/SIGTSTP…): not supported yet.
                        f.detach_now();
                        return Err(Error::Unsupported(vec![crate::Obstacle {
                            pid,
                            object: "task".into(),
                            reason: "the task is stopped by a signal (job control); \
                                     send it SIGCONT first"
                                .into(),
                        }]));
                    }
                    return Ok(f);
                }
                WaitStatus::Stopped { sig, event: 0 } => {
                    // Signal-delivery stop: deliver it and wait for our stop.
                    ptrace::cont(pid, sig)?;
                }
                WaitStatus::Stopped { .. } | WaitStatus::Continued => {
                    ptrace::cont(pid, 0)?;
                }
                WaitStatus::Exited(c) => {
                    f.attached = false;
                    return Err(Error::msg(format!(
                        "pid {pid} exited with status {c} while being frozen"
                    )));
                }
                WaitStatus::Signaled(s) => {
                    f.attached = false;
                    return Err(Error::msg(format!(
                        "pid {pid} was killed by signal {s} while being frozen"
                    )));
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn detach_now(&mut self) {
        if self.attached {
            self.attached = false;
            let _ = ptrace::detach(self.pid, 0);
        }
    }

    /// Lets the task run on.
    pub fn release(mut self) -> Result<()> {
        self.attached = false;
        ptrace::detach(self.pid, 0)
            .context(|| format!("resuming pid {} after the checkpoint", self.pid))
    }

    /// Kills the frozen task and waits until it is gone.
    pub fn kill(mut self) -> Result<()> {
        self.attached = false;
        crest_sys::process::kill(self.pid, libc::SIGKILL)?;
        loop {
            match ptrace::wait(self.pid) {
                Ok(WaitStatus::Exited(_)) | Ok(WaitStatus::Signaled(_)) => return Ok(()),
                Ok(_) => {
                    let _ = ptrace::cont(self.pid, 0);
                }
                // ECHILD: the parent reaped it already.
                Err(e) if e.errno() == Some(libc::ECHILD) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.detach_now();
    }
}

/// A stopped task crest runs syscalls in, with a scratch area in its
/// address space for syscall arguments: the dump-side [`Session`] and the
/// restore-side stub implement it, so each kernel concept's code can read
/// and write its state the same way in both directions.
pub trait Inject {
    fn pid(&self) -> i32;
    /// Runs a syscall in the task; a negative result is an error naming `what`.
    fn call(&self, nr: i64, args: &[u64], what: &str) -> Result<u64>;
    /// Address of the scratch area in the task.
    fn scratch(&self) -> u64;
    fn read_scratch(&self, off: u64, buf: &mut [u8]) -> Result<()>;
    fn write_scratch(&self, off: u64, data: &[u8]) -> Result<()>;

    /// prctl(2) run in the task.
    fn prctl(&self, option: i32, args: &[u64], what: &str) -> Result<u64> {
        let mut a = [0u64; 5];
        a[0] = option as u64;
        a[1..1 + args.len()].copy_from_slice(args);
        self.call(libc::SYS_prctl, &a, what)
    }
}

impl Inject for Session {
    fn pid(&self) -> i32 {
        self.remote.pid()
    }
    fn call(&self, nr: i64, args: &[u64], what: &str) -> Result<u64> {
        crate::fault::point("dump: injected syscall")?;
        Ok(self.remote.syscall(nr, args, what)?)
    }
    fn scratch(&self) -> u64 {
        self.scratch
    }
    fn read_scratch(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.mem.read(self.scratch + off, buf)?)
    }
    fn write_scratch(&self, off: u64, data: &[u8]) -> Result<()> {
        Ok(self.mem.write(self.scratch + off, data)?)
    }
}

/// Size of the scratch area a session maps in the task.
pub const SCRATCH_LEN: u64 = 4 * 4096;

/// Syscalls running in a frozen task, with a scratch area for arguments.
pub struct Session {
    remote: Remote,
    scratch: u64,
    sigmask: u64,
    mem: ProcMem,
    closed: bool,
}

impl Session {
    /// Starts running syscalls in the frozen task.  `maps` are its
    /// mappings, searched for a `syscall` instruction (vDSO first).
    pub fn open(task: &Frozen, maps: &[MapEntry]) -> Result<Session> {
        let pid = task.pid();
        let mem = ProcMem::open(pid, true)?;
        let ip = find_syscall_in(&mem, maps)?.ok_or_else(|| {
            Error::msg(format!(
                "pid {pid}: no `syscall` instruction found in its executable mappings"
            ))
        })?;
        let sigmask = ptrace::get_sigmask(pid)?;
        ptrace::set_sigmask(pid, !0u64)?;
        let remote = Remote::new(pid, ip)?;
        let mut s = Session {
            remote,
            scratch: 0,
            sigmask,
            mem,
            closed: false,
        };
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        s.scratch = s.remote.syscall(
            libc::SYS_mmap,
            &[0, SCRATCH_LEN, prot, flags, u64::MAX, 0],
            "mapping a scratch area",
        )?;
        Ok(s)
    }

    /// The registers the task had when it was frozen.
    pub fn regs(&self) -> &crest_sys::arch::UserRegs {
        self.remote.saved_regs()
    }

    /// The blocked-signal mask the task had when it was frozen.
    pub fn sigmask(&self) -> u64 {
        self.sigmask
    }

    /// Runs a syscall in the task and returns the raw result.
    pub fn raw_syscall(&self, nr: i64, args: &[u64]) -> Result<i64> {
        Ok(self.remote.raw_syscall(nr, args)?)
    }

    /// Unmaps the scratch area and puts back registers and signal mask.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<()> {
        let pid = self.remote.pid();
        if self.scratch != 0 {
            self.remote.syscall(
                libc::SYS_munmap,
                &[self.scratch, SCRATCH_LEN],
                "unmapping the scratch area",
            )?;
            self.scratch = 0;
        }
        self.remote.restore_regs()?;
        ptrace::set_sigmask(pid, self.sigmask)?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.cleanup();
        }
    }
}

/// Looks for the bytes of a `syscall` instruction in the vDSO, then in
/// any other executable mapping.
fn find_syscall_in(mem: &ProcMem, maps: &[MapEntry]) -> Result<Option<u64>> {
    let mut order: Vec<&MapEntry> = maps
        .iter()
        .filter(|m| m.exec && m.path != "[vsyscall]")
        .collect();
    order.sort_by_key(|m| m.path != "[vdso]");
    let mut buf = vec![0u8; 64 * 1024];
    for m in order {
        let mut addr = m.start;
        while addr < m.end {
            let n = ((m.end - addr) as usize).min(buf.len());
            if mem.read(addr, &mut buf[..n]).is_err() {
                break;
            }
            if let Some(ip) = find_syscall_insn(&buf[..n], addr) {
                return Ok(Some(ip));
            }
            // Keep one byte of overlap so an instruction split across
            // reads is found.
            addr += (n as u64).saturating_sub(1).max(1);
        }
    }
    Ok(None)
}
