//! `seccomp`: seccomp filters, per thread. With no_new_privs set, the main
//! thread installs filter A (getpriority fails with EDOM) with
//! SECCOMP_FILTER_FLAG_TSYNC, so that its second thread T shares it; T
//! then installs filter B (sysinfo fails with ERANGE) for itself, and the
//! main thread filter C (times fails with EXDEV) with
//! SECCOMP_FILTER_FLAG_LOG. After go each thread checks what its calls
//! return and its Seccomp / Seccomp_filters lines; a TSYNC of another
//! filter must fail naming T (B is not an ancestor of the main thread's
//! filters), before as after. With `hostile`, four more filters in the
//! main thread fail prctl, getitimer, sigaltstack and rt_sigaction with
//! errno 1234 (calls a checkpointer injects), and must still do so after.
//! `CREST_WL_DISTURB=extra` (selftests)
//! installs one more filter in the main thread after go, as a bad restore
//! would.

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{errno, gettid, sleep_ns, thread_status_field};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const TSYNC: u64 = 1;
const LOG: u64 = 2;

/// A filter making syscall `nr` fail with `err` (x86-64), allowing the rest.
fn deny(nr: i64, err: i32) -> Vec<libc::sock_filter> {
    let ins = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    vec![
        ins(0x20, 0, 0, 4), // ld [arch]
        ins(0x15, 1, 0, AUDIT_ARCH_X86_64),
        ins(0x06, 0, 0, RET_ALLOW),
        ins(0x20, 0, 0, 0), // ld [nr]
        ins(0x15, 0, 1, nr as u32),
        ins(0x06, 0, 0, RET_ERRNO | err as u32),
        ins(0x06, 0, 0, RET_ALLOW),
    ]
}

/// seccomp(SECCOMP_SET_MODE_FILTER, flags, prog): the raw result.
fn install(prog: &[libc::sock_filter], flags: u64) -> i64 {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut _,
    };
    // SAFETY: a valid sock_fprog pointing at `prog`.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, 1, flags, &fprog) };
    if r < 0 {
        -(errno() as i64)
    } else {
        r
    }
}

fn raw(nr: i64, a: u64) -> i64 {
    let mut buf = [0u8; 512];
    let arg = if a == 1 { buf.as_mut_ptr() as u64 } else { a };
    // SAFETY: the calls used here only write into `buf`.
    let r = unsafe { libc::syscall(nr, arg, 0u64) };
    if r < 0 {
        -(errno() as i64)
    } else {
        0
    }
}

/// What this thread's three probes return (0 or -errno).
fn probes() -> [i64; 3] {
    [
        raw(libc::SYS_getpriority, 0), // PRIO_PROCESS, self
        raw(libc::SYS_sysinfo, 1),
        raw(libc::SYS_times, 1),
    ]
}

fn seccomp_lines() -> (Option<String>, Option<String>) {
    (
        thread_status_field("Seccomp"),
        thread_status_field("Seccomp_filters"),
    )
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    // SAFETY: integer-only prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1u64, 0u64, 0u64, 0u64) } != 0 {
        p.bail_errno("PR_SET_NO_NEW_PRIVS");
    }
    // 0: waiting, 1: install B, 2: B done, 3: go seen by main, 4: T done.
    let step = Arc::new(AtomicI32::new(0));
    let t_tid = Arc::new(AtomicI32::new(0));
    let (s2, tt) = (step.clone(), t_tid.clone());
    let t = std::thread::spawn(move || {
        tt.store(gettid(), Ordering::SeqCst);
        while s2.load(Ordering::SeqCst) != 1 {
            sleep_ns(1_000_000);
        }
        let b = install(&deny(libc::SYS_sysinfo, libc::ERANGE), 0);
        let before = (probes(), seccomp_lines());
        s2.store(if b == 0 { 2 } else { -1 }, Ordering::SeqCst);
        while s2.load(Ordering::SeqCst) != 3 {
            sleep_ns(2_000_000);
        }
        let mut c = Vec::new();
        let after = (probes(), seccomp_lines());
        if before != after {
            c.push(format!(
                "thread T: seccomp state: expected {before:?}, got {after:?}"
            ));
        }
        if after.0 != [-(libc::EDOM as i64), -(libc::ERANGE as i64), 0] {
            c.push(format!("thread T: probes {:?}", after.0));
        }
        s2.store(4, Ordering::SeqCst);
        c
    });
    while t_tid.load(Ordering::SeqCst) == 0 {
        sleep_ns(1_000_000);
    }
    if install(&deny(libc::SYS_getpriority, libc::EDOM), TSYNC) != 0 {
        p.bail_errno("installing filter A with TSYNC");
    }
    step.store(1, Ordering::SeqCst);
    while step.load(Ordering::SeqCst) == 1 {
        sleep_ns(1_000_000);
    }
    if step.load(Ordering::SeqCst) != 2 {
        p.bail("setup: T could not install filter B");
    }
    if install(&deny(libc::SYS_times, libc::EXDEV), LOG) != 0 {
        p.bail_errno("installing filter C with SECCOMP_FILTER_FLAG_LOG");
    }
    // `hostile`: a filter that fails calls crest injects (prctl, getitimer,
    // sigaltstack, rt_sigaction) with errno 1234 in the main thread.
    let hostile = args.iter().any(|a| a == "hostile");
    if hostile {
        for nr in [
            libc::SYS_prctl,
            libc::SYS_getitimer,
            libc::SYS_sigaltstack,
            libc::SYS_rt_sigaction,
        ] {
            if install(&deny(nr, 1234), 0) != 0 {
                p.bail_errno("installing the hostile filter");
            }
        }
    }
    let tid = t_tid.load(Ordering::SeqCst) as i64;
    let probe_tsync = || install(&deny(libc::SYS_getpgid, libc::EBADE), TSYNC);
    let sync_before = probe_tsync();
    if sync_before != tid {
        p.bail(&format!(
            "setup: TSYNC gave {sync_before}, expected T's tid {tid}"
        ));
    }
    let before = (probes(), seccomp_lines());
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    if std::env::var("CREST_WL_DISTURB").as_deref() == Ok("extra") {
        install(&deny(libc::SYS_getpgid, libc::EBADE), 0);
    }
    let after = (probes(), seccomp_lines());
    c.eq("main thread: seccomp state", &before, &after);
    c.eq(
        "main thread: probes (getpriority, sysinfo, times)",
        [-(libc::EDOM as i64), 0, -(libc::EXDEV as i64)],
        after.0,
    );
    c.eq("TSYNC of another filter (T's tid)", tid, probe_tsync());
    if hostile {
        // SAFETY: integer-only prctl.
        let r = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0u64, 0u64, 0u64, 0u64) };
        c.eq(
            "prctl under the hostile filter (errno)",
            (-1, 1234),
            (r, errno()),
        );
    }
    step.store(3, Ordering::SeqCst);
    match t.join() {
        Ok(fails) => fails.into_iter().for_each(|f| c.fail(f)),
        Err(_) => c.fail("thread T panicked"),
    }
    base.verify(p, &mut c);
    c
}
