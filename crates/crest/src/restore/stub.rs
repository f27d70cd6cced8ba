//! Stubs: the processes that become the restored tree.
//!
//! crest forks the root stub with clone3(set_tid), so it has the
//! checkpointed PID.  In each stub, before anything else runs, a short
//! allocation-free routine forks that process's children the same way (so
//! every process is created by its restored parent), puts its descriptors
//! in place, joins its session and process group, sets cwd/root, umask,
//! personality, name and signal dispositions, maps a small helper area
//! holding `syscall; jmp .`, reports on the shared "ready" pipe and waits
//! on the "hold" pipe (whose writer only crest has: if crest dies, the
//! read sees EOF and the stub exits).  crest then seizes every stub,
//! empties its address space and rebuilds the checkpointed one through
//! syscalls it injects at that instruction; extra threads are made by an
//! injected clone3(CLONE_THREAD, set_tid) and spin on the `jmp .` until
//! seized.  The last injected syscall unmaps the helper area; each thread
//! then gets its final registers and is let go.  Until then every stub
//! dies with crest (PTRACE_O_EXITKILL, the hold pipe, and PDEATHSIG down
//! the tree), and dropping a [`StubTree`] kills them all.
//!
//! Every round trip to a stub costs two context switches, and many more
//! when the machine is busy, so syscalls whose results are not needed are
//! queued ([`Inject::queue`], their data placed with [`Inject::place`])
//! and run together by a small batch loop in the helper area, which ends
//! at an `int3`: one stop of the thread for the whole queue.  That int3's
//! SIGTRAP is forced through by the kernel, which resets an ignored or
//! blocked SIGTRAP's action to the default; so the routine leaves SIGTRAP
//! alone, and its action and any pending SIGTRAP are restored after the
//! last batch, by syscall stops ([`StubProc::direct`]), as are the calls
//! the loop cannot run (clone3 of a thread, unmapping the helper).

use crate::error::{Context, Error, Result};
use crate::model::{Backing, SigAction, Vma};
use crate::task::freeze::{Call, Inject};
use crest_sys::arch::UserRegs;
use crest_sys::inject::Remote;
use crest_sys::mem::ProcMem;
use crest_sys::process::{self, Forked};
use crest_sys::ptrace::{self, WaitStatus};
use std::cell::RefCell;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

/// Scratch pages after the code page of the helper area: the data that
/// injected syscalls point to.
const SCRATCH_PAGES: u64 = 64;
/// Pages after the scratch pages holding the table of a batch (room for
/// 4096 syscalls).
const TABLE_PAGES: u64 = 64;
/// Where the batch loop starts in the code page.
const BATCH_OFF: usize = 16;
/// The batch loop: r12 points at a table of 64-byte entries (nr, six
/// arguments, result), r13 counts them.  Each syscall's result is stored;
/// the loop stops at the first error, and at the end, with `int3`.
///
/// ```text
/// loop: test r13,r13 / jz done / mov rax,[r12] / mov rdi,[r12+8]
///       mov rsi,[r12+16] / mov rdx,[r12+24] / mov r10,[r12+32]
///       mov r8,[r12+40] / mov r9,[r12+48] / syscall / mov [r12+56],rax
///       cmp rax,-4095 / jae done / add r12,64 / dec r13 / jmp loop
/// done: int3
/// ```
const BATCH_CODE: [u8; 64] = [
    0x4d, 0x85, 0xed, // test r13, r13
    0x74, 0x3a, // jz done
    0x49, 0x8b, 0x04, 0x24, // mov rax, [r12]
    0x49, 0x8b, 0x7c, 0x24, 0x08, // mov rdi, [r12+8]
    0x49, 0x8b, 0x74, 0x24, 0x10, // mov rsi, [r12+16]
    0x49, 0x8b, 0x54, 0x24, 0x18, // mov rdx, [r12+24]
    0x4d, 0x8b, 0x54, 0x24, 0x20, // mov r10, [r12+32]
    0x4d, 0x8b, 0x44, 0x24, 0x28, // mov r8, [r12+40]
    0x4d, 0x8b, 0x4c, 0x24, 0x30, // mov r9, [r12+48]
    0x0f, 0x05, // syscall
    0x49, 0x89, 0x44, 0x24, 0x38, // mov [r12+56], rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax, -4095
    0x73, 0x09, // jae done
    0x49, 0x83, 0xc4, 0x40, // add r12, 64
    0x49, 0xff, 0xcd, // dec r13
    0xeb, 0xc1, // jmp loop
    0xcc, // done: int3
];
/// Bytes per batch entry.
const BATCH_ENTRY: u64 = 64;
/// Offset of the first byte after the batch loop's final `int3`: where a
/// batch that ran to its end stops.
const BATCH_END: u64 = (BATCH_OFF + BATCH_CODE.len()) as u64;
const ARCH_MAP_VDSO_64: u64 = 0x2003;
const RSEQ_FLAG_UNREGISTER: u64 = 1;
const PTRACE_EVENT_STOP: i32 = 128;
/// `syscall` then `jmp .` (a new thread spins there until seized).
const HELPER_CODE: [u8; 4] = [0x0f, 0x05, 0xeb, 0xfe];
/// The "step" value of a ready report.
const READY: u32 = u32::MAX;

/// The ptrace options of every stub task.
pub const SEIZE_OPTIONS: u32 = (libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACESYSGOOD) as u32;

/// A descriptor crest holds that the stub must have at `dst`.
pub struct FdMove {
    pub src: i32,
    pub dst: i32,
    pub cloexec: bool,
}

/// What one stub's routine does, computed before the fork.
pub struct ProcPlan {
    /// The image's name of the process (its PID in crest's namespace at
    /// the dump), for reports.
    pub pid: i32,
    /// clone3's set_tid: its PIDs, innermost namespace first (see
    /// `crate::ns::pid`).
    pub tids: Vec<i32>,
    /// In a PID namespace below crest's: its PID in crest's namespace is
    /// the kernel's choice.
    pub nested: bool,
    /// CLONE_NEW* flags it is created with (the namespaces it enters).
    pub new_ns: u64,
    /// A descriptor of crest's on the network namespace this process
    /// joins as it starts (-1: its parent's); see `crate::ns::net`.
    pub netns: i32,
    /// A descriptor of crest's on the IPC namespace, made before the
    /// tree, this process joins as it starts (-1: none; see
    /// `crate::ns::mqueue`).
    pub ipcns: i32,
    /// Host and domain name it sets first, in the UTS namespace it creates.
    pub uts: Option<(Vec<u8>, Vec<u8>)>,
    /// In the mount namespace it creates: what it mounts first (see
    /// `crate::ns::mnt`).
    pub mnt: Option<crate::ns::mnt::StubPlan>,
    /// The offsets it writes into the time namespace it creates and
    /// enters first (see `crate::ns::time`).
    pub time: Option<Vec<u8>>,
    /// The `cgroup.procs` files of the roots of the cgroup namespace it
    /// creates: it joins them, then unshares (see `crate::ns::cgroup`).
    pub cgroup_ns: Option<Vec<std::ffi::CString>>,
    /// It creates a user namespace: the read end (crest's number) of the
    /// pipe it waits on until crest has written the namespace's id maps
    /// (-1: none; see `crate::ns::user`).
    pub userns_gate: i32,
    /// Ids (inside) it takes once its maps are written, when crest's own
    /// are not mapped there: a process whose ids are unmapped can create
    /// no user namespace and no file.  Its capabilities stay (neither id
    /// is the namespace's root for the kernel's fix-up).
    pub userns_ids: Option<(u32, u32)>,
    /// It is created inside this user namespace made ahead of it (crest's
    /// descriptor number; -1: none), instead of with CLONE_NEWUSER (see
    /// `crate::ns::owned_net`).
    pub userns_fd: i32,
    /// Indexes (into [`TreePlan::procs`]) of the processes this one forks.
    pub children: Vec<usize>,
    pub setsid: bool,
    /// `setpgid(0, pgid)` in the routine (0: become a group leader).
    pub pgid: Option<i32>,
    /// After setsid: a descriptor (crest's number, inherited) on the
    /// terminal to make the controlling one, before forking the children
    /// (see `crate::files::tty`).
    pub ctty: Option<i32>,
    pub moves: Vec<FdMove>,
    /// Room for the routine's temporary descriptor numbers.
    pub tmp: Vec<i32>,
    pub cwd_fd: i32,
    pub root_fd: Option<i32>,
    pub umask: u32,
    pub personality: u32,
    pub comm: [u8; 16],
    pub actions: Vec<SigAction>,
    /// Where the ready pipe's write end and the hold pipe's read end
    /// land in this stub.
    pub ready_dst: i32,
    pub hold_dst: i32,
    /// What it shares with its parent (CLONE_FILES, CLONE_FS): the parent
    /// forks it with these flags.  With CLONE_FILES it is forked once the
    /// parent's table is in place (the parent places this one's helper
    /// descriptors too; `moves` is empty and `ready_dst`/`hold_dst` are
    /// the parent's) and places nothing itself; with CLONE_FS it leaves
    /// cwd, root and umask to the parent.
    pub share: u64,
    /// Children to recreate as zombies: forked, then exit at once.
    pub zombies: Vec<ZombiePlan>,
    /// It serves socket calls made as itself before the tree is built
    /// (see `crate::net::unix::creds`): the agent's command and reply
    /// descriptors (crest's numbers, on the table it shares with crest
    /// until told to go on).
    pub agent: Option<(i32, i32)>,
    /// Once its children are forked, it enters the PID namespace of this
    /// one (an index into [`TreePlan::procs`], its child and that
    /// namespace's init) for the children it forks later, as it had.
    pub kids_ns_of: Option<usize>,
    /// Created before the UNIX sockets are built, by its parent (an
    /// agent too) and sharing crest's descriptor table: it is the init of
    /// a PID namespace the calls are made in, or on the way to one.
    pub early: bool,
}

/// A zombie child: its pid, how it joins its session/group, its status.
pub struct ZombiePlan {
    pub comm: [u8; 16],
    pub pid: i32,
    /// clone3's set_tid (innermost first).
    pub tids: Vec<i32>,
    pub setsid: bool,
    /// Forked before its parent's setsid: it stays in the session its
    /// parent leaves.
    pub early: bool,
    pub pgid: Option<i32>,
    pub status: i32,
}

/// The whole tree's plan.
pub struct TreePlan {
    pub procs: Vec<ProcPlan>,
    /// Lowest number above every descriptor in crest and every destination.
    pub floor: i32,
    pub helper: u64,
    /// crest's numbers of the ready pipe's write end and the hold pipe's
    /// read end (inherited by the stubs).
    pub ready_src: i32,
    pub hold_src: i32,
    /// Fork the root with CLONE_PARENT: it becomes a child of crest's
    /// parent (a sibling of crest) instead of crest's.
    pub root_sibling: bool,
    /// Restore under crest's own init, PID 1 of a new PID namespace (see
    /// `crate::ns::init::mini_init`).
    pub init: bool,
    /// The user namespaces the stubs create.
    pub userns: UsernsPlan,
    /// crest's init (`init`) is created sharing crest's descriptor table
    /// and first serves the socket calls made by PID 1 of the namespace
    /// (see `crate::net::unix::creds`): the agent's command and reply
    /// descriptors.  (Agents of the tree's own processes: [`ProcPlan::agent`].)
    pub agent: Option<(i32, i32)>,
    /// The buffer an agent reads a call into (each process its own copy).
    pub agent_buf: Vec<u8>,
}

/// How stubs that create user namespaces get their id maps: each sends
/// its index on `ask` (crest's end receives it with the sender's PID)
/// and waits on its gate (see `crate::ns::user`).
pub struct UsernsPlan {
    pub gates: Vec<crate::ns::user::Gate>,
    /// crest's end, and the stubs' end (crest's number, inherited).
    sock: Option<(OwnedFd, OwnedFd)>,
    pub ask: i32,
}

impl UsernsPlan {
    pub fn new(gates: Vec<crate::ns::user::Gate>) -> Result<UsernsPlan> {
        if gates.is_empty() {
            return Ok(UsernsPlan {
                gates,
                sock: None,
                ask: -1,
            });
        }
        let (mine, theirs) = crest_sys::ns::cred_socketpair()?;
        let ask = theirs.as_raw_fd();
        Ok(UsernsPlan {
            gates,
            sock: Some((mine, theirs)),
            ask,
        })
    }

    /// Serves one request: writes the maps of the asking stub's new user
    /// namespace and opens its gate.
    fn serve(&self, procs: &[ProcPlan]) -> Result<()> {
        let Some((sock, _)) = &self.sock else {
            return Ok(());
        };
        let mut b = [0u8; 4];
        let (n, pid) = crest_sys::ns::recv_with_pid(sock, &mut b)?;
        let idx = u32::from_ne_bytes(b) as usize;
        let gate = self.gates.iter().find(|g| g.idx == idx && n == 4);
        let Some(g) = gate else {
            return Err(Error::msg(format!(
                "a new process (pid {pid}) asked for the maps of a user namespace it does not create"
            )));
        };
        let name = procs.get(idx).map_or(-1, |p| p.pid);
        crate::ns::user::answer(pid, &g.maps).context(|| format!("restoring pid {name}"))?;
        let w = g.write.as_raw_fd();
        // SAFETY: one byte from a local buffer to our own pipe.
        if unsafe { libc::write(w, b"m".as_ptr().cast(), 1) } != 1 {
            return Err(Error::msg(format!(
                "restoring pid {name}: letting it go on in its user namespace: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Waits until `ready` is readable, serving map requests meanwhile.
    fn wait_ready(&self, ready: i32, procs: &[ProcPlan]) -> Result<()> {
        let Some((sock, _)) = &self.sock else {
            return Ok(());
        };
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: ready,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: an array of two pollfds we own.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(Error::msg(format!("waiting for the new processes: {e}")));
            }
            if fds[1].revents & libc::POLLIN != 0 {
                self.serve(procs)?;
            }
            if fds[0].revents != 0 {
                return Ok(());
            }
        }
    }
}

/// Names of the routine's steps, for failure reports.
const STEPS: [&str; 22] = [
    "setting up",
    "blocking signals",
    "joining its session or process group",
    "creating a child process",
    "moving descriptors aside",
    "placing descriptors",
    "setting root and cwd",
    "setting umask and personality",
    "setting its name",
    "setting signal actions",
    "mapping the helper area",
    "reporting ready",
    "waiting",
    "putting a zombie child into its session or process group",
    "setting its host or domain name",
    "setting up its mount namespace",
    "joining its network namespace",
    "creating its time namespace",
    "creating its cgroup namespace",
    "waiting for its user namespace's id maps",
    "joining its IPC namespace",
    "entering its child's PID namespace for its future children",
];

/// # Safety
/// Runs in a forked child: only raw syscalls on data prepared before the
/// fork (the plan is this process's private copy); never returns.
pub(crate) unsafe fn routine(plan: &mut TreePlan, i: usize) -> ! {
    const FILES: u64 = libc::CLONE_FILES as u64;
    const FS: u64 = libc::CLONE_FS as u64;
    let share = plan.procs[i].share;
    // On a shared table crest's descriptors are gone: report on the
    // parent's copy of the ready pipe.
    let mut report = if share & FILES != 0 {
        plan.procs[i].ready_dst
    } else {
        plan.ready_src
    };
    let fail = |step: usize, fd: i32| -> ! {
        let e = *libc::__errno_location();
        let msg = [i as u32, step as u32, e as u32];
        libc::write(fd, msg.as_ptr().cast(), 12);
        libc::_exit(100 + step as i32)
    };
    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
        fail(0, report);
    }
    let gate = plan.procs[i].userns_gate;
    if gate >= 0 {
        // In a new user namespace: nothing is mapped until crest writes
        // the maps (it learns this process's PID from the datagram).
        let msg = i as u32;
        if libc::write(plan.userns.ask, (&msg as *const u32).cast(), 4) != 4 {
            fail(19, report);
        }
        let mut b = 0u8;
        loop {
            let n = libc::read(gate, (&mut b as *mut u8).cast(), 1);
            if n == 1 {
                break;
            }
            if n == 0 || *libc::__errno_location() != libc::EINTR {
                fail(19, report);
            }
        }
    }
    if gate >= 0 || plan.procs[i].userns_fd >= 0 {
        if let Some((u, g)) = plan.procs[i].userns_ids {
            if libc::setresgid(g, g, g) != 0 || libc::setresuid(u, u, u) != 0 {
                fail(19, report);
            }
        }
    }
    // In its user namespace with its ids (the calls it serves are made
    // with ids of that namespace; see `crate::net::unix::creds`).  An
    // agent with early children serves once they exist, below: they
    // inherit the namespaces it enters first.
    let early_kids = plan.procs[i].children.iter().any(|&c| plan.procs[c].early);
    if let (Some((cmd, reply)), false) = (plan.procs[i].agent, early_kids) {
        if !crest_sys::agent::serve(cmd, reply, &mut plan.agent_buf) {
            libc::_exit(1);
        }
    }
    if plan.procs[i].netns >= 0 && libc::setns(plan.procs[i].netns, libc::CLONE_NEWNET) != 0 {
        fail(16, report);
    }
    if plan.procs[i].ipcns >= 0 && libc::setns(plan.procs[i].ipcns, libc::CLONE_NEWIPC) != 0 {
        fail(20, report);
    }
    if let Some(text) = &plan.procs[i].time {
        // A namespace for the children, its offsets written before anyone
        // is in it, then entered by this process itself.
        if libc::unshare(libc::CLONE_NEWTIME) != 0 {
            fail(17, report);
        }
        let f = libc::open(c"/proc/self/timens_offsets".as_ptr(), libc::O_WRONLY);
        if f < 0 || libc::write(f, text.as_ptr().cast(), text.len()) != text.len() as isize {
            fail(17, report);
        }
        libc::close(f);
        let n = libc::open(c"/proc/self/ns/time_for_children".as_ptr(), libc::O_RDONLY);
        if n < 0 || libc::setns(n, libc::CLONE_NEWTIME) != 0 {
            fail(17, report);
        }
        libc::close(n);
    }
    if let Some(roots) = &plan.procs[i].cgroup_ns {
        for r in roots {
            let f = libc::open(r.as_ptr(), libc::O_WRONLY);
            if f < 0 || libc::write(f, c"0".as_ptr().cast(), 1) != 1 {
                fail(18, report);
            }
            libc::close(f);
        }
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            fail(18, report);
        }
    }
    if let Some((host, domain)) = &plan.procs[i].uts {
        if libc::sethostname(host.as_ptr().cast(), host.len()) != 0
            || libc::setdomainname(domain.as_ptr().cast(), domain.len()) != 0
        {
            fail(14, report);
        }
    }
    if let Some(m) = &plan.procs[i].mnt {
        if !crate::ns::mnt::enter(m) {
            fail(15, report);
        }
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
        fail(1, report);
    }
    for z in plan.procs[i].zombies.iter().filter(|z| z.early) {
        match process::clone_with_tids(&z.tids, 0) {
            Ok(Forked::Child) => become_zombie(z, i, report),
            Ok(Forked::Parent(_)) => {}
            Err(_) => fail(3, report),
        }
    }
    {
        let p = &plan.procs[i];
        if p.setsid && libc::setsid() < 0 {
            fail(2, report);
        }
        if let Some(t) = p.ctty {
            if libc::ioctl(t, libc::TIOCSCTTY, 0) != 0 {
                fail(2, report);
            }
        }
        if let Some(pg) = p.pgid {
            if libc::setpgid(0, pg) != 0 {
                fail(2, report);
            }
        }
    }
    // The child whose PID namespace this one's later children go into.
    let mut kids_ns_pid = 0;
    if early_kids {
        // Still on crest's table: the early children share it, and serve
        // as this one does until crest has built the sockets.
        match fork_kids(plan, i, |c| c.early, FILES) {
            Ok(pid) => kids_ns_pid = kids_ns_pid.max(pid),
            Err(e) => {
                *libc::__errno_location() = e;
                fail(3, report)
            }
        }
        if let Some((cmd, reply)) = plan.procs[i].agent {
            if !crest_sys::agent::serve(cmd, reply, &mut plan.agent_buf) {
                libc::_exit(1);
            }
        }
    }
    // Children on this table are forked once it is in place, below.
    match fork_kids(plan, i, |c| c.share & FILES == 0 && !c.early, 0) {
        Ok(pid) => kids_ns_pid = kids_ns_pid.max(pid),
        Err(e) => {
            *libc::__errno_location() = e;
            fail(3, report)
        }
    }
    for z in plan.procs[i].zombies.iter().filter(|z| !z.early) {
        match process::clone_with_tids(&z.tids, 0) {
            Ok(Forked::Child) => become_zombie(z, i, report),
            Ok(Forked::Parent(_)) => {}
            Err(_) => fail(3, report),
        }
    }
    let floor = plan.floor;
    let p = &mut plan.procs[i];
    // Move every source above `floor`, close everything below, then put
    // each at its final number (on a shared table the parent did it).
    if share & FILES == 0 {
        for m in 0..p.moves.len() {
            let t = libc::fcntl(p.moves[m].src, libc::F_DUPFD_CLOEXEC, floor);
            if t < 0 {
                fail(4, report);
            }
            p.tmp[m] = t;
            if p.moves[m].src == report {
                report = t;
            }
        }
        libc::syscall(libc::SYS_close_range, 0u32, (floor - 1) as u32, 0u32);
        for m in 0..p.moves.len() {
            let mv = &p.moves[m];
            let flags = if mv.cloexec { libc::O_CLOEXEC } else { 0 };
            if libc::dup3(p.tmp[m], mv.dst, flags) < 0 {
                fail(5, report);
            }
        }
        report = p.ready_dst;
        libc::syscall(libc::SYS_close_range, floor as u32, u32::MAX, 0u32);
    }
    if share & FS == 0 {
        if let Some(r) = p.root_fd {
            if libc::fchdir(r) != 0 || libc::chroot(c".".as_ptr()) != 0 {
                fail(6, report);
            }
        }
        if libc::fchdir(p.cwd_fd) != 0 {
            fail(6, report);
        }
        libc::umask(p.umask as libc::mode_t);
    }
    // The table (and cwd/umask) is in place: fork the children that share
    // it, before the helper area is mapped (each maps its own).
    match fork_kids(plan, i, |c| c.share & FILES != 0, 0) {
        Ok(pid) => kids_ns_pid = kids_ns_pid.max(pid),
        Err(e) => {
            *libc::__errno_location() = e;
            fail(3, report)
        }
    }
    if plan.procs[i].kids_ns_of.is_some() {
        // As after unshare(CLONE_NEWPID) and the fork of the init: by a
        // pidfd of the child (its PID here may not be in this /proc).
        let pfd = libc::syscall(libc::SYS_pidfd_open, kids_ns_pid, 0) as i32;
        if kids_ns_pid <= 0 || pfd < 0 || libc::setns(pfd, libc::CLONE_NEWPID) != 0 {
            fail(21, report);
        }
        libc::close(pfd);
    }
    let p = &mut plan.procs[i];
    if libc::personality(p.personality as libc::c_ulong) < 0 {
        fail(7, report);
    }
    if libc::prctl(libc::PR_SET_NAME, p.comm.as_ptr(), 0, 0, 0) != 0 {
        fail(8, report);
    }
    // Every action the image does not name is the default one, not the
    // one the stub inherited from crest (Rust's SIGPIPE, SIGSEGV, SIGBUS).
    for sig in (1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP) {
        let k = match p.actions.iter().find(|a| a.signo == sig) {
            // The batch loop stops at an int3, whose SIGTRAP the kernel
            // forces through with the default action if the signal is
            // ignored: crest sets this action after the last batch.
            Some(a) if sig != libc::SIGTRAP => crate::task::signals::ksigaction_bytes(a),
            _ => [0; crate::task::signals::KSIGACTION_LEN],
        };
        if libc::syscall(libc::SYS_rt_sigaction, sig, k.as_ptr(), 0usize, 8usize) != 0 {
            fail(9, report);
        }
    }
    let ps = libc::sysconf(libc::_SC_PAGESIZE) as usize;
    let len = (1 + SCRATCH_PAGES + TABLE_PAGES) as usize * ps;
    let h = libc::mmap(
        plan.helper as *mut libc::c_void,
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
        -1,
        0,
    );
    if h as u64 != plan.helper {
        fail(10, report);
    }
    let code = h as *mut u8;
    std::ptr::write_bytes(code, 0xcc, ps); // int3 everywhere else
    for (k, b) in HELPER_CODE.iter().enumerate() {
        *code.add(k) = *b;
    }
    for (k, b) in BATCH_CODE.iter().enumerate() {
        *code.add(BATCH_OFF + k) = *b;
    }
    if libc::mprotect(h, ps, libc::PROT_READ | libc::PROT_EXEC) != 0 {
        fail(10, report);
    }
    let msg = [i as u32, READY, 0];
    if libc::write(report, msg.as_ptr().cast(), 12) != 12 {
        fail(11, report);
    }
    let hold = p.hold_dst;
    let mut b = 0u8;
    loop {
        let n = libc::read(hold, (&mut b as *mut u8).cast(), 1);
        if n >= 0 || *libc::__errno_location() != libc::EINTR {
            // EOF: crest is gone.  crest never writes to it.
            libc::_exit(1);
        }
    }
}

/// Forks the children of process `i` that `pick` selects, each with its
/// plan's flags and `extra`: the PID of the one whose PID namespace `i`
/// enters for its later children if among them (else 0), or an errno.
///
/// # Safety
/// As [`routine`], whose children run it.
unsafe fn fork_kids(
    plan: &mut TreePlan,
    i: usize,
    pick: fn(&ProcPlan) -> bool,
    extra: u64,
) -> std::result::Result<i32, i32> {
    let mut kids_ns = 0;
    for k in 0..plan.procs[i].children.len() {
        let c = plan.procs[i].children[k];
        if !pick(&plan.procs[c]) {
            continue;
        }
        let flags = plan.procs[c].share | plan.procs[c].new_ns | extra;
        // SAFETY: as this function's.
        match unsafe { fork_child(&plan.procs[c], flags)? } {
            // SAFETY: as above: in the child, only `routine`.
            Forked::Child => unsafe { routine(plan, c) },
            Forked::Parent(pid) if plan.procs[i].kids_ns_of == Some(c) => kids_ns = pid,
            Forked::Parent(_) => {}
        }
    }
    Ok(kids_ns)
}

/// Forks process `p` of the plan with `flags`: inside the user namespace
/// made ahead of it, or with clone3 as usual.  An errno on failure.
///
/// # Safety
/// As [`process::clone_with_tids`].
pub(crate) unsafe fn fork_child(p: &ProcPlan, flags: u64) -> std::result::Result<Forked, i32> {
    if p.userns_fd >= 0 {
        // SAFETY: as this function's.
        unsafe { crest_sys::userns_early::clone_in(p.userns_fd, &p.tids, flags) }
    } else {
        // SAFETY: as this function's.
        unsafe { process::clone_with_tids(&p.tids, flags) }
            .map_err(|e| e.errno().unwrap_or(libc::EINVAL))
    }
}

/// # Safety
/// As [`routine`]: runs in a forked child and never returns.  Leaves the
/// process exactly as the checkpointed zombie: exited with `status`.
/// A failure to join its session or group is reported on `report` (as
/// process `i`'s) instead: the restore then fails.
unsafe fn become_zombie(z: &ZombiePlan, i: usize, report: i32) -> ! {
    libc::prctl(libc::PR_SET_NAME, z.comm.as_ptr(), 0, 0, 0);
    let joined =
        (!z.setsid || libc::setsid() >= 0) && z.pgid.is_none_or(|pg| libc::setpgid(0, pg) == 0);
    if !joined {
        let e = *libc::__errno_location();
        let msg = [i as u32, 13, e as u32];
        libc::write(report, msg.as_ptr().cast(), 12);
        libc::_exit(113);
    }
    let status = z.status;
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // No core file: the original already wrote (or did not write) it.
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        libc::signal(sig, libc::SIG_DFL);
        let none: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none,
            0usize,
            8usize,
        );
        libc::kill(libc::getpid(), sig);
    }
    libc::_exit(libc::WEXITSTATUS(status))
}

/// One task of the tree being built.
pub struct Task {
    /// Its PID in crest's namespace.
    pub tid: i32,
    /// Its PID in its own PID namespace (what it calls itself).
    pub vtid: i32,
    remote: Remote,
}

/// A process of the tree being built.
pub struct StubProc {
    /// Its PID in crest's namespace (see [`Task`]).
    pub pid: i32,
    pub threads: Vec<Task>,
    /// In a PID namespace below crest's.
    nested: bool,
    helper: u64,
    mem: ProcMem,
    queue: RefCell<Queue>,
}

/// Syscalls queued for one thread of a stub ([`Inject::queue`]), run
/// together through the batch loop: one stop of the thread for all.
#[derive(Default)]
struct Queue {
    /// The thread they run in.
    thread: usize,
    calls: Vec<Call>,
    /// The data they point to, for the start of the scratch area.
    data: Vec<u8>,
}

/// The restored tree while it is being built.
pub struct StubTree {
    pub procs: Vec<StubProc>,
    root: i32,
    /// Every pid of the plan, for cleanup.
    pids: Vec<i32>,
    /// With crest's init: the write end of its release pipe.
    release: Option<OwnedFd>,
    /// The hold pipe's writer: stubs wait on it until seized and exit if
    /// it closes before.
    _hold: OwnedFd,
    released: bool,
    /// The root was forked as crest's sibling (CLONE_PARENT).
    sibling: bool,
}

/// The pipes stubs use to report and to hold.
pub struct Pipes {
    pub ready_r: OwnedFd,
    pub ready_w: OwnedFd,
    pub hold_r: OwnedFd,
    pub hold_w: OwnedFd,
}

pub fn pipes() -> Result<Pipes> {
    let (ready_r, ready_w) = crate::files::make_pipe()?;
    let (hold_r, hold_w) = crate::files::make_pipe()?;
    Ok(Pipes {
        ready_r,
        ready_w,
        hold_r,
        hold_w,
    })
}

pub fn helper_len() -> u64 {
    (1 + SCRATCH_PAGES + TABLE_PAGES) * crate::memory::page_size()
}

/// Picks an address for the helper area that is free in crest now (each
/// stub starts as crest's copy) and in every checkpointed layout.
pub fn pick_helper_addr<'a>(layouts: impl Iterator<Item = &'a [Vma]> + Clone) -> Result<u64> {
    let mine = crest_sys::proc::read_maps(std::process::id() as i32)?;
    let len = helper_len();
    let margin = 1u64 << 20;
    let busy = |a: u64| {
        let (lo, hi) = (a.saturating_sub(margin), a + len + margin);
        mine.iter().any(|m| m.start < hi && lo < m.end)
            || layouts
                .clone()
                .any(|vmas| vmas.iter().any(|v| v.start < hi && lo < v.end))
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

fn read_exact_fd(fd: i32, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: reading into the unfilled part of a buffer we own.
        let n = unsafe { libc::read(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done) };
        if n == 0 {
            break;
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(done)
}

/// Seizes a task and waits until it is stopped.
fn seize_stopped(tid: i32) -> Result<()> {
    ptrace::seize(tid, SEIZE_OPTIONS)?;
    ptrace::interrupt(tid)?;
    loop {
        match ptrace::wait(tid)? {
            WaitStatus::Stopped {
                event: PTRACE_EVENT_STOP,
                ..
            } => return Ok(()),
            WaitStatus::Stopped { .. } | WaitStatus::Continued => ptrace::cont(tid, 0)?,
            other => {
                return Err(Error::msg(format!(
                    "task {tid} of the restored tree ended while being attached ({other:?})"
                )))
            }
        }
    }
}

impl StubTree {
    /// Forks the whole tree and seizes every stub once all are ready.
    /// `pipes` ready_w/hold_r must be the plan's sources; crest's copies
    /// of them are closed here.
    pub fn spawn(plan: TreePlan, pipes: Pipes) -> Result<StubTree> {
        StubTree::start(plan, pipes, Vec::new())?.spawn()
    }

    /// Begins creating the tree of `plan`.  With `agents` (process
    /// indexes, or 0 for crest's init with `init`), the root is created
    /// now sharing crest's descriptor table, with the other early
    /// processes below it (each the child of an early one), and each
    /// agent serves calls made as its process until [`Started::spawn`].
    pub fn start(
        mut plan: TreePlan,
        pipes: Pipes,
        agents: Vec<(usize, crest_sys::agent::Agent)>,
    ) -> Result<Started> {
        let mut root = None;
        let mut started = Vec::new();
        if !agents.is_empty() {
            let mut room = 0;
            for (k, a) in &agents {
                let (cmd, reply, r) = a.ends();
                room = room.max(r);
                if plan.init {
                    plan.agent = Some((cmd, reply));
                } else {
                    plan.procs[*k].agent = Some((cmd, reply));
                    plan.procs[*k].early = *k != 0;
                }
            }
            plan.agent_buf = vec![0; room];
            if !plan.init {
                check_early(&plan)?;
            }
            let r = clone_root(&mut plan, libc::CLONE_FILES as u64)?;
            let host = r.0;
            root = Some(r);
            started = match StubTree::await_agents(&plan, &pipes, agents, host) {
                Ok(s) => s,
                Err(e) => {
                    // The early processes below it die with it
                    // (PDEATHSIG); nothing of the tree is left.
                    // SAFETY: plain syscalls on our own child.
                    unsafe {
                        libc::kill(host, libc::SIGKILL);
                        libc::waitpid(host, std::ptr::null_mut(), libc::__WALL);
                    }
                    return Err(e);
                }
            };
        }
        Ok(Started {
            plan,
            pipes,
            root,
            agents: started,
        })
    }

    /// Waits until every agent serves (serving the id-map requests of the
    /// user namespaces they create meanwhile), and finds each one's PID
    /// in crest's namespace; a process that failed on the way is
    /// reported as such.
    fn await_agents(
        plan: &TreePlan,
        pipes: &Pipes,
        agents: Vec<(usize, crest_sys::agent::Agent)>,
        root: i32,
    ) -> Result<Vec<(usize, crest_sys::agent::Agent, i32)>> {
        let mut waiting: Vec<usize> = (0..agents.len()).collect();
        while !waiting.is_empty() {
            let mut fds = vec![libc::pollfd {
                fd: pipes.ready_r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if let Some((sock, _)) = &plan.userns.sock {
                fds.push(libc::pollfd {
                    fd: sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let first = fds.len();
            for &w in &waiting {
                fds.push(libc::pollfd {
                    fd: agents[w].1.hello_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: an array of pollfds we own, of the stated length.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 60_000) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(Error::msg(format!("waiting for the namespace inits: {e}")));
            }
            if r == 0 {
                let who: Vec<String> = waiting
                    .iter()
                    .map(|&w| plan.procs[agents[w].0].pid.to_string())
                    .collect();
                return Err(Error::msg(format!(
                    "restoring pid {}: processes {} were not ready for the socket calls after 60 s \
                     (a stub stuck in its set-up)",
                    plan.procs[0].pid,
                    who.join(", ")
                )));
            }
            if fds[0].revents != 0 {
                return Err(early_failure(plan, pipes.ready_r.as_raw_fd()));
            }
            if first == 2 && fds[1].revents & libc::POLLIN != 0 {
                plan.userns.serve(&plan.procs)?;
            }
            let mut still = Vec::new();
            for (k, &w) in waiting.iter().enumerate() {
                if fds[first + k].revents != 0 {
                    agents[w].1.take_hello().map_err(|e| {
                        Error::msg(format!(
                            "restoring pid {}: {e}",
                            plan.procs[agents[w].0].pid
                        ))
                    })?;
                } else {
                    still.push(w);
                }
            }
            waiting = still;
        }
        // PIDs in crest's namespace, parents first (the plan's order).
        let mut host = vec![0; plan.procs.len()];
        host[0] = root;
        let mut out = Vec::new();
        let mut order: Vec<(usize, crest_sys::agent::Agent)> = agents;
        order.sort_by_key(|(k, _)| *k);
        for (k, a) in order {
            if k != 0 && !plan.init {
                let parent = (0..plan.procs.len())
                    .find(|&q| plan.procs[q].children.contains(&k))
                    .filter(|&q| host[q] > 0)
                    .ok_or_else(|| {
                        Error::msg(format!(
                            "restoring pid {}: its parent was not created first",
                            plan.procs[k].pid
                        ))
                    })?;
                let tids = &plan.procs[k].tids;
                host[k] = crate::ns::pid::children_levels(host[parent])?
                    .into_iter()
                    .find(|(_, l)| !l.is_empty() && l.iter().rev().eq(tids.iter().take(l.len())))
                    .map(|(h, _)| h)
                    .ok_or_else(|| {
                        Error::msg(format!(
                            "restoring pid {}: the early process is not among its parent's \
                             children",
                            plan.procs[k].pid
                        ))
                    })?;
            }
            out.push((k, a, host[k]));
        }
        Ok(out)
    }
}

/// Early processes share crest's descriptor table until they go on, then
/// take a copy: one that shares its parent's table in the image could
/// not, and every early process must be an agent (it waits as one).
fn check_early(plan: &TreePlan) -> Result<()> {
    for p in plan.procs.iter().filter(|p| p.early) {
        if p.share & libc::CLONE_FILES as u64 != 0 || p.agent.is_none() {
            return Err(Error::msg(format!(
                "restoring pid {}: it cannot be created before the sockets (it shares its \
                 parent's descriptor table)",
                p.pid
            )));
        }
    }
    Ok(())
}

/// The error a stub reported on the ready pipe while the early processes
/// were being created.
fn early_failure(plan: &TreePlan, ready: i32) -> Error {
    let mut b = [0u8; 12];
    match read_exact_fd(ready, &mut b) {
        Ok(12) => {
            let w = |k: usize| u32::from_ne_bytes(b[k * 4..k * 4 + 4].try_into().unwrap());
            let (idx, step, errno) = (w(0) as usize, w(1), w(2));
            let pid = plan.procs.get(idx).map(|p| p.pid).unwrap_or(-1);
            let what = STEPS
                .get(step as usize)
                .copied()
                .unwrap_or("an unknown step");
            let err = std::io::Error::from_raw_os_error(errno as i32);
            Error::msg(format!(
                "restoring pid {pid}: the new process failed {what}: {err}"
            ))
        }
        _ => Error::msg(format!(
            "restoring pid {}: the namespace inits died while being set up",
            plan.procs[0].pid
        )),
    }
}

/// A tree being created (see [`StubTree::start`]).
pub struct Started {
    plan: TreePlan,
    pipes: Pipes,
    #[allow(clippy::type_complexity)]
    root: Option<(i32, Option<OwnedFd>, Option<OwnedFd>)>,
    /// The agents: process index, agent, PID in crest's namespace.
    agents: Vec<(usize, crest_sys::agent::Agent, i32)>,
}

/// An agent serving calls made as process `idx` of the image (0 with
/// `--new-pidns`: crest's init, PID 1), whose PID in crest's namespace is
/// `host`.
pub struct AgentRef<'a> {
    pub idx: usize,
    pub agent: &'a crest_sys::agent::Agent,
    pub host: i32,
}

impl Started {
    /// The agents serving calls in the paused early processes.
    pub fn agents(&self) -> Vec<AgentRef<'_>> {
        self.agents
            .iter()
            .map(|(idx, agent, host)| AgentRef {
                idx: *idx,
                agent,
                host: *host,
            })
            .collect()
    }

    /// Creates the tree (lets the paused early processes go on).
    pub fn spawn(self) -> Result<StubTree> {
        let Started {
            mut plan,
            pipes,
            root,
            agents,
        } = self;
        let (root, release, keep) = match root {
            Some(r) => {
                // Innermost first: each takes its copy of the table, then
                // its parent may go on.
                for (k, a, _) in agents.into_iter().rev() {
                    a.go().map_err(|e| {
                        Error::msg(format!(
                            "restoring pid {}: letting the early process go on: {e}",
                            plan.procs[k].pid
                        ))
                    })?;
                }
                r
            }
            None => clone_root(&mut plan, 0)?,
        };
        drop(keep);
        StubTree::wait_spawned(plan, pipes, root, release)
    }
}

/// Clones the tree's root (or crest's init above it), with `extra` clone
/// flags: its PID, the write end of crest's init's release pipe, and a
/// descriptor to keep open until the root has its own table.
#[allow(clippy::type_complexity)]
fn clone_root(plan: &mut TreePlan, extra: u64) -> Result<(i32, Option<OwnedFd>, Option<OwnedFd>)> {
    let root_flags = extra
        | if plan.root_sibling {
            libc::CLONE_PARENT as u64
        } else {
            0
        };
    let mut release = None;
    let mut keep = None;
    let root = if plan.init {
        let (r, w) = crate::files::make_pipe()?;
        let rfd = r.as_raw_fd();
        let flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64 | root_flags;
        // SAFETY: the child runs only `mini_init` and `routine`, raw
        // syscalls on its own copy of the plan; it never returns.
        let init = match unsafe { process::clone_with_tids(&[], flags)? } {
            // SAFETY: as above.
            Forked::Child => unsafe { crate::ns::init::mini_init(plan, rfd) },
            Forked::Parent(pid) => pid,
        };
        release = Some(w);
        // On a shared table the init's end is crest's until it unshares.
        keep = Some(r);
        init
    } else {
        let flags = plan.procs[0].new_ns | root_flags;
        if plan.procs[0].userns_fd >= 0 && flags & libc::CLONE_PARENT as u64 != 0 {
            return Err(Error::Incompatible(format!(
                "restoring pid {}: a root created inside its user namespace made ahead (its \
                 network namespace belongs to it) cannot be a sibling of crest",
                plan.procs[0].pid
            )));
        }
        // SAFETY: the child runs only `routine`, raw syscalls on its own
        // copy of the plan; it never returns.
        let forked = if plan.procs[0].userns_fd >= 0 {
            // SAFETY: as above.
            unsafe { fork_child(&plan.procs[0], flags) }.map_err(|e| {
                Error::msg(format!(
                    "restoring pid {}: creating its process in its user namespace: {}",
                    plan.procs[0].pid,
                    std::io::Error::from_raw_os_error(e)
                ))
            })?
        } else {
            // SAFETY: as above.
            unsafe { process::clone_with_tids(&plan.procs[0].tids, flags)? }
        };
        match forked {
            // SAFETY: as above: in the child, only `routine`.
            Forked::Child => unsafe { routine(plan, 0) },
            Forked::Parent(pid) => pid,
        }
    };
    Ok((root, release, keep))
}

impl StubTree {
    fn wait_spawned(
        plan: TreePlan,
        pipes: Pipes,
        root: i32,
        release: Option<OwnedFd>,
    ) -> Result<StubTree> {
        let root_pid = plan.procs[0].pid;
        let Pipes {
            ready_r,
            ready_w,
            hold_r,
            hold_w,
        } = pipes;
        drop(ready_w);
        drop(hold_r);
        let mut tree = StubTree {
            procs: Vec::new(),
            root,
            pids: if crate::ns::init::nested(&plan) {
                vec![root]
            } else {
                plan.procs.iter().map(|p| p.pid).collect()
            },
            _hold: hold_w,
            release,
            released: false,
            sibling: plan.root_sibling,
        };
        let n = plan.procs.len();
        let mut ready = vec![false; n];
        let mut got = 0;
        while got < n {
            plan.userns.wait_ready(ready_r.as_raw_fd(), &plan.procs)?;
            let mut b = [0u8; 12];
            let r = read_exact_fd(ready_r.as_raw_fd(), &mut b)
                .context(|| "waiting for the new processes".into())?;
            if r < 12 {
                return Err(Error::msg(format!(
                    "restoring pid {root_pid}: the new processes died while being set up"
                )));
            }
            let w = |k: usize| u32::from_ne_bytes(b[k * 4..k * 4 + 4].try_into().unwrap());
            let (idx, step, errno) = (w(0) as usize, w(1), w(2));
            let pid = plan.procs.get(idx).map(|p| p.pid).unwrap_or(-1);
            if step != READY {
                let what = STEPS
                    .get(step as usize)
                    .copied()
                    .unwrap_or("an unknown step");
                let err = std::io::Error::from_raw_os_error(errno as i32);
                let hint = if step == 3 && errno as i32 == libc::EEXIST {
                    " (a pid of the tree is in use)"
                } else {
                    ""
                };
                return Err(Error::msg(format!(
                    "restoring pid {pid}: the new process failed {what}: {err}{hint}"
                )));
            }
            if idx < n && !ready[idx] {
                ready[idx] = true;
                got += 1;
            }
        }
        let (hosts, zombie_hosts) = crate::ns::init::host_pids(&plan, root)?;
        tree.pids = hosts.clone();
        // Zombies exit on their own: wait until they have, so their
        // SIGCHLD is pending in their parent before it is rebuilt.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for (z, &zh) in plan
            .procs
            .iter()
            .flat_map(|p| &p.zombies)
            .zip(&zombie_hosts)
        {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !crest_sys::pidfd::wait_exited(zh, left)? {
                return Err(Error::msg(format!(
                    "restoring zombie {}: it did not exit",
                    z.pid
                )));
            }
        }
        for (p, &host) in plan.procs.iter().zip(&hosts) {
            seize_stopped(host)?;
            tree.procs.push(StubProc {
                pid: host,
                nested: p.nested,
                threads: vec![Task {
                    tid: host,
                    vtid: p.tids[0],
                    remote: Remote::new(host, plan.helper)?,
                }],
                helper: plan.helper,
                mem: ProcMem::open(host, true)?,
                queue: RefCell::default(),
            });
        }
        Ok(tree)
    }

    /// The root's PID in crest's namespace.
    pub fn root(&self) -> i32 {
        self.root
    }

    /// Lets every thread of every process run with its final state:
    /// `fin(process index, thread index)` gives registers, XSAVE area and
    /// signal mask.  The helper area is unmapped first in each process.
    /// `stops` says which processes go back into a job-control stop, and
    /// `parents` gives each process's parent index (see `crate::task::jobctl`):
    /// children are let go before their parents, so that a parent still
    /// held can collect again a stop it had collected.
    pub fn release(
        mut self,
        fin: &dyn Fn(usize, usize) -> Result<(UserRegs, Vec<u8>, u64)>,
        stops: &[Option<crate::task::jobctl::Stop>],
        parents: &[Option<usize>],
    ) -> Result<i32> {
        use crate::task::jobctl;
        for (pi, p) in self.procs.iter().enumerate() {
            for (ti, t) in p.threads.iter().enumerate() {
                let (_, xsave, _) = fin(pi, ti)?;
                if !xsave.is_empty() {
                    ptrace::set_xstate(t.tid, &xsave).context(|| {
                        format!("task {}: loading the FPU/vector state (XSAVE)", t.tid)
                    })?;
                }
            }
        }
        let stopped_children = |pi: usize| {
            (0..self.procs.len()).filter(move |&c| parents[c] == Some(pi) && stops[c].is_some())
        };
        // Parents of stopped children: no SIGCHLD for the stops to come.
        let mut quiet: Vec<Option<Vec<u8>>> = vec![None; self.procs.len()];
        for (pi, p) in self.procs.iter().enumerate() {
            if stopped_children(pi).next().is_some() {
                quiet[pi] = Some(jobctl::quiet_sigchld(&p.direct())?);
            }
        }
        // Until every task is let go a failure kills the whole tree (those
        // already let go too): nothing half-built is left.
        for (pi, p) in self.procs.iter().enumerate().rev() {
            if let Some(old) = &quiet[pi] {
                let d = p.direct();
                for c in stopped_children(pi) {
                    let child = &self.procs[c];
                    if !jobctl::wait_stopped(child.pid, std::time::Duration::from_secs(10)) {
                        return Err(Error::msg(format!(
                            "pid {}: it did not go back into its job-control stop",
                            child.pid
                        )));
                    }
                    if stops[c].is_some_and(|s| s.collected) {
                        jobctl::collect_again(&d, child.pid)?;
                    }
                }
                jobctl::restore_sigchld(&d, old)?;
            }
            // Not through the batch loop: this call unmaps it.
            p.direct().call(
                libc::SYS_munmap,
                &[p.helper, helper_len()],
                "unmapping the restore helper",
            )?;
            for (ti, t) in p.threads.iter().enumerate() {
                let (regs, _, sigmask) = fin(pi, ti)?;
                ptrace::set_sigmask(t.tid, sigmask)?;
                ptrace::set_regs(t.tid, &regs)
                    .context(|| format!("task {}: loading registers", t.tid))?;
            }
            // A process that was in a job-control stop goes back into it:
            // the leader leaves a syscall stop, so the kernel sends it the
            // signal, which stops the group before it runs an instruction.
            // The other threads follow once the leader has stopped.
            let sig = stops[pi].map_or(0, |s| s.signal);
            for (ti, t) in p.threads.iter().enumerate() {
                if ti == 1 && sig != 0 {
                    jobctl::wait_stopped(p.pid, std::time::Duration::from_secs(2));
                }
                ptrace::detach(t.tid, if ti == 0 { sig } else { 0 })?;
            }
        }
        self.released = true;
        if let Some(w) = self.release.take() {
            // crest's init: the tree runs, stay.
            std::fs::File::from(w)
                .write_all(b"r")
                .context(|| "releasing crest's init".into())?;
        }
        Ok(self.root)
    }
}

impl Drop for StubTree {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Killing the root takes its descendants with it (PDEATHSIG), but
        // kill every stub anyway, deepest first (and crest's init, which
        // takes its whole namespace).
        if self.release.is_some() {
            let _ = process::kill(self.root, libc::SIGKILL);
        }
        for &pid in self.pids.iter().rev() {
            let _ = process::kill(pid, libc::SIGKILL);
        }
        // The kernel reports a thread-group leader's death only after the
        // other threads' have been collected: wait for those first.
        for p in self.procs.iter().rev() {
            for t in p.threads.iter().rev() {
                if t.tid != self.root {
                    let _ = ptrace::wait(t.tid);
                }
            }
        }
        // The root is crest's child (unless forked as crest's sibling,
        // when its parent reaps it): reap it so its pid is free at once.
        if !self.sibling {
            // SAFETY: plain waitpid on our child.
            unsafe { libc::waitpid(self.root, std::ptr::null_mut(), libc::__WALL) };
        }
        // Orphaned stubs come to crest when it is a child subreaper (the
        // CLI makes it one): reap those too, briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        for &pid in &self.pids[1..] {
            while crest_sys::process::exists(pid) && std::time::Instant::now() < deadline {
                // SAFETY: plain waitpid on a pid of the plan.
                let r = unsafe {
                    libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL)
                };
                if r != 0 && r != pid {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        }
    }
}

impl StubProc {
    /// The injection view of thread `i` (0 is the leader).
    pub fn thread(&self, i: usize) -> TaskView<'_> {
        TaskView { p: self, i }
    }

    /// The leader, running each syscall by ptrace syscall stops at the
    /// helper's `syscall; jmp .` instead of through the batch loop (after
    /// the queued calls).
    pub fn direct(&self) -> DirectView<'_> {
        DirectView { p: self }
    }

    /// Removes everything crest's copy left in the stub's address space
    /// (and its rseq registration, which points into it).  The calls are
    /// queued: they run with the next batch (see [`StubProc::map_vdso`]).
    /// `keep` lists ranges (inherited copy-on-write memory, see
    /// `crate::memory::cow`) left in place.
    pub fn empty_address_space(&self, keep: &[(u64, u64)]) -> Result<()> {
        let t = self.thread(0);
        let rseq = ptrace::get_rseq_config(self.pid)?;
        if rseq.rseq_abi_pointer != 0 {
            t.queue(Call::new(
                libc::SYS_rseq,
                &[
                    rseq.rseq_abi_pointer,
                    rseq.rseq_abi_size as u64,
                    RSEQ_FLAG_UNREGISTER,
                    rseq.signature as u64,
                ],
                "unregistering the inherited rseq area".into(),
            ))?;
        }
        let hend = self.helper + helper_len();
        for m in crest_sys::proc::read_maps(self.pid)?
            .into_iter()
            .filter(|m| m.path != "[vsyscall]" && !(m.start >= self.helper && m.end <= hend))
        {
            // The parts of the mapping outside the kept ranges.
            let mut at = m.start;
            let mut parts = Vec::new();
            let mut inside: Vec<&(u64, u64)> = keep
                .iter()
                .filter(|k| k.0 < m.end && m.start < k.1)
                .collect();
            inside.sort();
            for &&(ks, ke) in &inside {
                if ks > at {
                    parts.push((at, ks));
                }
                at = at.max(ke);
            }
            if at < m.end {
                parts.push((at, m.end));
            }
            for (s, e) in parts {
                t.queue(Call::new(
                    libc::SYS_munmap,
                    &[s, e - s],
                    format!("unmapping {s:#x}-{e:#x} {}", m.path),
                ))?;
            }
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
        let t = self.thread(0);
        t.queue(Call::new(
            libc::SYS_arch_prctl,
            &[ARCH_MAP_VDSO_64, lowest],
            format!("mapping the vDSO at {lowest:#x}"),
        ))?;
        t.flush()?;
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

    /// Writes pages into the stub: each `(address, contents)` of `runs`,
    /// all in one process_vm_writev (up to the kernel's iovec limit).
    pub fn write_pages(&self, runs: &[(u64, &[u8])]) -> Result<()> {
        crest_sys::mem::write_runs(self.pid, runs)
            .context(|| format!("filling restored memory of pid {}", self.pid))
    }

    /// Creates thread `tid` in the process (by an injected clone3) and
    /// attaches it.  It spins in the helper area until given its state.
    pub fn add_thread(&mut self, tids: &[i32]) -> Result<()> {
        let tid = tids[0];
        let t = self.thread(0);
        t.flush()?;
        // struct clone_args, then the set_tid array.
        let flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        let s = t.scratch();
        let tid_at = s + 128;
        let mut args = [0u64; 11];
        args[0] = flags;
        args[8] = tid_at; // set_tid
        args[9] = tids.len() as u64; // set_tid_size
        let bytes: Vec<u8> = args.iter().flat_map(|v| v.to_ne_bytes()).collect();
        t.write_scratch(0, &bytes)?;
        let tid_bytes: Vec<u8> = tids.iter().flat_map(|v| v.to_ne_bytes()).collect();
        t.write_scratch(128, &tid_bytes)?;
        // Not through the batch loop: the new thread starts after the
        // `syscall` with the caller's registers, and must land on the
        // `jmp .` that follows the helper's single `syscall`.
        let got = self.direct().call(
            libc::SYS_clone3,
            &[s, bytes.len() as u64],
            &format!("creating thread {tid}"),
        )?;
        if got as i32 != tid {
            return Err(Error::msg(format!(
                "pid {}: thread created as {got}, not {tid}",
                self.pid
            )));
        }
        let host = if self.nested {
            crate::ns::pid::thread_host_tid(self.pid, tid)?
        } else {
            tid
        };
        seize_stopped(host)?;
        self.threads.push(Task {
            tid: host,
            vtid: tid,
            remote: Remote::new(host, self.helper)?,
        });
        Ok(())
    }
}

/// One thread of a stub: syscalls run as that thread.
pub struct TaskView<'a> {
    p: &'a StubProc,
    i: usize,
}

impl TaskView<'_> {
    fn remote(&self) -> &Remote {
        &self.p.threads[self.i].remote
    }

    /// Address of the batch table in the task.
    fn table(&self) -> u64 {
        self.scratch() + SCRATCH_PAGES * crate::memory::page_size()
    }

    /// Most calls one run of the batch loop takes.
    fn table_capacity() -> usize {
        ((TABLE_PAGES * crate::memory::page_size()) / BATCH_ENTRY) as usize
    }

    /// Bytes of data the queued calls may point to.
    fn data_capacity() -> usize {
        (SCRATCH_PAGES * crate::memory::page_size()) as usize
    }

    /// Runs `calls` (at most a table's worth) in this thread with the
    /// batch loop: one stop of the thread, plus one more for each call that
    /// fails but may.  Returns every result (a negative errno for those).
    fn run_table(&self, calls: &[Call]) -> Result<Vec<u64>> {
        debug_assert!(calls.len() <= Self::table_capacity());
        let mut table = Vec::with_capacity(calls.len() * BATCH_ENTRY as usize);
        for c in calls {
            table.extend_from_slice(&(c.nr as u64).to_ne_bytes());
            for a in c.args {
                table.extend_from_slice(&a.to_ne_bytes());
            }
            table.extend_from_slice(&0u64.to_ne_bytes());
        }
        let base = self.table();
        self.p.mem.write(base, &table)?;
        let mut next = 0;
        let mut failed = None;
        while next < calls.len() {
            let start = base + next as u64 * BATCH_ENTRY;
            let left = (calls.len() - next) as u64;
            let at = self.remote().run_until_trap(
                self.p.helper + BATCH_OFF as u64,
                self.p.helper + BATCH_END,
                |r| {
                    r.r12 = start;
                    r.r13 = left;
                },
            )?;
            if at.r13 == 0 {
                break;
            }
            let i = ((at.r12 - base) / BATCH_ENTRY) as usize;
            if !calls[i].may_fail {
                failed = Some(i);
                break;
            }
            next = i + 1;
        }
        self.p.mem.read(base, &mut table)?;
        let results: Vec<u64> = table
            .chunks_exact(BATCH_ENTRY as usize)
            .map(|e| u64::from_ne_bytes(e[56..64].try_into().expect("8 bytes")))
            .collect();
        if let Some(i) = failed {
            let err = -(results[i] as i64);
            return Err(crest_sys::Error::io(
                format!("pid {}: {}", self.pid(), calls[i].what),
                std::io::Error::from_raw_os_error(err as i32),
            )
            .into());
        }
        Ok(results)
    }

    /// Makes the queue this thread's: another thread's queued calls run
    /// first, so every call runs in the order it was made.
    fn claim_queue(&self) -> Result<()> {
        let owner = {
            let q = self.p.queue.borrow();
            (q.thread != self.i && !(q.calls.is_empty() && q.data.is_empty())).then_some(q.thread)
        };
        if let Some(i) = owner {
            TaskView { p: self.p, i }.flush()?;
        }
        self.p.queue.borrow_mut().thread = self.i;
        Ok(())
    }
}

impl Inject for TaskView<'_> {
    fn pid(&self) -> i32 {
        self.p.threads[self.i].tid
    }

    fn own_pid(&self) -> i32 {
        self.p.threads[self.i].vtid
    }

    /// Runs the call through the batch loop (one stop of the thread),
    /// after the queued calls.
    fn call(&self, nr: i64, args: &[u64], what: &str) -> Result<u64> {
        crate::fault::point("restore: injected syscall")?;
        self.flush()?;
        let r = self.run_table(&[Call::new(nr, args, what.to_string())])?;
        Ok(r[0])
    }

    fn scratch(&self) -> u64 {
        self.p.helper + crate::memory::page_size()
    }

    fn read_scratch(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.flush()?;
        Ok(self.p.mem.read(self.scratch() + off, buf)?)
    }

    fn write_scratch(&self, off: u64, data: &[u8]) -> Result<()> {
        // The queued calls' data is there.
        self.flush()?;
        Ok(self.p.mem.write(self.scratch() + off, data)?)
    }

    /// Runs the calls with the helper's batch loop: one round trip per
    /// 4096 syscalls instead of several per syscall.
    fn batch(&self, calls: &[Call]) -> Result<Vec<u64>> {
        self.flush()?;
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(Self::table_capacity()) {
            crate::fault::point("restore: injected syscall")?;
            out.extend(self.run_table(chunk)?);
        }
        Ok(out)
    }

    fn queue(&self, call: Call) -> Result<()> {
        crate::fault::point("restore: injected syscall")?;
        if self.p.queue.borrow().calls.len() >= Self::table_capacity() {
            self.flush()?;
        }
        self.claim_queue()?;
        self.p.queue.borrow_mut().calls.push(call);
        Ok(())
    }

    fn place_with(&self, len: usize, fill: &mut dyn FnMut(u64, &mut [u8])) -> Result<u64> {
        if len > Self::data_capacity() {
            return Err(Error::msg(format!(
                "pid {}: {len} bytes of syscall arguments do not fit the restore helper",
                self.pid()
            )));
        }
        let used = self.p.queue.borrow().data.len().next_multiple_of(16);
        if used + len > Self::data_capacity() {
            self.flush()?;
        }
        self.claim_queue()?;
        let mut q = self.p.queue.borrow_mut();
        let off = q.data.len().next_multiple_of(16);
        q.data.resize(off + len, 0);
        let addr = self.scratch() + off as u64;
        fill(addr, &mut q.data[off..]);
        Ok(addr)
    }

    /// Runs the queued calls: their data is written to the scratch area in
    /// one go, then the batch loop runs them.
    fn flush(&self) -> Result<()> {
        let q = std::mem::take(&mut *self.p.queue.borrow_mut());
        if q.calls.is_empty() {
            return Ok(());
        }
        let t = TaskView {
            p: self.p,
            i: q.thread,
        };
        if !q.data.is_empty() {
            self.p.mem.write(self.scratch(), &q.data)?;
        }
        t.run_table(&q.calls)?;
        Ok(())
    }
}

/// The leader of a stub, running syscalls by ptrace syscall stops: for the
/// calls the batch loop cannot run (one that unmaps it, clone3) and those
/// that must not meet its int3 (see `restore`).
pub struct DirectView<'a> {
    p: &'a StubProc,
}

impl Inject for DirectView<'_> {
    fn pid(&self) -> i32 {
        self.p.pid
    }
    fn own_pid(&self) -> i32 {
        self.p.threads[0].vtid
    }
    fn call(&self, nr: i64, args: &[u64], what: &str) -> Result<u64> {
        crate::fault::point("restore: injected syscall")?;
        self.p.thread(0).flush()?;
        Ok(self.p.threads[0].remote.syscall(nr, args, what)?)
    }
    fn scratch(&self) -> u64 {
        self.p.thread(0).scratch()
    }
    fn read_scratch(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.p.thread(0).read_scratch(off, buf)
    }
    fn write_scratch(&self, off: u64, data: &[u8]) -> Result<()> {
        self.p.thread(0).write_scratch(off, data)
    }
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
