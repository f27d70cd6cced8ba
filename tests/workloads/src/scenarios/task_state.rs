//! `task-state`: per-task kernel state that is neither memory nor files.
//!
//! The root sets `oom_score_adj` to 345 and (as root) its audit login uid
//! to 4242, names its main thread `wl-ts-main` and starts two threads named
//! with raw bytes (`\xff\xfewl-raw`, not UTF-8) and `wl-ts-b`. It forks four
//! children, each leading its own process group, that stop themselves with
//! SIGTSTP, SIGTTIN, SIGTTOU and SIGSTOP; the root collects the SIGTTIN
//! stop with waitpid(WUNTRACED) and leaves the others uncollected. A
//! SIGCHLD handler counts the notifications. It also forks Z2, which joins
//! the SIGTSTP child's process group and exits 9 (a zombie in a group that
//! is not its parent's), and P1, which forks Z1 (exits 7), then calls
//! setsid: Z1 is a zombie whose session and group are its grandparent's,
//! not its parent's. After go: the values, every thread's name, each
//! uncollected stop reported by waitid(WNOWAIT) with its own signal, the
//! collected one not reported again, no extra SIGCHLD, the zombies' groups,
//! sessions and statuses; then the stopped children are continued and exit
//! 10..13, P1 checks Z1 and exits 20.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::family::{self, proc_stat};
use crate::proto::Proto;
use crate::util::{errno, set_thread_name, show, sleep_ns};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const OOM_ADJ: i32 = 345;
const LOGINUID: u32 = 4242;
const STOPS: [i32; 4] = [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGSTOP];
/// Which of `STOPS` the root collects before the checkpoint.
const COLLECTED: usize = 1;

static SIGCHLDS: AtomicU32 = AtomicU32::new(0);
static RELEASE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigchld(_: i32) {
    SIGCHLDS.fetch_add(1, Ordering::SeqCst);
}

fn read_num(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Waits (up to 10 s) until `pid` is in state `state`.
fn wait_state(pid: i32, state: char) -> bool {
    for _ in 0..10_000 {
        if proc_stat(pid).is_some_and(|s| s.0 == state) {
            return true;
        }
        sleep_ns(1_000_000);
    }
    false
}

/// Every thread's name as /proc/self/task/TID/comm holds it, by tid.
fn thread_names() -> Vec<(i32, Vec<u8>)> {
    let mut out: Vec<(i32, Vec<u8>)> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let tid: i32 = e.file_name().to_str()?.parse().ok()?;
                    let b = std::fs::read(e.path().join("comm")).ok()?;
                    Some((tid, b))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Forks a child that does `body` and exits with its return value.
fn fork_child(p: &Proto, body: impl FnOnce() -> i32) -> i32 {
    // SAFETY: single-threaded here; the child runs only `body` and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        p.bail_errno("fork");
    }
    if pid == 0 {
        let code = body();
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(code) }
    }
    pid
}

/// The stop of child `pid` as waitid(WSTOPPED | WNOHANG | WNOWAIT) reports
/// it: Some(signal) or None.
fn peek_stop(pid: i32) -> Option<i32> {
    // SAFETY: an all-zero siginfo is a valid out-parameter.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; WNOWAIT only looks.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut si,
            libc::WSTOPPED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid/si_status are valid for a CLD_* siginfo.
    let (who, status) = unsafe { (si.si_pid(), si.si_status()) };
    (r == 0 && who == pid && si.si_code == libc::CLD_STOPPED).then_some(status)
}

/// For the selftests: `CREST_WL_DISTURB` makes the state wrong after go,
/// as a bad restore would (`thread-name`: renames a thread; `collect`:
/// collects the SIGTSTP child's stop).
fn disturb(stopped: &[i32]) {
    match std::env::var("CREST_WL_DISTURB").as_deref() {
        Ok("thread-name") => {
            if let Some((tid, _)) = thread_names().into_iter().find(|t| t.1 == b"wl-ts-b\n") {
                let _ = std::fs::write(format!("/proc/self/task/{tid}/comm"), "renamed");
            }
        }
        Ok("collect") => {
            let mut st = 0;
            // SAFETY: valid out-pointer.
            unsafe { libc::waitpid(stopped[0], &mut st, libc::WUNTRACED) };
        }
        _ => {}
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    // SAFETY: getpid/getpgrp/getsid have no preconditions.
    let (me, my_pgid, my_sid) = unsafe { (libc::getpid(), libc::getpgrp(), libc::getsid(0)) };
    // SAFETY: installing a handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigchld as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut());
    }
    if std::fs::write("/proc/self/oom_score_adj", format!("{OOM_ADJ}\n")).is_err() {
        p.bail_errno("writing /proc/self/oom_score_adj");
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root && std::fs::write("/proc/self/loginuid", format!("{LOGINUID}")).is_err() {
        p.bail_errno("writing /proc/self/loginuid");
    }
    let loginuid = read_num("/proc/self/loginuid");
    let sessionid = read_num("/proc/self/sessionid");

    // The stopped children, each leading its own group.
    let mut stopped = Vec::new();
    for (i, &sig) in STOPS.iter().enumerate() {
        let pid = fork_child(p, || {
            family::die_with_parent(me);
            // SAFETY: plain syscalls.
            unsafe {
                libc::setpgid(0, 0);
                libc::raise(sig);
            }
            10 + i as i32
        });
        // SAFETY: plain syscall (also done by the child: no race).
        unsafe { libc::setpgid(pid, pid) };
        stopped.push(pid);
    }
    for &s in &stopped {
        if !wait_state(s, 'T') {
            p.bail(&format!("setup: child {s} did not stop"));
        }
    }
    let mut st = 0;
    // SAFETY: valid out-pointer.
    let r = unsafe { libc::waitpid(stopped[COLLECTED], &mut st, libc::WUNTRACED) };
    if r != stopped[COLLECTED] || !libc::WIFSTOPPED(st) {
        p.bail_errno("collecting the SIGTTIN stop");
    }
    // Z2: a zombie in the SIGTSTP child's group.
    let tstp = stopped[0];
    let z2 = fork_child(p, || {
        // SAFETY: plain syscall.
        if unsafe { libc::setpgid(0, tstp) } != 0 {
            return 99;
        }
        9
    });
    // P1 forks Z1, then leaves the session: Z1 stays in ours.
    let p1 = family::spawn(p, 20, |m| {
        family::die_with_parent(me);
        let z1 = fork_child(m, || 7);
        let mut c = Checks::new();
        // SAFETY: plain syscall.
        if unsafe { libc::setsid() } < 0 {
            c.fail(format!("setsid: errno {}", errno()));
            return c;
        }
        if !wait_state(z1, 'Z') {
            c.fail("Z1 did not exit");
            return c;
        }
        m.write_aux("p1-ready", "");
        family::member_wait_go(m, me, family::POLL_NS).report(&mut c, "P1 go-wait");
        // The root counts its SIGCHLDs first: P1's exit is one.
        if let Err(e) = family::wait_path(
            &m.dir().join("p1-go"),
            family::STEP_TIMEOUT_NS,
            family::root_alive(me),
        ) {
            c.fail(e);
        }
        match proc_stat(z1) {
            Some((state, _, pgid, sid)) => {
                c.eq("Z1 state", 'Z', state);
                c.eq("Z1 process group (its grandparent's)", my_pgid, pgid);
                c.eq("Z1 session (its grandparent's)", my_sid, sid);
            }
            None => c.fail("Z1 is gone"),
        }
        match family::reap(z1, family::STEP_TIMEOUT_NS) {
            Ok(st) => c.ensure(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7, || {
                format!("Z1 status: {}", family::status_str(st))
            }),
            Err(e) => c.fail(format!("Z1: {e}")),
        }
        c
    });
    if !wait_state(z2, 'Z') {
        p.bail("setup: Z2 did not exit");
    }
    if family::wait_path(
        &p.dir().join("p1-ready"),
        family::STEP_TIMEOUT_NS,
        || Ok(()),
    )
    .is_err()
    {
        p.bail("setup: P1 did not get ready");
    }

    // Threads with names of their own.
    let names: [&[u8]; 2] = [b"\xff\xfewl-raw", b"wl-ts-b"];
    let mut threads = Vec::new();
    for name in names {
        threads.push(std::thread::spawn(move || {
            let _ = set_thread_name(name);
            while !RELEASE.load(Ordering::SeqCst) {
                sleep_ns(2_000_000);
            }
        }));
    }
    if set_thread_name(b"wl-ts-main").is_err() {
        p.bail_errno("naming the main thread");
    }
    let mut before = thread_names();
    for _ in 0..1000 {
        // Both threads have named themselves (each in its own time).
        let named = |n: &[u8]| before.iter().any(|t| t.1.strip_suffix(b"\n") == Some(n));
        if before.len() == 3 && names.iter().all(|n| named(n)) {
            break;
        }
        sleep_ns(1_000_000);
        before = thread_names();
    }
    // Every SIGCHLD of the setup has been handled by now.
    sleep_ns(20_000_000);
    let chlds = SIGCHLDS.load(Ordering::SeqCst);
    p.write_aux(
        "info",
        &format!(
            "stopped={stopped:?}\nz2={z2}\np1={p1}\nloginuid={loginuid:?}\nsessionid={sessionid:?}\n"
        ),
    );
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    disturb(&stopped);
    c.eq(
        "SIGCHLDs handled (no new ones)",
        chlds,
        SIGCHLDS.load(Ordering::SeqCst),
    );
    p.write_aux("p1-go", "");
    c.eq(
        "oom_score_adj",
        Some(OOM_ADJ as i64),
        read_num("/proc/self/oom_score_adj"),
    );
    if root {
        c.eq(
            "audit login uid",
            Some(LOGINUID as i64),
            read_num("/proc/self/loginuid"),
        );
    }
    let after = thread_names();
    c.ensure(before == after, || {
        let f = |l: &[(i32, Vec<u8>)]| {
            l.iter()
                .map(|(t, n)| format!("{t}:{}", show(n)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!("thread names: expected {}, got {}", f(&before), f(&after))
    });

    for (i, (&s, &sig)) in stopped.iter().zip(&STOPS).enumerate() {
        c.ensure(proc_stat(s).is_some_and(|t| t.0 == 'T'), || {
            format!("child {s} (stopped by signal {sig}) is not stopped")
        });
        let want = (i != COLLECTED).then_some(sig);
        c.eq(
            &format!("stop of child {s} as waitid(WSTOPPED|WNOWAIT) reports it"),
            want,
            peek_stop(s),
        );
    }
    match proc_stat(z2) {
        Some((state, _, pgid, sid)) => {
            c.eq("Z2 state", 'Z', state);
            c.eq("Z2 process group (the SIGTSTP child's)", tstp, pgid);
            c.eq("Z2 session", my_sid, sid);
        }
        None => c.fail("Z2 is gone"),
    }
    match family::reap(z2, family::STEP_TIMEOUT_NS) {
        Ok(st) => c.ensure(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 9, || {
            format!("Z2 status: {}", family::status_str(st))
        }),
        Err(e) => c.fail(format!("Z2: {e}")),
    }
    for (i, &s) in stopped.iter().enumerate() {
        // SAFETY: our child.
        unsafe { libc::kill(s, libc::SIGCONT) };
        match family::reap(s, family::STEP_TIMEOUT_NS) {
            Ok(st) => c.ensure(
                libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 10 + i as i32,
                || format!("child {s} status: {}", family::status_str(st)),
            ),
            Err(e) => c.fail(format!("child {s}: {e}")),
        }
    }
    let st = family::reap(p1, family::STEP_TIMEOUT_NS);
    family::judge(&mut c, p.dir(), "P1", p1, st, 20);
    RELEASE.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    base.verify(p, &mut c);
    c
}
