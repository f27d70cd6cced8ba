//! Freezing a task with ptrace and running syscalls in it while frozen.
//!
//! A [`Frozen`] task is seized and stopped; dropping it without
//! [`Frozen::kill`] lets the task run on exactly as before.  A
//! [`Session`] borrows a frozen task to run syscalls in it: it blocks
//! signals, maps one scratch page and puts everything back when closed.

use crate::error::{Context, Error, Result};
use crest_sys::inject::{find_syscall_insn, Remote};
use crest_sys::mem::ProcMem;
use crest_sys::proc::{self, MapEntry};
use crest_sys::ptrace::{self, WaitStatus};

const PTRACE_EVENT_STOP: i32 = 128;

/// A seized, stopped task.
pub struct Frozen {
    pid: i32,
    attached: bool,
    /// The task was in a job-control stop when frozen.
    stopped: bool,
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
            stopped: false,
        };
        ptrace::interrupt(pid)?;
        loop {
            match ptrace::wait(pid)? {
                WaitStatus::Stopped {
                    event: PTRACE_EVENT_STOP,
                    sig,
                } => {
                    // SIGTRAP: our interrupt.  Another signal: the task
                    // was in a job-control stop, which the model records
                    // (from /proc) and a detach keeps.
                    f.stopped = sig != libc::SIGTRAP;
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
    pub fn kill(self) -> Result<()> {
        crest_sys::process::kill(self.pid, libc::SIGKILL)?;
        self.kill_wait()
    }

    /// Waits for the task to be gone after a SIGKILL.
    fn kill_wait(mut self) -> Result<()> {
        self.attached = false;
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

/// A seized, stopped process tree: every thread of the root process and
/// of all its descendants.
pub struct FrozenTree {
    /// Processes, parents before children: (pid, tids with the leader first).
    pub procs: Vec<(i32, Vec<i32>)>,
    tasks: Vec<Frozen>,
}

impl FrozenTree {
    /// Seizes and stops every task of the tree rooted at `root`.  Tasks
    /// may fork or clone while this runs: the tree is scanned again until a
    /// scan finds nothing new, and since every task found is stopped at
    /// once, the scans end.
    pub fn freeze(root: i32) -> Result<FrozenTree> {
        let mut tree = FrozenTree {
            procs: Vec::new(),
            tasks: Vec::new(),
        };
        let mut seized = std::collections::HashSet::new();
        loop {
            let mut changed = false;
            let mut order = vec![root];
            let mut i = 0;
            while i < order.len() {
                let pid = order[i];
                i += 1;
                if pid != root && is_zombie(pid) {
                    // Nothing to seize: saved with its parent.
                    continue;
                }
                let tids = match proc::list_tasks(pid) {
                    Ok(t) => t,
                    Err(_) if pid != root => continue, // exited meanwhile
                    Err(e) => return Err(e.into()),
                };
                for tid in tids {
                    if seized.contains(&tid) {
                        continue;
                    }
                    match Frozen::freeze(tid) {
                        Ok(f) => {
                            tree.tasks.push(f);
                            seized.insert(tid);
                            changed = true;
                        }
                        // A thread that exited between the listing and the seize.
                        Err(_) if !crest_sys::process::exists(tid) => {}
                        Err(e) => return Err(e),
                    }
                }
                order.extend(proc::process_children(pid).unwrap_or_default());
            }
            if !changed {
                tree.procs = order
                    .into_iter()
                    .filter(|&pid| pid == root || !is_zombie(pid))
                    .map(|pid| {
                        let mut tids: Vec<i32> = tree
                            .tasks
                            .iter()
                            .map(|t| t.pid)
                            .filter(|&t| t == pid || task_tgid(t) == Some(pid))
                            .collect();
                        tids.sort_by_key(|&t| (t != pid, t));
                        (pid, tids)
                    })
                    .collect();
                return Ok(tree);
            }
        }
    }

    pub fn root(&self) -> i32 {
        self.procs[0].0
    }

    /// Whether process `pid` was in a job-control stop when frozen.
    pub fn stopped(&self, pid: i32) -> bool {
        self.tasks.iter().any(|t| t.pid == pid && t.stopped)
    }

    /// Lets every task run on.
    pub fn release(self) -> Result<()> {
        let mut first = Ok(());
        for t in self.tasks {
            if let Err(e) = t.release() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Kills every process of the tree and waits until all are gone.
    pub fn kill(mut self) -> Result<()> {
        for (pid, _) in &self.procs {
            let _ = crest_sys::process::kill(*pid, libc::SIGKILL);
        }
        // The kernel reports a thread-group leader's death only after the
        // other threads' have been collected: wait for those first.  And
        // the init of a PID namespace finishes exiting only once its
        // (traced) children are collected: deepest processes first.
        let mut tasks: Vec<Frozen> = self.tasks.drain(..).collect();
        let rank = |t: &Frozen| {
            let at = self
                .procs
                .iter()
                .position(|(_, tids)| tids.contains(&t.pid));
            let leader = self.procs.iter().any(|(pid, _)| *pid == t.pid);
            (std::cmp::Reverse(at), leader)
        };
        tasks.sort_by_key(rank);
        for t in tasks {
            t.kill_wait()?;
        }
        Ok(())
    }
}

/// Whether `pid` is a zombie (exited, not yet reaped).
pub fn is_zombie(pid: i32) -> bool {
    matches!(proc::read_stat(pid), Ok(st) if st.state == 'Z' || st.state == 'X')
}

/// The thread group a task belongs to.
fn task_tgid(tid: i32) -> Option<i32> {
    proc::read_status(tid).ok().map(|s| s.tgid)
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.detach_now();
    }
}

/// One syscall of a batch.
pub struct Call {
    pub nr: i64,
    pub args: [u64; 6],
    pub what: String,
    /// A failure of this call is ignored: the calls after it run anyway.
    pub may_fail: bool,
}

impl Call {
    pub fn new(nr: i64, args: &[u64], what: String) -> Call {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        Call {
            nr,
            args: a,
            what,
            may_fail: false,
        }
    }

    /// The same call, with its failure ignored.
    pub fn may_fail(mut self) -> Call {
        self.may_fail = true;
        self
    }
}

/// A stopped task crest runs syscalls in, with a scratch area in its
/// address space for syscall arguments: the dump-side [`Session`] and the
/// restore-side stub implement it, so each kernel concept's code can read
/// and write its state the same way in both directions.
pub trait Inject {
    /// The task's PID in crest's namespace.
    fn pid(&self) -> i32;
    /// The task's PID in its own PID namespace: how it names itself in
    /// the syscalls it runs.
    fn own_pid(&self) -> i32 {
        self.pid()
    }
    /// Runs a syscall in the task; a negative result is an error naming `what`.
    fn call(&self, nr: i64, args: &[u64], what: &str) -> Result<u64>;
    /// Address of the scratch area in the task.
    fn scratch(&self) -> u64;
    fn read_scratch(&self, off: u64, buf: &mut [u8]) -> Result<()>;
    fn write_scratch(&self, off: u64, data: &[u8]) -> Result<()>;

    /// Runs several syscalls in order, stopping at the first that fails
    /// (its error names `what` of that call) unless it may fail; returns
    /// their results (a negative number for a call that failed but may).
    fn batch(&self, calls: &[Call]) -> Result<Vec<u64>> {
        calls
            .iter()
            .map(|c| match self.call(c.nr, &c.args, &c.what) {
                Err(_) if c.may_fail => Ok(u64::MAX),
                r => r,
            })
            .collect()
    }

    /// Runs a syscall whose result is not needed, now or later: queued
    /// calls run in order, before any later call, batch, scratch access or
    /// [`Inject::flush`] of the same task returns, and that one reports a
    /// failure (naming `what`).  Data the call points to must be placed
    /// with [`Inject::place`].
    fn queue(&self, call: Call) -> Result<()> {
        match self.call(call.nr, &call.args, &call.what) {
            Err(_) if call.may_fail => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Puts `len` bytes in the task's scratch area for the call queued
    /// next ([`Inject::queue`]) and returns their address; `fill(address,
    /// bytes)` writes them.  They stay in place until that call has run.
    /// (Implementations that run each call at once use the start of the
    /// scratch area: one placement per call.)
    fn place_with(&self, len: usize, fill: &mut dyn FnMut(u64, &mut [u8])) -> Result<u64> {
        let addr = self.scratch();
        let mut b = vec![0u8; len];
        fill(addr, &mut b);
        self.write_scratch(0, &b)?;
        Ok(addr)
    }

    /// [`Inject::place_with`] for bytes known already.
    fn place(&self, data: &[u8]) -> Result<u64> {
        self.place_with(data.len(), &mut |_, b| b.copy_from_slice(data))
    }

    /// Runs every queued call now.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// prctl(2) run in the task.
    fn prctl(&self, option: i32, args: &[u64], what: &str) -> Result<u64> {
        let mut a = [0u64; 5];
        a[0] = option as u64;
        a[1..1 + args.len()].copy_from_slice(args);
        self.call(libc::SYS_prctl, &a, what)
    }
}

/// Size of the scratch area a session maps in the task.
pub const SCRATCH_LEN: u64 = 4 * 4096;

/// One thread of a process in a [`Session`].
struct ThreadCtx {
    remote: Remote,
    sigmask: u64,
}

/// Syscalls running in the threads of a frozen process, with a scratch
/// area in its address space for arguments.
///
/// The scratch area is taken from the leader's stack, below the 128-byte
/// red zone: nothing the program may rely on lives there (a signal frame
/// could land there at any moment), its bytes are put back at close
/// anyway, and if crest dies mid-session nothing new is left in the
/// process.  Only when the stack has no room is a page mapped instead.
pub struct Session {
    threads: Vec<ThreadCtx>,
    scratch: u64,
    /// The scratch bytes as they were (stack scratch), or None when the
    /// scratch area was mapped for the session.
    saved: Option<Vec<u8>>,
    mem: ProcMem,
    closed: bool,
}

/// Bytes of scratch a dump session needs (a siginfo is the largest).
pub const STACK_SCRATCH: u64 = 512;
/// The x86-64 ABI's red zone below the stack pointer.
const RED_ZONE: u64 = 128;

impl Session {
    /// Starts running syscalls in the frozen threads `tids` of one process
    /// (the leader first).  `maps` are its mappings, searched for a
    /// `syscall` instruction (vDSO first).  Signal masks are left alone: a
    /// signal that arrives meanwhile is queued again when the session
    /// closes.
    pub fn open(tids: &[i32], maps: &[MapEntry]) -> Result<Session> {
        let pid = tids[0];
        let mem = ProcMem::open(pid, true)?;
        let ip = find_syscall_in(&mem, maps)?.ok_or_else(|| {
            Error::msg(format!(
                "pid {pid}: no `syscall` instruction found in its executable mappings"
            ))
        })?;
        let mut s = Session {
            threads: Vec::with_capacity(tids.len()),
            scratch: 0,
            saved: None,
            mem,
            closed: false,
        };
        for &tid in tids {
            let sigmask = ptrace::get_sigmask(tid)?;
            let remote = Remote::new(tid, ip)?;
            s.threads.push(ThreadCtx { remote, sigmask });
        }
        let rsp = s.threads[0].remote.saved_regs().rsp;
        let lo = rsp.saturating_sub(RED_ZONE + STACK_SCRATCH) & !15;
        let on_stack = maps
            .iter()
            .any(|m| m.read && m.write && m.start <= lo && rsp <= m.end && !m.shared);
        if on_stack {
            let mut old = vec![0u8; STACK_SCRATCH as usize];
            s.mem.read(lo, &mut old)?;
            s.saved = Some(old);
            s.scratch = lo;
        } else {
            let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
            let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
            s.scratch = s.threads[0].remote.syscall(
                libc::SYS_mmap,
                &[0, SCRATCH_LEN, prot, flags, u64::MAX, 0],
                "mapping a scratch area",
            )?;
        }
        Ok(s)
    }

    /// The session's view of thread number `i` (0 is the leader).
    pub fn thread(&self, i: usize) -> ThreadView<'_> {
        ThreadView { s: self, i }
    }

    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Closes descriptor `fd` in the leader: for undoing what crest itself
    /// opened there.  Unlike [`Inject::call`] this is no fault point, as
    /// the undoing is what must happen whatever else fails.
    pub fn close_in_task(&self, fd: i32) -> Result<()> {
        self.threads[0].remote.syscall(
            libc::SYS_close,
            &[fd as u64],
            "closing a descriptor crest opened",
        )?;
        Ok(())
    }

    /// Unmaps the scratch area and puts back registers and signal masks.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<()> {
        if self.scratch != 0 {
            self.requeue_signals()?;
            match self.saved.take() {
                Some(old) => self.mem.write(self.scratch, &old)?,
                None => {
                    self.threads[0].remote.syscall(
                        libc::SYS_munmap,
                        &[self.scratch, SCRATCH_LEN],
                        "unmapping the scratch area",
                    )?;
                }
            }
            self.scratch = 0;
        }
        for t in &self.threads {
            t.remote.restore_regs()?;
        }
        Ok(())
    }

    /// Queues again, in the thread that was about to take it, each signal
    /// that arrived while syscalls ran.
    fn requeue_signals(&self) -> Result<()> {
        let host_tgid = self.threads[0].remote.pid();
        // The task names itself and its threads in its own PID namespace.
        let tgid = crate::ns::pid::own_pid(host_tgid, host_tgid) as u64;
        for t in &self.threads {
            for info in t.remote.take_suppressed() {
                let sig = i32::from_ne_bytes(info[0..4].try_into().expect("4 bytes")) as u64;
                let tid = crate::ns::pid::own_pid(host_tgid, t.remote.pid()) as u64;
                self.mem.write(self.scratch, &info)?;
                let r = t
                    .remote
                    .raw_syscall(libc::SYS_rt_tgsigqueueinfo, &[tgid, tid, sig, self.scratch])?;
                if r < 0 {
                    // The kernel lets only the leader queue a signal
                    // claiming another sender: fall back to a plain one.
                    t.remote
                        .syscall(libc::SYS_tgkill, &[tgid, tid, sig], "re-sending a signal")?;
                }
            }
        }
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

/// One thread of a [`Session`]: syscalls run as that thread.
pub struct ThreadView<'a> {
    s: &'a Session,
    i: usize,
}

impl ThreadView<'_> {
    /// The registers the thread had when it was frozen.
    pub fn regs(&self) -> &crest_sys::arch::UserRegs {
        self.s.threads[self.i].remote.saved_regs()
    }

    /// The blocked-signal mask the thread had when it was frozen.
    pub fn sigmask(&self) -> u64 {
        self.s.threads[self.i].sigmask
    }
}

impl Inject for ThreadView<'_> {
    fn pid(&self) -> i32 {
        self.s.threads[self.i].remote.pid()
    }
    fn call(&self, nr: i64, args: &[u64], what: &str) -> Result<u64> {
        crate::fault::point("dump: injected syscall")?;
        Ok(self.s.threads[self.i].remote.syscall(nr, args, what)?)
    }
    fn scratch(&self) -> u64 {
        self.s.scratch
    }
    fn read_scratch(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.s.mem.read(self.s.scratch + off, buf)?)
    }
    fn write_scratch(&self, off: u64, data: &[u8]) -> Result<()> {
        Ok(self.s.mem.write(self.s.scratch + off, data)?)
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
