//! Freezing a task with ptrace and running syscalls in it while frozen.
//!
//! A [`Frozen`] task is seized and stopped; dropping it without
//! [`Frozen::kill`] lets the task run on exactly as before.  A
//! [`Session`] borrows a frozen task to run syscalls in it: it blocks
//! signals, maps one scratch page and puts everything back when closed.

use crate::dump::unwind::Trampoline;
use crate::error::{Context, Error, Result};
use crest_sys::inject::Remote;
use crest_sys::mem::ProcMem;
use crest_sys::proc::{self, MapEntry};
use crest_sys::ptrace::{self, WaitStatus};
use crest_sys::trampoline;

const PTRACE_EVENT_STOP: i32 = 128;

/// A seized, stopped task.
pub struct Frozen {
    pid: i32,
    /// Its process (the thread group it was listed in).
    tgid: i32,
    /// Its /proc status, read once stopped (credentials, seccomp mode,
    /// PIDs in namespaces: none of it changes while it stays stopped).
    status: Option<proc::Status>,
    attached: bool,
    /// The task was in a job-control stop when frozen.
    stopped: bool,
    /// The job-control signal of that stop (SIGSTOP, SIGTSTP, SIGTTIN,
    /// SIGTTOU), when `stopped`.
    stop_signal: i32,
}

impl Frozen {
    /// Seizes task `pid` of process `tgid` and stops it.  A signal that
    /// was about to be delivered is delivered first, as it would have
    /// been anyway.
    pub fn freeze(pid: i32, tgid: i32) -> Result<Frozen> {
        let mut f = Self::seize(pid, tgid)?;
        f.wait_stop()?;
        Ok(f)
    }

    /// Seizes task `pid` and asks it to stop (PTRACE_INTERRUPT), without
    /// waiting for the stop: a frozen task reaches it once thawed.
    fn seize(pid: i32, tgid: i32) -> Result<Frozen> {
        ptrace::seize(pid, ptrace::SEIZE_OPTIONS).context(|| {
            match proc::read_status(pid).map(|s| s.tracer_pid) {
                Ok(t) if t != 0 => format!(
                    "cannot attach to pid {pid}: it is traced by {}",
                    crate::dump::lock::describe(t)
                ),
                _ => format!("cannot attach to pid {pid} (is it yours, and not traced already?)"),
            }
        })?;
        let f = Frozen {
            pid,
            tgid,
            status: None,
            attached: true,
            stopped: false,
            stop_signal: 0,
        };
        ptrace::interrupt(pid)?;
        Ok(f)
    }

    /// Waits for the stop [`Frozen::seize`] asked for.
    fn wait_stop(&mut self) -> Result<()> {
        let (pid, tgid) = (self.pid, self.tgid);
        let f = self;
        let t0 = std::time::Instant::now();
        loop {
            // A task asleep in the kernel without signals (state D: an
            // open waiting for a fanotify permission answer the tree owes,
            // a hung NFS server) never stops: refused by name, left running.
            let Some(w) = ptrace::try_wait(pid)? else {
                if t0.elapsed() > std::time::Duration::from_secs(5) {
                    let wchan =
                        std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                    f.detach_now();
                    return Err(Error::Incompatible(format!(
                        "pid {pid} does not stop: it waits in the kernel ({}) and cannot be \
                         interrupted, e.g. for the answer to a fanotify permission event; \
                         retry once it is answered",
                        if wchan.is_empty() {
                            "unknown wait"
                        } else {
                            wchan.trim()
                        }
                    )));
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
                continue;
            };
            match w {
                WaitStatus::Stopped {
                    event: PTRACE_EVENT_STOP,
                    sig,
                } => {
                    // SIGTRAP: our interrupt.  Another signal: the task
                    // was in a job-control stop, which the model records
                    // (from /proc) and a detach keeps.
                    f.stopped = sig != libc::SIGTRAP;
                    f.stop_signal = if f.stopped { sig } else { 0 };
                    let st = proc::read_task_status(tgid, pid)?;
                    crate::task::seccomp::suspend(pid, st.seccomp, ptrace::SEIZE_OPTIONS)?;
                    f.status = Some(st);
                    return Ok(());
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
    /// Index of each task in `tasks`, by tid.
    by_tid: std::collections::HashMap<i32, usize>,
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
            by_tid: Default::default(),
        };
        let mut seized = std::collections::HashSet::new();
        if let Some(mut cg) = crate::task::cgfreeze::freeze_own(root)? {
            // Frozen: nothing forks or exits.  Every task is seized and
            // interrupted, the cgroup thawed, then each stop awaited.
            let mut order = vec![root];
            let mut i = 0;
            while i < order.len() {
                let pid = order[i];
                i += 1;
                if pid != root && is_zombie(pid) {
                    continue;
                }
                let tids = proc::list_tasks(pid).unwrap_or_default();
                if tids
                    .iter()
                    .any(|&t| crate::task::cgfreeze::in_vfork_wait(t))
                {
                    // Stops only once its vfork child is done: it and
                    // its subtree are seized after the thaw.
                    continue;
                }
                for tid in tids {
                    let f = Frozen::seize(tid, pid).context(|| {
                        format!("seizing pid {tid} in frozen cgroup {}", cg.dir().display())
                    })?;
                    tree.by_tid.insert(tid, tree.tasks.len());
                    tree.tasks.push(f);
                    seized.insert(tid);
                }
                order.extend(proc::process_children(pid).unwrap_or_default());
            }
            cg.thaw();
            for t in tree.tasks.iter_mut() {
                t.wait_stop()?;
            }
        }
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
                    match Frozen::freeze(tid, pid) {
                        Ok(f) => {
                            tree.by_tid.insert(tid, tree.tasks.len());
                            tree.tasks.push(f);
                            seized.insert(tid);
                            changed = true;
                        }
                        // A thread that exited between the listing and the
                        // seize, or a process (not the root) that exited
                        // while being frozen: scan again, and it is a
                        // zombie child of its parent like any other.
                        Err(_)
                            if !crest_sys::process::exists(tid)
                                || (pid != root && is_zombie(tid)) =>
                        {
                            changed = true;
                        }
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
                            .filter(|t| t.tgid == pid)
                            .map(|t| t.pid)
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

    /// The /proc status of frozen task `tid`, read once it stopped.
    pub fn status(&self, tid: i32) -> Option<&proc::Status> {
        self.by_tid
            .get(&tid)
            .and_then(|&i| self.tasks[i].status.as_ref())
    }

    /// Whether process `pid` was in a job-control stop when frozen.
    pub fn stopped(&self, pid: i32) -> bool {
        self.tasks.iter().any(|t| t.pid == pid && t.stopped)
    }

    /// The signal that stopped process `pid` (its leader), when it was in
    /// a job-control stop.
    pub fn stop_signal(&self, pid: i32) -> Option<i32> {
        self.tasks
            .iter()
            .find(|t| t.pid == pid && t.stopped)
            .map(|t| t.stop_signal)
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

    /// Reads the dispositions of signals `first..end` into the scratch
    /// area (the kernel's `struct sigaction` of signal `sig` at offset
    /// `(sig - first) * 32`) in one call, if this task can
    /// (`crest_sys::inject::Remote::batch_sigactions`).  False: nothing
    /// was read; make the calls one by one.
    fn read_sigactions(&self, _first: i32, _end: i32) -> Result<bool> {
        Ok(false)
    }

    /// prctl(2) run in the task.
    fn prctl(&self, option: i32, args: &[u64], what: &str) -> Result<u64> {
        let mut a = [0u64; 5];
        a[0] = option as u64;
        a[1..1 + args.len()].copy_from_slice(args);
        self.call(libc::SYS_prctl, &a, what)
    }
}

/// One thread of a process in a [`Session`].
struct ThreadCtx {
    remote: Remote,
    sigmask: u64,
}

/// Syscalls running in the threads of a frozen process, with a scratch
/// area in its address space for arguments.
///
/// Every call unwinds by itself if crest dies (`crest_sys::inject`): the
/// trampoline is in the vDSO padding ([`crate::dump::unwind`]), and each
/// thread's own state — its registers (an interrupted syscall set up to
/// restart) and blocked mask — is on its own stack below the 128-byte red
/// zone, where nothing the program may rely on lives (a signal frame could
/// land there at any moment).  The leader's scratch area lies between its
/// red zone and that block.  While the session lasts every signal is
/// blocked in its threads, so signals that arrive stay queued, in order,
/// and are delivered once the threads run again (the block's mask
/// unblocks them if crest dies).  Closing the session puts back masks,
/// registers, the stack bytes and the vDSO padding, in an order where a
/// death at any point leaves the task as it was.
pub struct Session {
    threads: Vec<ThreadCtx>,
    scratch: u64,
    /// Stack bytes overwritten, to put back: (address, old bytes).
    saved: Vec<(u64, Vec<u8>)>,
    tramp: Option<Trampoline>,
    mem: ProcMem,
    closed: bool,
}

/// Bytes of scratch a dump session needs (a siginfo is the largest).
pub const STACK_SCRATCH: u64 = 512;
/// The x86-64 ABI's red zone below the stack pointer.
const RED_ZONE: u64 = 128;

impl Session {
    /// Starts running syscalls in the frozen threads `tids` of one process
    /// (the leader first).  `maps` are its mappings.
    pub fn open(tids: &[i32], maps: &[MapEntry]) -> Result<Session> {
        let pid = tids[0];
        let mem = ProcMem::open(pid, true)?;
        let mut s = Session {
            threads: Vec::with_capacity(tids.len()),
            scratch: 0,
            saved: Vec::new(),
            tramp: None,
            mem,
            closed: false,
        };
        let tramp = Trampoline::install(&s.mem, pid, maps)?;
        let tramp_addr = tramp.addr;
        s.tramp = Some(tramp);
        for (i, &tid) in tids.iter().enumerate() {
            let regs = ptrace::get_regs(tid)?;
            let sigmask = ptrace::get_sigmask(tid)?;
            let ip_slot = regs.rsp.wrapping_sub(trampoline::IP_SLOT);
            let mut top = ip_slot & !15;
            if i == 0 {
                top = top.saturating_sub(STACK_SCRATCH);
                s.scratch = top;
            }
            let block = trampoline::block(top, &regs.restarted_in_place(), sigmask);
            let on_stack = maps.iter().any(|m| {
                m.read && m.write && !m.shared && m.start <= block.start && regs.rsp <= m.end
            });
            if !on_stack || block.start > regs.rsp {
                return Err(Error::msg(format!(
                    "pid {pid}: thread {tid} has no room below its stack pointer {:#x} for \
                     the {} bytes crest needs there",
                    regs.rsp,
                    regs.rsp.wrapping_sub(block.start)
                )));
            }
            let len = (regs.rsp - RED_ZONE - block.start) as usize;
            let mut old = vec![0u8; len];
            s.mem.read(block.start, &mut old)?;
            s.saved.push((block.start, old));
            s.mem.write(block.start, &block.bytes)?;
            s.mem.write(ip_slot, &block.ip)?;
            let remote = Remote::unwinding(tid, regs, tramp_addr, block.start)?;
            s.threads.push(ThreadCtx { remote, sigmask });
            ptrace::set_sigmask(tid, !0)?;
        }
        Ok(s)
    }

    /// The session's view of thread number `i` (0 is the leader).
    pub fn thread(&self, i: usize) -> ThreadView<'_> {
        ThreadView { s: self, i }
    }

    /// Puts back signal masks, registers, stack bytes and the vDSO.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<()> {
        let mut errors: Vec<Error> = Vec::new();
        for t in &self.threads {
            // The mask first: a thread still parked restores the same
            // mask itself if crest dies now.
            if let Err(e) = ptrace::set_sigmask(t.remote.pid(), t.sigmask) {
                errors.push(e.into());
            }
            if let Err(e) = t.remote.restore_regs() {
                errors.push(e.into());
            }
        }
        // A thread that may still be parked needs its block and the
        // trampoline: leave them then (they are below its red zone and in
        // the vDSO padding, where the program never looks).
        if errors.is_empty() {
            for (addr, old) in self.saved.drain(..) {
                if let Err(e) = self.mem.write(addr, &old) {
                    errors.push(e.into());
                }
            }
            if let Some(t) = self.tramp.take() {
                if let Err(e) = t.remove(&self.mem) {
                    errors.push(e);
                }
            }
        }
        self.threads.clear();
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
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

    /// Runs a syscall that returns a new descriptor in the task and
    /// closes it there again, calling `take(fd)` in between (to take it
    /// over with pidfd_getfd).  If crest dies after the call, the task
    /// closes the descriptor itself: it is never left behind.
    pub fn call_closing(
        &self,
        nr: i64,
        args: &[u64],
        what: &str,
        take: &mut dyn FnMut(i32),
    ) -> Result<u64> {
        crate::fault::point("dump: injected syscall")?;
        let r = self.s.threads[self.i]
            .remote
            .raw_syscall_closing(nr, args, &mut |r| {
                if r >= 0 {
                    take(r as i32)
                }
            })?;
        if (-4095..0).contains(&r) {
            return Err(crest_sys::Error::io(
                format!("pid {}: {what}", self.pid()),
                std::io::Error::from_raw_os_error(-r as i32),
            )
            .into());
        }
        Ok(r as u64)
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
    fn read_sigactions(&self, first: i32, end: i32) -> Result<bool> {
        crate::fault::point("dump: injected syscall")?;
        let len = (end - first).max(0) as u64 * crest_sys::trampoline::BATCH_STRIDE;
        if len > STACK_SCRATCH {
            return Ok(false);
        }
        let r = self.s.threads[self.i]
            .remote
            .batch_sigactions(first, end, self.s.scratch)?;
        Ok(r > 0)
    }
    fn read_scratch(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.s.mem.read(self.s.scratch + off, buf)?)
    }
    fn write_scratch(&self, off: u64, data: &[u8]) -> Result<()> {
        Ok(self.s.mem.write(self.s.scratch + off, data)?)
    }
}
