//! `timers [itimer|alarm]` (and `alarm`): interval timers armed across the
//! checkpoint. `itimer` arms ITIMER_REAL/VIRTUAL/PROF with long values and
//! distinct intervals; after go the intervals must be exact and the
//! remaining values plausible, then ITIMER_REAL must really fire. `alarm`
//! arms alarm(1000) and checks the remaining seconds after go.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use crate::checks::Checks;
use crate::common::Baseline;
use crate::proto::Proto;
use crate::util::{clock_ns, err_str, errno, sleep_ns};

static ALRM: AtomicU32 = AtomicU32::new(0);
static VTALRM: AtomicU32 = AtomicU32::new(0);
static PROF: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_timer(sig: i32) {
    match sig {
        libc::SIGALRM => ALRM.fetch_add(1, SeqCst),
        libc::SIGVTALRM => VTALRM.fetch_add(1, SeqCst),
        _ => PROF.fetch_add(1, SeqCst),
    };
}

fn install_handlers(p: &Proto) {
    for sig in [libc::SIGALRM, libc::SIGVTALRM, libc::SIGPROF] {
        // SAFETY: all-zero sigaction is valid; the handler only counts.
        // No SA_RESTART: a stray expiry shows up as EINTR in the go-wait.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_timer as extern "C" fn(i32) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                p.bail_errno("sigaction");
            }
        }
    }
}

const TIMERS: [(i32, &str, i64, i64); 3] = [
    (libc::ITIMER_REAL, "ITIMER_REAL", 100, 7),
    (libc::ITIMER_VIRTUAL, "ITIMER_VIRTUAL", 200, 11),
    (libc::ITIMER_PROF, "ITIMER_PROF", 300, 13),
];

fn us(tv: libc::timeval) -> i64 {
    tv.tv_sec * 1_000_000 + tv.tv_usec
}

fn get(which: i32) -> Result<(i64, i64), i32> {
    // SAFETY: zeroed itimerval is a valid out-parameter.
    let mut v: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getitimer(which, &mut v) } != 0 {
        return Err(errno());
    }
    Ok((us(v.it_value), us(v.it_interval)))
}

fn set(which: i32, value_us: i64, interval_us: i64) -> Result<(), i32> {
    let tv = |u: i64| libc::timeval {
        tv_sec: u / 1_000_000,
        tv_usec: u % 1_000_000,
    };
    let v = libc::itimerval {
        it_interval: tv(interval_us),
        it_value: tv(value_us),
    };
    // SAFETY: valid itimerval; no old value requested.
    if unsafe { libc::setitimer(which, &v, std::ptr::null_mut()) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn counts() -> [u32; 3] {
    [ALRM.load(SeqCst), VTALRM.load(SeqCst), PROF.load(SeqCst)]
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    match args.first().map(String::as_str) {
        None | Some("itimer") => run_itimer(p),
        Some("alarm") => run_alarm(p, &[]),
        Some(o) => p.bail(&format!(
            "setup: timers takes 'itimer' or 'alarm', got {o:?}"
        )),
    }
}

fn run_itimer(p: &Proto) -> Checks {
    install_handlers(p);
    for (which, name, value, interval) in TIMERS {
        if let Err(e) = set(which, value * 1_000_000, interval * 1_000_000) {
            p.bail(&format!("setup: setitimer({name}): {}", err_str(e)));
        }
    }
    let base = Baseline::record();
    let before: Vec<(i64, i64)> = TIMERS
        .iter()
        .map(|t| get(t.0).unwrap_or_else(|e| p.bail(&format!("setup: getitimer: {}", err_str(e)))))
        .collect();
    for ((_, name, value, interval), (v, i)) in TIMERS.iter().zip(&before) {
        // CPU-time timers read back rounded up to the tick.
        if *i != interval * 1_000_000 || *v <= 0 || *v > value * 1_000_000 + 20_000 {
            p.bail(&format!(
                "setup: getitimer({name}) = value {v} us interval {i} us"
            ));
        }
    }
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    for ((which, name, _, _), &(v0, i0)) in TIMERS.iter().zip(&before) {
        let (v, i) = match get(*which) {
            Ok(x) => x,
            Err(e) => {
                c.fail(format!("getitimer({name}): {}", err_str(e)));
                continue;
            }
        };
        c.eq(&format!("getitimer({name}) interval (us)"), i0, i);
        // REAL runs in wall time (the checkpoint may take a while); the CPU
        // timers barely move since we hardly use any CPU.
        let slack = if *which == libc::ITIMER_REAL {
            60_000_000
        } else {
            5_000_000
        };
        c.ensure(v > 0 && v <= v0 && v >= v0 - slack, || {
            format!("getitimer({name}) remaining: {v} us, expected in ({}, {v0}] (recorded {v0} us before ready)", v0 - slack)
        });
    }
    c.eq(
        "timer signals (ALRM, VTALRM, PROF) before the functional test",
        [0, 0, 0],
        counts(),
    );

    // Functional: ITIMER_REAL at 50 ms must deliver >= 3 SIGALRMs in 1 s.
    if let Err(e) = set(libc::ITIMER_REAL, 50_000, 50_000) {
        c.fail(format!("setitimer(ITIMER_REAL, 50 ms): {}", err_str(e)));
    } else {
        let t0 = clock_ns(libc::CLOCK_MONOTONIC);
        while ALRM.load(SeqCst) < 3 && clock_ns(libc::CLOCK_MONOTONIC) - t0 < 1_000_000_000 {
            sleep_ns(10_000_000);
        }
        let _ = set(libc::ITIMER_REAL, 0, 0);
        let n = ALRM.load(SeqCst);
        c.ensure(n >= 3, || {
            format!("ITIMER_REAL 50 ms/50 ms: expected >= 3 SIGALRM within 1 s, got {n}")
        });
    }
    base.verify(p, &mut c);
    c
}

pub fn run_alarm(p: &Proto, _args: &[String]) -> Checks {
    install_handlers(p);
    // SAFETY: alarm has no preconditions.
    unsafe { libc::alarm(1000) };
    let before = get(libc::ITIMER_REAL)
        .unwrap_or_else(|e| p.bail(&format!("setup: getitimer: {}", err_str(e))));
    if before.1 != 0 || before.0 <= 990_000_000 {
        p.bail(&format!(
            "setup: after alarm(1000) getitimer(REAL) = {before:?}"
        ));
    }
    let base = Baseline::record();
    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    match get(libc::ITIMER_REAL) {
        Ok((_, i)) => c.eq("alarm: getitimer(ITIMER_REAL) interval", 0, i),
        Err(e) => c.fail(format!("getitimer(ITIMER_REAL): {}", err_str(e))),
    }
    // SAFETY: alarm has no preconditions.
    let left = unsafe { libc::alarm(0) };
    c.ensure((900..=1000).contains(&left), || {
        format!("alarm(0) after go returned {left}, expected 900..=1000")
    });
    c.eq("SIGALRM deliveries", 0, ALRM.load(SeqCst));
    base.verify(p, &mut c);
    c
}
