//! `pidfd`: pidfds. The root holds a pidfd of its child C (fd 40), one of
//! itself opened with PIDFD_NONBLOCK (fd 41) and one of a child E that has
//! exited and been reaped (fd 42). After go: each fdinfo's Pid (C, itself,
//! -1) and flags, pidfd_send_signal(0) works on C and fails with ESRCH on
//! E; C exits 7 after go and the root collects it with waitid(P_PIDFD).

use crate::checks::Checks;
use crate::common::Baseline;
use crate::family;
use crate::proto::Proto;
use crate::util::errno;

const P_PIDFD: libc::idtype_t = 3;

fn pidfd_open(pid: i32, flags: u32) -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) as i32 }
}

fn fdinfo(fd: i32, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| Some(l.strip_prefix(key)?.trim().to_string()))
}

fn send0(fd: i32) -> i32 {
    // SAFETY: plain syscall, signal 0.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, 0, 0usize, 0) };
    if r == 0 {
        0
    } else {
        errno()
    }
}

fn place(p: &Proto, fd: i32, at: i32) {
    // SAFETY: moving our own descriptor.
    if fd < 0 || unsafe { libc::dup2(fd, at) } != at || unsafe { libc::close(fd) } != 0 {
        p.bail_errno(&format!("placing a pidfd at {at}"));
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let c = family::spawn(p, 7, move |m| {
        family::die_with_parent(me);
        let mut c = Checks::new();
        family::member_wait_go(m, me, family::POLL_NS).report(&mut c, "C go-wait");
        c
    });
    // SAFETY: single-threaded; the child exits at once.
    let e = unsafe { libc::fork() };
    if e == 0 {
        // SAFETY: in the child.
        unsafe { libc::_exit(3) };
    }
    place(p, pidfd_open(c, 0), 40);
    place(p, pidfd_open(me, libc::O_NONBLOCK as u32), 41);
    place(p, pidfd_open(e, 0), 42);
    if family::reap(e, family::STEP_TIMEOUT_NS).is_err() {
        p.bail("setup: E did not exit");
    }
    if fdinfo(42, "Pid:").as_deref() != Some("-1") {
        p.bail("setup: the pidfd of E does not show Pid -1");
    }
    let flags41 = fdinfo(41, "flags:");
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut ck = Checks::new();
    wait.report(&mut ck, "go-wait");
    ck.eq(
        "fdinfo Pid of fd 40 (C)",
        Some(c.to_string()),
        fdinfo(40, "Pid:"),
    );
    ck.eq(
        "fdinfo Pid of fd 41 (self)",
        Some(me.to_string()),
        fdinfo(41, "Pid:"),
    );
    ck.eq(
        "fdinfo Pid of fd 42 (exited E)",
        Some("-1".to_string()),
        fdinfo(42, "Pid:"),
    );
    ck.eq(
        "fdinfo flags of fd 41 (PIDFD_NONBLOCK)",
        flags41,
        fdinfo(41, "flags:"),
    );
    ck.eq("pidfd_send_signal(C, 0)", 0, send0(40));
    ck.eq("pidfd_send_signal(E, 0)", libc::ESRCH, send0(42));
    // SAFETY: an all-zero siginfo is a valid out-parameter.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; waits for C through its pidfd.
    let r = unsafe { libc::waitid(P_PIDFD, 40, &mut si, libc::WEXITED) };
    // SAFETY: si_pid/si_status are valid for a CLD_* siginfo.
    let (who, status) = unsafe { (si.si_pid(), si.si_status()) };
    ck.eq(
        "waitid(P_PIDFD, C): (result, pid, status)",
        (0, c, 7),
        (r, who, status),
    );
    family::judge(&mut ck, p.dir(), "C", c, Ok(7 << 8), 7);
    base.verify(p, &mut ck);
    ck
}
