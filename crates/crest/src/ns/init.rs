//! The PID-namespace side of building a restored tree: crest's small
//! init for `restore --new-pidns`, and finding the PIDs (in crest's
//! namespace) of stubs the kernel numbered there.

use crate::error::{Error, Result};
use crate::restore::stub::{routine, TreePlan};
use crest_sys::process::Forked;

/// Whether some process of the plan is in a PID namespace below crest's
/// (its PID in crest's namespace is then the kernel's choice).
pub(crate) fn nested(plan: &TreePlan) -> bool {
    plan.procs.iter().any(|p| p.nested)
}

/// The PIDs in crest's namespace of the plan's processes and of their
/// zombies (in plan order), found among each parent's children by the
/// PID each has in its own namespace, in the order they were created.
pub(crate) fn host_pids(plan: &TreePlan, root: i32) -> Result<(Vec<i32>, Vec<i32>)> {
    if !nested(plan) {
        let zombies = plan.procs.iter().flat_map(|p| &p.zombies).map(|z| z.pid);
        return Ok((
            plan.procs.iter().map(|p| p.pid).collect(),
            zombies.collect(),
        ));
    }
    let mut hosts = vec![0; plan.procs.len()];
    hosts[0] = if plan.init {
        // The init's only child.
        match crate::ns::pid::children_levels(root)?.first() {
            Some((h, _)) => *h,
            None => return Err(Error::msg("crest's init has no child")),
        }
    } else {
        root
    };
    let mut zombies = Vec::new();
    for (i, p) in plan.procs.iter().enumerate() {
        let mut kids = crate::ns::pid::children_levels(hosts[i])?;
        let mut take = |tids: &[i32], what: i32| -> Result<i32> {
            let k = kids.iter().position(|(h, levels)| match levels.last() {
                None => *h == tids[0],
                Some(own) => *own == tids[0],
            });
            match k {
                Some(k) => Ok(kids.remove(k).0),
                None => Err(Error::msg(format!(
                    "restoring pid {what}: the new process is not among its parent's children"
                ))),
            }
        };
        for &c in &p.children {
            hosts[c] = take(&plan.procs[c].tids, plan.procs[c].pid)?;
        }
        for z in &p.zombies {
            zombies.push(take(&z.tids, z.pid)?);
        }
    }
    Ok((hosts, zombies))
}

/// The signals crest's init passes on to the tree's root.
const FORWARDED: [i32; 8] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCONT,
    libc::SIGWINCH,
];

extern "C" fn ignore_signal(_: i32) {}

/// crest's init for `restore --new-pidns`: PID 1 of the new namespace,
/// in a new mount namespace whose /proc shows the new PID namespace (the
/// tree sees its own PIDs there too).  It forks the tree's root (which
/// runs the stub routine), then closes every descriptor but `release` and
/// waits there: EOF means the restore failed (crest died or dropped the
/// tree: only crest has the write end) and it exits, taking the namespace
/// with it; a byte means the tree runs, and from then on it only reaps
/// orphans and passes the common termination and job signals it receives
/// on to the root, and exits with the root's status (a root killed by a
/// signal: 128 + its number).
///
/// # Safety
/// As `crate::restore::stub`'s routine: runs in a forked child, only raw
/// syscalls on its own copy of the plan; never returns.
pub(crate) unsafe fn mini_init(plan: &mut TreePlan, release: i32) -> ! {
    // Created sharing crest's descriptor table: serves the socket calls
    // made in the namespace first (see `TreePlan::agent`), dying with
    // crest meanwhile.
    if let Some((cmd, reply)) = plan.agent {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if !crest_sys::agent::serve(cmd, reply, &mut plan.agent_buf) {
            libc::_exit(1);
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0);
    }
    // Its own mount namespace (a copy of crest's, kept from propagating
    // back) with a /proc of the new PID namespace.
    if libc::mount(
        std::ptr::null(),
        c"/".as_ptr(),
        std::ptr::null(),
        libc::MS_REC | libc::MS_SLAVE,
        std::ptr::null(),
    ) != 0
        || libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
    {
        libc::_exit(2);
    }
    let all: u64 = !0;
    libc::syscall(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        &all,
        0usize,
        8usize,
    );
    // An init drops signals whose action is the default: give the ones
    // it forwards a handler (never run: they stay blocked).
    for sig in FORWARDED {
        libc::signal(sig, ignore_signal as *const () as libc::sighandler_t);
    }
    libc::signal(
        libc::SIGCHLD,
        ignore_signal as *const () as libc::sighandler_t,
    );
    let flags = plan.procs[0].share | plan.procs[0].new_ns;
    let root = match crate::restore::stub::fork_child(&plan.procs[0], flags) {
        Ok(Forked::Child) => routine(plan, 0),
        Ok(Forked::Parent(pid)) => pid,
        Err(_) => libc::_exit(1),
    };
    libc::syscall(libc::SYS_close_range, 0u32, (release - 1) as u32, 0u32);
    libc::syscall(libc::SYS_close_range, (release + 1) as u32, u32::MAX, 0u32);
    let mut b = 0u8;
    loop {
        let n = libc::read(release, (&mut b as *mut u8).cast(), 1);
        if n == 1 {
            break;
        }
        if n == 0 || *libc::__errno_location() != libc::EINTR {
            libc::_exit(1);
        }
    }
    libc::close(release);
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut set);
    loop {
        let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
        if sig == libc::SIGCHLD || sig < 0 {
            loop {
                let mut st = 0;
                let r = libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL);
                if r <= 0 {
                    break;
                }
                if r == root {
                    if libc::WIFSIGNALED(st) {
                        libc::_exit(128 + libc::WTERMSIG(st));
                    }
                    libc::_exit(libc::WEXITSTATUS(st));
                }
            }
        } else if FORWARDED.contains(&sig) {
            libc::kill(root, sig);
        }
    }
}
