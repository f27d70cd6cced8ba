//! `posix-timers`: POSIX timers (timer_create) with gaps in their ids, on
//! several clocks (REALTIME, MONOTONIC, BOOTTIME, TAI, process and thread
//! CPU time), with SIGEV_NONE, SIGEV_SIGNAL and SIGEV_THREAD_ID
//! notification, distinct signals and values, armed, periodic and
//! disarmed. After go `/proc/self/timers` must be identical, every
//! interval exact and every remaining time plausible, no timer may have
//! fired, and then each timer, re-armed short, must deliver its own signal
//! with its own id and value.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::{clock_ns, err_str, errno, gettid, sleep_ns};

const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;
const SI_TIMER: i64 = -2;
const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
const PR_TIMER_CREATE_RESTORE_IDS_GET: u64 = 2;
/// How far wall-clock timers may have run on across the checkpoint.
const SLACK: u64 = 60_000_000_000;
const CPU_SLACK: u64 = 5_000_000_000;

/// Signals delivered: (signo, si_code, timer id, value) records.
static RECS: [AtomicU64; 4 * 64] = [const { AtomicU64::new(0) }; 4 * 64];
static NREC: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sig(sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let i = NREC.fetch_add(1, SeqCst);
    if i >= 64 {
        return;
    }
    let b = info as *const u8;
    // SAFETY: the kernel passes a full 128-byte siginfo: si_code at 8, and
    // for timers the timer id at 16 and the value at 24.
    let (code, id, val) = unsafe {
        (
            (b.add(8) as *const i32).read_unaligned(),
            (b.add(16) as *const i32).read_unaligned(),
            (b.add(24) as *const u64).read_unaligned(),
        )
    };
    RECS[i * 4].store(sig as u64, SeqCst);
    RECS[i * 4 + 1].store(code as i64 as u64, SeqCst);
    RECS[i * 4 + 2].store(id as i64 as u64, SeqCst);
    RECS[i * 4 + 3].store(val, SeqCst);
}

fn records() -> Vec<(i32, i64, i32, u64)> {
    (0..NREC.load(SeqCst).min(64))
        .map(|i| {
            (
                RECS[i * 4].load(SeqCst) as i32,
                RECS[i * 4 + 1].load(SeqCst) as i64,
                RECS[i * 4 + 2].load(SeqCst) as i64 as i32,
                RECS[i * 4 + 3].load(SeqCst),
            )
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Spec {
    clock: i32,
    notify: i32,
    signo: i32,
    value: u64,
    it_value: u64,
    it_interval: u64,
    /// Deleted before ready (makes a gap in the ids).
    gap: bool,
}

fn specs() -> Vec<Spec> {
    let rt = libc::SIGRTMIN();
    let s = |clock, notify, signo, value, it_value, it_interval| Spec {
        clock,
        notify,
        signo,
        value,
        it_value,
        it_interval,
        gap: false,
    };
    let gap = Spec {
        gap: true,
        ..s(libc::CLOCK_MONOTONIC, SIGEV_SIGNAL, rt + 1, 0xbad, 0, 0)
    };
    vec![
        s(
            libc::CLOCK_REALTIME,
            SIGEV_NONE,
            libc::SIGALRM,
            0,
            200_000_000_000,
            0,
        ),
        gap,
        s(
            libc::CLOCK_MONOTONIC,
            SIGEV_SIGNAL,
            rt + 1,
            0xc0ffee,
            100_000_000_000,
            7_250_000_000,
        ),
        s(
            libc::CLOCK_BOOTTIME,
            SIGEV_THREAD_ID,
            libc::SIGUSR1,
            0xd00d,
            300_000_000_000,
            0,
        ),
        s(
            libc::CLOCK_PROCESS_CPUTIME_ID,
            SIGEV_SIGNAL,
            rt + 2,
            0xe,
            50_000_000_000,
            1_000_000_000,
        ),
        s(
            libc::CLOCK_THREAD_CPUTIME_ID,
            SIGEV_SIGNAL | SIGEV_THREAD_ID,
            rt + 3,
            0xf,
            60_000_000_000,
            0,
        ),
        s(libc::CLOCK_MONOTONIC, SIGEV_SIGNAL, rt + 1, 0x6, 0, 0),
        s(
            libc::CLOCK_TAI,
            SIGEV_SIGNAL,
            rt + 1,
            0x7,
            400_000_000_000,
            2_500_000_000,
        ),
        gap,
        gap,
        s(
            libc::CLOCK_REALTIME,
            SIGEV_NONE,
            libc::SIGALRM,
            0,
            10_000_000,
            100_000_000,
        ),
    ]
}

fn is_cpu(clock: i32) -> bool {
    clock == libc::CLOCK_PROCESS_CPUTIME_ID || clock == libc::CLOCK_THREAD_CPUTIME_ID
}

fn create(s: &Spec) -> Result<i32, i32> {
    let mut ev = [0u8; 64];
    ev[0..8].copy_from_slice(&s.value.to_ne_bytes());
    ev[8..12].copy_from_slice(&s.signo.to_ne_bytes());
    ev[12..16].copy_from_slice(&s.notify.to_ne_bytes());
    ev[16..20].copy_from_slice(&gettid().to_ne_bytes());
    let mut id: i32 = -1;
    // SAFETY: a 64-byte kernel sigevent and a valid id pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_create,
            s.clock,
            ev.as_ptr(),
            &mut id as *mut i32,
        )
    };
    if r != 0 {
        return Err(errno());
    }
    Ok(id)
}

fn its(value: u64, interval: u64) -> [i64; 4] {
    [
        (interval / 1_000_000_000) as i64,
        (interval % 1_000_000_000) as i64,
        (value / 1_000_000_000) as i64,
        (value % 1_000_000_000) as i64,
    ]
}

fn settime(id: i32, value: u64, interval: u64) -> i32 {
    let t = its(value, interval);
    // SAFETY: a valid itimerspec; no old value requested.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            t.as_ptr(),
            std::ptr::null_mut::<u8>(),
        )
    };
    if r == 0 {
        0
    } else {
        errno()
    }
}

/// (value, interval) in ns.
fn gettime(id: i32) -> Result<(u64, u64), i32> {
    let mut t = [0i64; 4];
    // SAFETY: a valid itimerspec out-pointer.
    let r = unsafe { libc::syscall(libc::SYS_timer_gettime, id, t.as_mut_ptr()) };
    if r != 0 {
        return Err(errno());
    }
    let ns = |s: i64, n: i64| s as u64 * 1_000_000_000 + n as u64;
    Ok((ns(t[2], t[3]), ns(t[0], t[1])))
}

fn delete(id: i32) -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::syscall(libc::SYS_timer_delete, id) as i32 }
}

/// /proc/self/timers as one block of lines per timer, sorted by id.
fn proc_timers() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/timers").unwrap_or_default();
    let mut blocks: Vec<String> = Vec::new();
    for l in text.lines() {
        if l.starts_with("ID:") || blocks.is_empty() {
            blocks.push(String::new());
        }
        let b = blocks.last_mut().unwrap();
        b.push_str(l);
        b.push_str("; ");
    }
    blocks.sort_by_key(|b| {
        b.strip_prefix("ID: ")
            .and_then(|r| r.split(';').next())
            .and_then(|n| n.trim().parse::<i32>().ok())
            .unwrap_or(-1)
    });
    blocks
}

fn burn_until(deadline_ns: i128, done: impl Fn() -> bool) {
    let mut x = 0u64;
    while !done() && clock_ns(libc::CLOCK_MONOTONIC) < deadline_ns {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

pub fn run(p: &Proto, _args: &[String]) -> Checks {
    let rt = libc::SIGRTMIN();
    for sig in [libc::SIGUSR1, rt + 1, rt + 2, rt + 3] {
        // SAFETY: all-zero sigaction is valid; the handler only records.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction =
                on_sig as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                p.bail_errno("sigaction");
            }
        }
    }
    let specs = specs();
    let mut timers: Vec<(i32, Spec)> = Vec::new();
    for s in &specs {
        let id =
            create(s).unwrap_or_else(|e| p.bail(&format!("setup: timer_create: {}", err_str(e))));
        if timers.iter().any(|t| t.0 == id) {
            p.bail(&format!("setup: timer id {id} given twice"));
        }
        timers.push((id, *s));
    }
    for (id, s) in &timers {
        if s.gap {
            if delete(*id) != 0 {
                p.bail_errno("timer_delete");
            }
        } else if s.it_value > 0 {
            let e = settime(*id, s.it_value, s.it_interval);
            if e != 0 {
                p.bail(&format!("setup: timer_settime({id}): {}", err_str(e)));
            }
        }
    }
    timers.retain(|t| !t.1.gap);
    // Let the 10 ms SIGEV_NONE timer expire and go periodic.
    sleep_ns(30_000_000);
    let before: Vec<(u64, u64)> = timers
        .iter()
        .map(|(id, _)| {
            gettime(*id)
                .unwrap_or_else(|e| p.bail(&format!("setup: timer_gettime: {}", err_str(e))))
        })
        .collect();
    let listing = proc_timers();
    if listing.len() != timers.len() {
        p.bail(&format!("setup: /proc/self/timers: {listing:?}"));
    }
    let ids: Vec<i32> = timers.iter().map(|t| t.0).collect();
    p.write_aux("info", &format!("ids={ids:?}\n"));
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let fds = crate::util::list_fds();

    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    // SAFETY: getpid has no preconditions.
    c.eq("getpid()", pid, unsafe { libc::getpid() });
    c.eq("getpid() vs ready", p.ready_pid(), pid);
    c.eq("open fds", fds, crate::util::list_fds());
    // SAFETY: plain prctl.
    let r = unsafe {
        libc::prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_GET,
            0,
            0,
            0,
        )
    };
    c.ensure(r == 0 || (r < 0 && errno() == libc::EINVAL), || {
        format!("PR_TIMER_CREATE_RESTORE_IDS must be off after restore: GET returned {r}")
    });
    c.eq(
        "/proc/self/timers (ID, signal/value, notify, ClockID)",
        listing,
        proc_timers(),
    );
    c.eq(
        "signals delivered before the functional test",
        vec![],
        records(),
    );
    for ((id, s), &(v0, i0)) in timers.iter().zip(&before) {
        match gettime(*id) {
            Err(e) => c.fail(format!("timer_gettime({id}): {}", err_str(e))),
            Ok((v, i)) => {
                c.eq(&format!("timer {id} interval (ns)"), i0, i);
                c.eq(
                    &format!("timer {id} interval as set (ns)"),
                    s.it_interval,
                    i,
                );
                if s.it_value == 0 {
                    c.eq(&format!("timer {id} (disarmed) value"), 0, v);
                } else if s.it_interval > 0 && s.it_value < s.it_interval {
                    // The short periodic one: anywhere in its period.
                    c.ensure(v <= s.it_interval, || {
                        format!("timer {id} value {v} ns, expected <= {} ns", s.it_interval)
                    });
                } else {
                    let slack = if is_cpu(s.clock) { CPU_SLACK } else { SLACK };
                    c.ensure(v > 0 && v <= v0 && v + slack > v0, || {
                        format!("timer {id} remaining {v} ns, recorded {v0} ns before ready")
                    });
                }
            }
        }
    }

    // Functional: each timer re-armed at 20 ms delivers its own signal.
    for (id, s) in &timers {
        let n0 = NREC.load(SeqCst);
        let e = settime(*id, 20_000_000, 0);
        if e != 0 {
            c.fail(format!("timer_settime({id}, 20 ms): {}", err_str(e)));
            continue;
        }
        let deadline = clock_ns(libc::CLOCK_MONOTONIC) + 3_000_000_000;
        if s.notify == SIGEV_NONE {
            sleep_ns(60_000_000);
            c.eq(
                &format!("SIGEV_NONE timer {id} expired"),
                Ok((0, 0)),
                gettime(*id),
            );
            c.eq(
                &format!("SIGEV_NONE timer {id}: no signal"),
                n0,
                NREC.load(SeqCst),
            );
            continue;
        }
        if is_cpu(s.clock) {
            burn_until(deadline, || NREC.load(SeqCst) > n0);
        } else {
            while NREC.load(SeqCst) == n0 && clock_ns(libc::CLOCK_MONOTONIC) < deadline {
                sleep_ns(2_000_000);
            }
        }
        let got: Vec<_> = records().into_iter().skip(n0).collect();
        c.eq(
            &format!("timer {id}: signals delivered (signo, si_code, timer id, value)"),
            vec![(s.signo, SI_TIMER, *id, s.value)],
            got,
        );
        // SAFETY: plain syscall.
        let ov = unsafe { libc::syscall(libc::SYS_timer_getoverrun, *id) };
        c.eq(&format!("timer_getoverrun({id})"), 0, ov);
    }
    // A new timer gets an id of its own.
    match create(&specs[0]) {
        Ok(id) => {
            c.ensure(!ids.contains(&id), || {
                format!("a new timer got id {id}, which is in use ({ids:?})")
            });
            delete(id);
        }
        Err(e) => c.fail(format!("timer_create after restore: {}", err_str(e))),
    }
    for id in ids {
        c.eq(&format!("timer_delete({id})"), 0, delete(id));
    }
    c
}
