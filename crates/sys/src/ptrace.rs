//! ptrace: seize, interrupt, resume, register sets, signal queues.
//!
//! Each wrapper names the pid in its error.  The register layouts come from
//! [`crate::arch`].

use crate::arch::UserRegs;
use crate::{Error, Result};
use libc::{c_long, c_void, pid_t};
use std::mem::size_of;

const NT_PRSTATUS: usize = 1;
const NT_X86_XSTATE: usize = 0x202;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;

/// Options used when crest seizes a task it is about to checkpoint:
/// syscall stops are reported as SIGTRAP | 0x80.
pub const SEIZE_OPTIONS: u32 = libc::PTRACE_O_TRACESYSGOOD as u32;

/// The stop signal of a syscall-enter or syscall-exit stop.
pub const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;

fn req(request: libc::c_uint, pid: pid_t, addr: usize, data: usize, what: &str) -> Result<c_long> {
    // SAFETY: every caller passes either plain integers or pointers to
    // buffers it owns that are large enough for the request.
    let r = unsafe { libc::ptrace(request, pid, addr as *mut c_void, data as *mut c_void) };
    if r == -1 {
        return Err(Error::last_os(format!("ptrace({what}) of pid {pid}")));
    }
    Ok(r)
}

/// Attaches to `pid` without stopping it (PTRACE_SEIZE).
pub fn seize(pid: pid_t, options: u32) -> Result<()> {
    req(libc::PTRACE_SEIZE, pid, 0, options as usize, "SEIZE").map(drop)
}

/// Stops a seized task (PTRACE_INTERRUPT); a PTRACE_EVENT_STOP follows.
pub fn interrupt(pid: pid_t) -> Result<()> {
    req(libc::PTRACE_INTERRUPT, pid, 0, 0, "INTERRUPT").map(drop)
}

/// Makes the calling process a tracee of its parent (PTRACE_TRACEME).
pub fn traceme() -> Result<()> {
    req(libc::PTRACE_TRACEME, 0, 0, 0, "TRACEME").map(drop)
}

/// Sets ptrace options (PTRACE_O_*).
pub fn set_options(pid: pid_t, options: u32) -> Result<()> {
    req(
        libc::PTRACE_SETOPTIONS,
        pid,
        0,
        options as usize,
        "SETOPTIONS",
    )
    .map(drop)
}

/// Resumes the task, delivering `sig` (0 for none).
pub fn cont(pid: pid_t, sig: i32) -> Result<()> {
    req(libc::PTRACE_CONT, pid, 0, sig as usize, "CONT").map(drop)
}

/// Resumes the task until the next syscall entry or exit.
pub fn syscall(pid: pid_t, sig: i32) -> Result<()> {
    req(libc::PTRACE_SYSCALL, pid, 0, sig as usize, "SYSCALL").map(drop)
}

/// The siginfo of the signal a task is stopped for.
pub fn get_siginfo(pid: pid_t) -> Result<RawSiginfo> {
    let mut info = [0u8; 128];
    req(
        libc::PTRACE_GETSIGINFO,
        pid,
        0,
        info.as_mut_ptr() as usize,
        "GETSIGINFO",
    )?;
    Ok(info)
}

/// Executes one instruction, delivering `sig` (0 for none).
pub fn singlestep(pid: pid_t, sig: i32) -> Result<()> {
    req(libc::PTRACE_SINGLESTEP, pid, 0, sig as usize, "SINGLESTEP").map(drop)
}

/// Detaches from the task, delivering `sig` (0 for none).
pub fn detach(pid: pid_t, sig: i32) -> Result<()> {
    req(libc::PTRACE_DETACH, pid, 0, sig as usize, "DETACH").map(drop)
}

fn get_regset(pid: pid_t, set: usize, buf: &mut [u8], what: &str) -> Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    req(
        libc::PTRACE_GETREGSET,
        pid,
        set,
        &mut iov as *mut libc::iovec as usize,
        what,
    )?;
    Ok(iov.iov_len)
}

fn set_regset(pid: pid_t, set: usize, buf: &[u8], what: &str) -> Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut c_void,
        iov_len: buf.len(),
    };
    req(
        libc::PTRACE_SETREGSET,
        pid,
        set,
        &mut iov as *mut libc::iovec as usize,
        what,
    )
    .map(drop)
}

/// Reads the general registers of a stopped task.
pub fn get_regs(pid: pid_t) -> Result<UserRegs> {
    let mut regs = UserRegs::default();
    let n = get_regset(
        pid,
        NT_PRSTATUS,
        regs.as_bytes_mut(),
        "GETREGSET NT_PRSTATUS",
    )?;
    if n != size_of::<UserRegs>() {
        return Err(Error::parse(
            format!("NT_PRSTATUS of pid {pid}"),
            format!(
                "kernel returned {n} bytes, expected {}",
                size_of::<UserRegs>()
            ),
        ));
    }
    Ok(regs)
}

/// Writes the general registers of a stopped task.
pub fn set_regs(pid: pid_t, regs: &UserRegs) -> Result<()> {
    set_regset(pid, NT_PRSTATUS, regs.as_bytes(), "SETREGSET NT_PRSTATUS")
}

/// Reads the task's XSAVE area.  The kernel tells the size; `max` only
/// bounds the buffer (use [`crate::arch::xsave_size`]).
pub fn get_xstate(pid: pid_t, max: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let n = get_regset(pid, NT_X86_XSTATE, &mut buf, "GETREGSET NT_X86_XSTATE")?;
    buf.truncate(n);
    Ok(buf)
}

/// Writes the task's XSAVE area.
pub fn set_xstate(pid: pid_t, xstate: &[u8]) -> Result<()> {
    set_regset(pid, NT_X86_XSTATE, xstate, "SETREGSET NT_X86_XSTATE")
}

/// The blocked-signal mask of a stopped task.
pub fn get_sigmask(pid: pid_t) -> Result<u64> {
    let mut mask = 0u64;
    req(
        libc::PTRACE_GETSIGMASK,
        pid,
        size_of::<u64>(),
        &mut mask as *mut u64 as usize,
        "GETSIGMASK",
    )?;
    Ok(mask)
}

/// Sets the blocked-signal mask of a stopped task.
pub fn set_sigmask(pid: pid_t, mask: u64) -> Result<()> {
    req(
        libc::PTRACE_SETSIGMASK,
        pid,
        size_of::<u64>(),
        &mask as *const u64 as usize,
        "SETSIGMASK",
    )
    .map(drop)
}

/// The raw 128-byte siginfo of a queued signal.
pub type RawSiginfo = [u8; 128];

/// Reads the pending-signal queue of a stopped task without dequeuing:
/// the thread's own queue, or with `shared` the thread group's.
pub fn peek_siginfo(pid: pid_t, shared: bool) -> Result<Vec<RawSiginfo>> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const BATCH: usize = 32;
    let mut out = Vec::new();
    loop {
        let mut buf = [[0u8; 128]; BATCH];
        let args = PeekArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        let n = req(
            libc::PTRACE_PEEKSIGINFO,
            pid,
            &args as *const PeekArgs as usize,
            buf.as_mut_ptr() as usize,
            "PEEKSIGINFO",
        )? as usize;
        out.extend_from_slice(&buf[..n.min(BATCH)]);
        if n < BATCH {
            return Ok(out);
        }
    }
}

/// A task's rseq registration, as PTRACE_GET_RSEQ_CONFIGURATION reports it.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

/// Reads the rseq registration of a stopped task (pointer 0: none).
pub fn get_rseq_config(pid: pid_t) -> Result<RseqConfig> {
    let mut conf = RseqConfig::default();
    req(
        PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        size_of::<RseqConfig>(),
        &mut conf as *mut RseqConfig as usize,
        "GET_RSEQ_CONFIGURATION",
    )?;
    Ok(conf)
}

/// What `waitpid` reported about a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled(i32),
    /// A ptrace stop: the signal and the PTRACE_EVENT_* (0 for none).
    Stopped {
        sig: i32,
        event: i32,
    },
    Continued,
}

impl WaitStatus {
    fn decode(status: i32) -> WaitStatus {
        if libc::WIFEXITED(status) {
            WaitStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            WaitStatus::Signaled(libc::WTERMSIG(status))
        } else if libc::WIFSTOPPED(status) {
            WaitStatus::Stopped {
                sig: libc::WSTOPSIG(status),
                event: (status >> 16) & 0xff,
            }
        } else {
            WaitStatus::Continued
        }
    }
}

/// Waits for a state change of `pid` (any kind of child, traced or not),
/// retrying on EINTR.
pub fn wait(pid: pid_t) -> Result<WaitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a pointer to a local int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid {
            return Ok(WaitStatus::decode(status));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::io(format!("waitpid({pid})"), err));
        }
    }
}

/// Like [`wait`] but returns `None` at once if nothing changed.
pub fn try_wait(pid: pid_t) -> Result<Option<WaitStatus>> {
    let mut status = 0;
    // SAFETY: plain syscall with a pointer to a local int.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG) };
    match r {
        0 => Ok(None),
        r if r == pid => Ok(Some(WaitStatus::decode(status))),
        _ => Err(Error::last_os(format!("waitpid({pid}, WNOHANG)"))),
    }
}

/// PTRACE_O_SUSPEND_SECCOMP: the tracee's seccomp filters are not applied
/// while it is traced with this option (needs CAP_SYS_ADMIN).
pub const O_SUSPEND_SECCOMP: u32 = 1 << 21;
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// SECCOMP_FILTER_FLAG_LOG as PTRACE_SECCOMP_GET_METADATA reports it.
pub const SECCOMP_FILTER_FLAG_LOG: u64 = 2;

/// The classic-BPF instructions (8 bytes each) of seccomp filter `index`
/// of a stopped task (0: the newest), and its flags; `None` past the last.
pub fn seccomp_filter(pid: pid_t, index: usize) -> Result<Option<(Vec<u64>, u64)>> {
    let n = match req(
        PTRACE_SECCOMP_GET_FILTER,
        pid,
        index,
        0,
        "SECCOMP_GET_FILTER",
    ) {
        Ok(n) => n as usize,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut prog = vec![0u64; n];
    req(
        PTRACE_SECCOMP_GET_FILTER,
        pid,
        index,
        prog.as_mut_ptr() as usize,
        "SECCOMP_GET_FILTER",
    )?;
    let mut meta = [index as u64, 0u64];
    req(
        PTRACE_SECCOMP_GET_METADATA,
        pid,
        size_of::<[u64; 2]>(),
        meta.as_mut_ptr() as usize,
        "SECCOMP_GET_METADATA",
    )?;
    Ok(Some((prog, meta[1])))
}
