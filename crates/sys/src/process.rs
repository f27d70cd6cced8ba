//! Processes: creating one with a chosen PID, and process attributes that
//! crest reads or sets from outside (limits, priority, scheduling, kcmp).

use crate::{Error, Result};
use libc::pid_t;

/// What [`clone_with_pid`] returned in each of the two processes.
pub enum Forked {
    Child,
    Parent(pid_t),
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks the calling process with clone3(2) so that the child gets PID
/// `pid` (clone3's set_tid; needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN).
///
/// # Safety
/// As with fork() in a program that may hold locks: until it execs or
/// exits, the child may only make async-signal-safe calls (no allocation,
/// no locks).  The caller's child code must keep to that.
///
/// `flags` are clone flags for what the child shares with the caller
/// (CLONE_FILES, CLONE_FS), or CLONE_PARENT to make it a child of the
/// caller's parent; never CLONE_VM.
pub unsafe fn clone_with_pid(pid: pid_t, flags: u64) -> Result<Forked> {
    // SAFETY: the caller keeps to clone_with_tids's contract, the same.
    unsafe { clone_with_tids(&[pid], flags) }
}

/// Forks the calling process with clone3(2), choosing the child's PID in
/// each of the innermost `tids.len()` PID namespaces it is in: `tids[0]`
/// in its own (the new one with CLONE_NEWPID), `tids[1]` in the one
/// above, and so on; the kernel picks the PIDs of the levels above those.
/// `flags` may hold CLONE_NEW* flags for new namespaces.  Allocation-free.
///
/// # Safety
/// As [`clone_with_pid`].
pub unsafe fn clone_with_tids(tids: &[pid_t], flags: u64) -> Result<Forked> {
    debug_assert!(flags & libc::CLONE_VM as u64 == 0);
    // With CLONE_PARENT the child's exit signal is the caller's own (the
    // kernel refuses one given here).
    let exit_signal = if flags & libc::CLONE_PARENT as u64 != 0 {
        0
    } else {
        libc::SIGCHLD as u64
    };
    let args = CloneArgs {
        flags,
        exit_signal,
        set_tid: if tids.is_empty() {
            0
        } else {
            tids.as_ptr() as u64
        },
        set_tid_size: tids.len() as u64,
        ..Default::default()
    };
    // A PID whose process was just reaped has no task any more a moment
    // before the kernel frees its number (release_task unhashes the task,
    // then frees its pids): clone3 says EEXIST in that window.  For a PID
    // of crest's own namespace kill(pid, 0) tells the two apart (ESRCH: no
    // task); such a PID is tried again for up to 100 ms, one held by a
    // process (even a zombie) never.  Allocation-free.
    let own_level = tids.len() == 1 && flags & libc::CLONE_NEWPID as u64 == 0;
    let mut tries = 0;
    let (r, errno) = loop {
        // SAFETY: args points to a valid clone_args of the size we pass,
        // and set_tid to `tids`; no CLONE_VM, so the child has its own
        // copy of the address space.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        let errno = if r < 0 {
            std::io::Error::last_os_error().raw_os_error()
        } else {
            None
        };
        // SAFETY: signal 0 only checks that the PID has a task.
        let in_transit = errno == Some(libc::EEXIST)
            && own_level
            && tries < 100
            && unsafe { libc::kill(tids[0], 0) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if !in_transit {
            break (r, errno);
        }
        tries += 1;
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // SAFETY: nanosleep reads `pause`; no remainder wanted.
        unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
    };
    match r {
        0 => Ok(Forked::Child),
        r if r > 0 => Ok(Forked::Parent(r as pid_t)),
        _ => {
            let err = std::io::Error::from_raw_os_error(errno.unwrap_or(0));
            let pid = tids.first().copied().unwrap_or(0);
            let ctx = match err.raw_os_error() {
                Some(libc::EEXIST) => format!("PID {pid} is already in use"),
                Some(libc::EPERM) => format!(
                    "creating a process with PID {pid} needs CAP_CHECKPOINT_RESTORE \
                     (or CAP_SYS_ADMIN); run crest restore as root"
                ),
                _ => format!("creating a process with PIDs {tids:?} (clone3 set_tid)"),
            };
            Err(Error::io(ctx, err))
        }
    }
}

/// The nice value of process `pid`.
pub fn get_nice(pid: pid_t) -> Result<i32> {
    // getpriority returns 20 - nice for the raw syscall.
    // SAFETY: plain syscall.
    let r = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, pid) };
    if r < 0 {
        return Err(Error::last_os(format!("getpriority({pid})")));
    }
    Ok(20 - r as i32)
}

/// Sets the nice value of process `pid`.
pub fn set_nice(pid: pid_t, nice: i32) -> Result<()> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as _, nice) };
    if r != 0 {
        return Err(Error::last_os(format!("setpriority({pid}, {nice})")));
    }
    Ok(())
}

/// Scheduling policy and static priority of task `pid`.
pub fn get_sched(pid: pid_t) -> Result<(i32, i32)> {
    // SAFETY: plain syscall.
    let policy = unsafe { libc::sched_getscheduler(pid) };
    if policy < 0 {
        return Err(Error::last_os(format!("sched_getscheduler({pid})")));
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall with a valid out pointer.
    if unsafe { libc::sched_getparam(pid, &mut param) } != 0 {
        return Err(Error::last_os(format!("sched_getparam({pid})")));
    }
    Ok((policy, param.sched_priority))
}

/// Resource limit `resource` (soft, hard) of process `pid`.  The kernel
/// allows this only to a caller with the process's uids and gids, or with
/// CAP_SYS_RESOURCE (EPERM otherwise).
pub fn get_rlimit(pid: pid_t, resource: u32) -> Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall reading into a valid out pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            pid,
            resource,
            std::ptr::null::<libc::rlimit64>(),
            &mut old as *mut libc::rlimit64,
        )
    };
    if r != 0 {
        return Err(Error::last_os(format!("prlimit({pid}, {resource})")));
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// Sets the scheduling policy (with SCHED_RESET_ON_FORK as given) of `pid`.
pub fn set_sched(pid: pid_t, policy: i32, priority: i32) -> Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: plain syscall with a valid in pointer.
    if unsafe { libc::sched_setscheduler(pid, policy, &param) } != 0 {
        return Err(Error::last_os(format!(
            "sched_setscheduler({pid}, policy {policy}, priority {priority})"
        )));
    }
    Ok(())
}

/// The robust-futex list head and length of task `tid`.
pub fn get_robust_list(tid: pid_t) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: plain syscall with valid out pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    if r != 0 {
        return Err(Error::last_os(format!("get_robust_list({tid})")));
    }
    Ok((head, len as u64))
}

/// kcmp(2) resource types.
pub mod kcmp_type {
    pub const FILE: i32 = 0;
    pub const VM: i32 = 1;
    pub const FILES: i32 = 2;
    pub const FS: i32 = 3;
    pub const SIGHAND: i32 = 4;
}

/// Orders two kernel objects: 0 when the same object, non-zero otherwise.
pub fn kcmp(pid1: pid_t, pid2: pid_t, kind: i32, a: u64, b: u64) -> Result<i32> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, a, b) };
    if r < 0 {
        return Err(Error::last_os(format!(
            "kcmp({pid1}, {pid2}, type {kind}, {a}, {b})"
        )));
    }
    Ok(r as i32)
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: pid_t, sig: i32) -> Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(Error::last_os(format!("kill({pid}, {sig})")));
    }
    Ok(())
}

/// Whether a process with this PID exists (zombies included).
pub fn exists(pid: pid_t) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// uname(2) fields: sysname, nodename, release, version, machine.
pub fn uname() -> Result<[String; 5]> {
    // SAFETY: utsname is plain old data; zeroed is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(Error::last_os("uname"));
    }
    let f = |s: &[libc::c_char]| {
        let b: Vec<u8> = s
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    Ok([
        f(&u.sysname),
        f(&u.nodename),
        f(&u.release),
        f(&u.version),
        f(&u.machine),
    ])
}

/// Page size of this machine.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Makes the caller a child subreaper (orphans below it are reparented to it).
pub fn set_child_subreaper() -> Result<()> {
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(Error::last_os("prctl(PR_SET_CHILD_SUBREAPER)"));
    }
    Ok(())
}
