//! The stub: the process that becomes the restored task.
//!
//! crest forks it with clone3(set_tid) so it has the checkpointed PID.  In
//! the child, before anything else runs, a short allocation-free routine
//! puts the descriptors in place, joins the session and process group,
//! sets cwd/root, umask, personality, name and signal dispositions, maps
//! a small helper area holding a `syscall` instruction, and stops itself
//! under ptrace.  crest then empties its address space and rebuilds the
//! checkpointed one through syscalls it injects at that instruction.  The
//! last one unmaps the helper area; the thread then gets its final
//! registers and is let go.  Until then the stub dies with crest
//! (PTRACE_O_EXITKILL), and dropping a `Stub` kills it.

use crate::error::{Context, Error, Result};
use crate::freeze::Inject;
use crate::model::{Backing, SigAction, Vma};
use crest_sys::arch::UserRegs;
use crest_sys::inject::Remote;
use crest_sys::mem::ProcMem;
use crest_sys::process::{self, Forked};
use crest_sys::ptrace::{self, WaitStatus};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Size of the helper area: one code page plus the scratch pages.
const SCRATCH_PAGES: u64 = 4;
const ARCH_MAP_VDSO_64: u64 = 0x2003;
const RSEQ_FLAG_UNREGISTER: u64 = 1;

/// A descriptor crest holds that the stub must have at `dst`.
pub struct FdMove {
    pub src: i32,
    pub dst: i32,
    pub cloexec: bool,
}

/// Everything the stub's child routine does, computed before the fork.
pub struct StubPlan {
    pub pid: i32,
    pub setsid: bool,
    pub pgid: Option<i32>,
    pub moves: Vec<FdMove>,
    /// Lowest number above every source and destination descriptor.
    pub floor: i32,
    pub cwd_fd: i32,
    pub root_fd: Option<i32>,
    pub umask: u32,
    pub personality: u32,
    pub comm: [u8; 16],
    pub actions: Vec<SigAction>,
    pub helper: u64,
    /// Descriptor (source number in crest) the child reports failure on.
    pub err_src: i32,
    pub err_dst: i32,
}

/// Failure codes the child reports: the step that failed.
const STEPS: [&str; 12] = [
    "checking its parent",
    "blocking signals",
    "joining its session or process group",
    "moving descriptors aside",
    "placing descriptors",
    "setting root and cwd",
    "setting umask and personality",
    "setting its name",
    "setting signal actions",
    "mapping the helper area",
    "stopping for ptrace",
    "unexpected resume",
];

/// The restored task while it is being built.
pub struct Stub {
    pid: i32,
    remote: Remote,
    helper: u64,
    mem: ProcMem,
    alive: bool,
}

fn helper_len() -> u64 {
    (1 + SCRATCH_PAGES) * crate::memory::page_size()
}

/// Picks an address for the helper area that is free both in crest now
/// (the stub starts as crest's copy) and in the checkpointed layout.
pub fn pick_helper_addr(vmas: &[Vma]) -> Result<u64> {
    let mine = crest_sys::proc::read_maps(std::process::id() as i32)?;
    let len = helper_len();
    let margin = 1u64 << 20;
    let busy = |a: u64| {
        let (lo, hi) = (a.saturating_sub(margin), a + len + margin);
        mine.iter().any(|m| m.start < hi && lo < m.end)
            || vmas.iter().any(|v| v.start < hi && lo < v.end)
    };
    let mut a: u64 = 0x5000_0000_0000;
    while a > 0x1000_0000 {
        if !busy(a) {
            return Ok(a);
        }
        a -= 0x10_0000_0000;
    }
    Err(Error::msg("no free address range for the restore helper"))
}

/// SAFETY contract: runs in the forked child; only raw syscalls on data
/// prepared before the fork; never returns.
unsafe fn child(p: &StubPlan, tmp: &mut [i32], parent: i32) -> ! {
    let mut errfd = p.err_src;
    let fail = |step: usize, errfd: i32| -> ! {
        let e = *libc::__errno_location();
        let msg = [step as i32, e];
        libc::write(errfd, msg.as_ptr().cast(), 8);
        libc::_exit(100 + step as i32)
    };
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 || libc::getppid() != parent
    {
        fail(0, errfd);
    }
    let all: u64 = !0;
    if libc::syscall(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        &all,
        0usize,
        8usize,
    ) != 0
    {
        fail(1, errfd);
    }
    if p.setsid && libc::setsid() < 0 {
        fail(2, errfd);
    }
    if let Some(pg) = p.pgid {
        if libc::setpgid(0, pg) != 0 {
            fail(2, errfd);
        }
    }
    // Move every source above `floor`, close everything below, then put
    // each at its final number.
    for (i, m) in p.moves.iter().enumerate() {
        let t = libc::fcntl(m.src, libc::F_DUPFD_CLOEXEC, p.floor);
        if t < 0 {
            fail(3, errfd);
        }
        tmp[i] = t;
        if m.src == p.err_src {
            errfd = t;
        }
    }
    let e2 = libc::fcntl(errfd, libc::F_DUPFD_CLOEXEC, p.floor);
    if e2 < 0 {
        fail(3, errfd);
    }
    errfd = e2;
    libc::syscall(libc::SYS_close_range, 0u32, (p.floor - 1) as u32, 0u32);
    for (i, m) in p.moves.iter().enumerate() {
        let flags = if m.cloexec { libc::O_CLOEXEC } else { 0 };
        if libc::dup3(tmp[i], m.dst, flags) < 0 {
            fail(4, errfd);
        }
        if m.dst == p.err_dst {
            errfd = m.dst;
        }
    }
    libc::syscall(libc::SYS_close_range, p.floor as u32, u32::MAX, 0u32);
    if let Some(r) = p.root_fd {
        if libc::fchdir(r) != 0 || libc::chroot(c".".as_ptr()) != 0 {
            fail(5, errfd);
        }
    }
    if libc::fchdir(p.cwd_fd) != 0 {
        fail(5, errfd);
    }
    libc::umask(p.umask as libc::mode_t);
    if libc::personality(p.personality as libc::c_ulong) < 0 {
        fail(6, errfd);
    }
    if libc::prctl(libc::PR_SET_NAME, p.comm.as_ptr(), 0, 0, 0) != 0 {
        fail(7, errfd);
    }
    for a in &p.actions {
        let k = crate::signals::ksigaction_bytes(a);
        if libc::syscall(libc::SYS_rt_sigaction, a.signo, k.as_ptr(), 0usize, 8usize) != 0 {
            fail(8, errfd);
        }
    }
    let ps = libc::sysconf(libc::_SC_PAGESIZE) as usize;
    let len = (1 + SCRATCH_PAGES as usize) * ps;
    let h = libc::mmap(
        p.helper as *mut libc::c_void,
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
        -1,
        0,
    );
    if h as u64 != p.helper {
        fail(9, errfd);
    }
    let code = h as *mut u8;
    std::ptr::write_bytes(code, 0xcc, ps); // int3 everywhere else
    *code = crest_sys::arch::SYSCALL_INSN[0];
    *code.add(1) = crest_sys::arch::SYSCALL_INSN[1];
    if libc::mprotect(h, ps, libc::PROT_READ | libc::PROT_EXEC) != 0 {
        fail(9, errfd);
    }
    if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
        fail(10, errfd);
    }
    libc::kill(libc::getpid(), libc::SIGSTOP);
    fail(11, errfd)
}

impl Stub {
    /// Forks the stub with the plan's PID and waits until it has stopped
    /// itself, ready for injection.
    pub fn spawn(plan: &StubPlan, err_read: i32) -> Result<Stub> {
        let mut tmp = vec![0i32; plan.moves.len()];
        let parent = std::process::id() as i32;
        // SAFETY: the child runs only `child`, which makes raw syscalls on
        // memory prepared before the fork and never returns.
        let pid = match unsafe { process::clone_with_pid(plan.pid)? } {
            Forked::Child => unsafe { child(plan, &mut tmp, parent) },
            Forked::Parent(pid) => pid,
        };
        let mut stub = Stub {
            pid,
            remote: Remote::new_unchecked(pid, plan.helper),
            helper: plan.helper,
            mem: ProcMem::open(pid, true).or_else(|_| ProcMem::open(parent, false))?,
            alive: true,
        };
        match ptrace::wait(pid)? {
            WaitStatus::Stopped {
                sig: libc::SIGSTOP, ..
            } => {}
            WaitStatus::Exited(code) => {
                stub.alive = false;
                let mut msg = [0i32; 2];
                // SAFETY: reading 8 bytes into a local array.
                let n = unsafe { libc::read(err_read, msg.as_mut_ptr().cast(), 8) };
                let step = STEPS
                    .get(msg[0] as usize)
                    .copied()
                    .unwrap_or("an unknown step");
                let err = if n == 8 {
                    std::io::Error::from_raw_os_error(msg[1]).to_string()
                } else {
                    format!("exit status {code}")
                };
                return Err(Error::msg(format!(
                    "restoring pid {pid}: the new process failed {step}: {err}"
                )));
            }
            other => {
                return Err(Error::msg(format!(
                    "restoring pid {pid}: the new process did not stop as expected ({other:?})"
                )))
            }
        }
        ptrace::set_options(pid, libc::PTRACE_O_EXITKILL as u32)?;
        stub.mem = ProcMem::open(pid, true)?;
        stub.remote = Remote::new(pid, plan.helper)?;
        Ok(stub)
    }

    /// Removes everything crest's copy left in the stub's address space
    /// (and its rseq registration, which points into it).
    pub fn empty_address_space(&self) -> Result<()> {
        let rseq = ptrace::get_rseq_config(self.pid)?;
        if rseq.rseq_abi_pointer != 0 {
            self.call(
                libc::SYS_rseq,
                &[
                    rseq.rseq_abi_pointer,
                    rseq.rseq_abi_size as u64,
                    RSEQ_FLAG_UNREGISTER,
                    rseq.signature as u64,
                ],
                "unregistering the inherited rseq area",
            )?;
        }
        let hend = self.helper + helper_len();
        for m in crest_sys::proc::read_maps(self.pid)? {
            if m.path == "[vsyscall]" || (m.start >= self.helper && m.end <= hend) {
                continue;
            }
            self.call(
                libc::SYS_munmap,
                &[m.start, m.end - m.start],
                &format!("unmapping {:#x}-{:#x} {}", m.start, m.end, m.path),
            )?;
        }
        Ok(())
    }

    /// Maps the vDSO where the image had it and checks the layout matches.
    pub fn map_vdso(&self, vmas: &[Vma]) -> Result<()> {
        let special: Vec<&Vma> = vmas
            .iter()
            .filter(|v| {
                matches!(
                    v.backing,
                    Backing::Vdso | Backing::Vvar | Backing::VvarVclock
                )
            })
            .collect();
        let Some(lowest) = special.iter().map(|v| v.start).min() else {
            return Ok(());
        };
        self.call(
            libc::SYS_arch_prctl,
            &[ARCH_MAP_VDSO_64, lowest],
            &format!("mapping the vDSO at {lowest:#x}"),
        )?;
        let here: Vec<(u64, u64, String)> = crest_sys::proc::read_maps(self.pid)?
            .into_iter()
            .filter(|m| matches!(m.path.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
            .map(|m| (m.start, m.end, m.path))
            .collect();
        let want: Vec<(u64, u64, String)> = special
            .iter()
            .map(|v| (v.start, v.end, v.name.clone()))
            .collect();
        if here != want {
            let show = |l: &[(u64, u64, String)]| {
                l.iter()
                    .map(|(s, e, n)| format!("{n} {:#x}+{:#x}", s, e - s))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Error::Incompatible(format!(
                "this kernel's vDSO layout ({}) differs from the image's ({}); \
                 restoring onto a different kernel build is not supported yet",
                show(&here),
                show(&want)
            )));
        }
        Ok(())
    }

    /// Reads bytes of the stub's memory.
    pub fn read_mem(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.mem.read(addr, buf)?)
    }

    /// Writes pages into the stub.
    pub fn write_pages(&self, addr: u64, data: &[u8]) -> Result<()> {
        crest_sys::mem::write(self.pid, addr, data).context(|| "filling restored memory".into())
    }

    /// Unmaps the helper area, gives the thread its final state and lets
    /// it run.
    pub fn finish(mut self, regs: &UserRegs, xsave: &[u8], sigmask: u64) -> Result<i32> {
        if !xsave.is_empty() {
            ptrace::set_xstate(self.pid, xsave)
                .context(|| format!("pid {}: loading the FPU/vector state (XSAVE)", self.pid))?;
        }
        self.call(
            libc::SYS_munmap,
            &[self.helper, helper_len()],
            "unmapping the restore helper",
        )?;
        ptrace::set_sigmask(self.pid, sigmask)?;
        ptrace::set_regs(self.pid, regs)
            .context(|| format!("pid {}: loading registers", self.pid))?;
        ptrace::detach(self.pid, 0)?;
        self.alive = false;
        Ok(self.pid)
    }
}

impl Inject for Stub {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn call(&self, nr: i64, args: &[u64], what: &str) -> Result<u64> {
        crate::fault::point("restore: injected syscall")?;
        Ok(self.remote.syscall(nr, args, what)?)
    }
    fn scratch(&self) -> u64 {
        self.helper + crate::memory::page_size()
    }
    fn read_scratch(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.mem.read(self.scratch() + off, buf)?)
    }
    fn write_scratch(&self, off: u64, data: &[u8]) -> Result<()> {
        Ok(self.mem.write(self.scratch() + off, data)?)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if self.alive {
            let _ = process::kill(self.pid, libc::SIGKILL);
            let _ = ptrace::wait(self.pid);
        }
    }
}

/// A pipe for the child's failure report: (read end, write end).
pub fn error_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(crest_sys::Error::last_os("pipe2").into());
    }
    // SAFETY: fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The highest descriptor number open in crest now.
pub fn max_open_fd() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .max()
                .unwrap_or(2)
        })
        .unwrap_or(1024)
}

/// Raw number of an owned descriptor.
pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}
