//! Interval timers (setitimer/alarm).  Remaining times are saved as they
//! were at the freeze, so a restored timer fires as late as it would have.

use crate::error::Result;
use crate::freeze::Inject;
use crate::model::{ITimer, ITimers};

const WHICH: [(i32, &str); 3] = [
    (libc::ITIMER_REAL, "ITIMER_REAL"),
    (libc::ITIMER_VIRTUAL, "ITIMER_VIRTUAL"),
    (libc::ITIMER_PROF, "ITIMER_PROF"),
];

fn to_us(sec: u64, usec: u64) -> u64 {
    sec.saturating_mul(1_000_000).saturating_add(usec)
}

pub fn collect(t: &impl Inject) -> Result<ITimers> {
    let mut out = [ITimer::default(); 3];
    for (i, (which, name)) in WHICH.iter().enumerate() {
        t.call(
            libc::SYS_getitimer,
            &[*which as u64, t.scratch()],
            &format!("reading {name}"),
        )?;
        let mut b = [0u8; 32];
        t.read_scratch(0, &mut b)?;
        let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        out[i] = ITimer {
            interval_us: to_us(w(0), w(1)),
            value_us: to_us(w(2), w(3)),
        };
    }
    Ok(ITimers {
        real: out[0],
        virt: out[1],
        prof: out[2],
    })
}

/// The kernel adds one scheduler tick to the value of a CPU-time itimer
/// when arming it (so it never fires early).  Measured once, on crest
/// itself: arm ITIMER_PROF for 1 s, read it back at once, disarm.
fn cpu_timer_tick_us() -> u64 {
    static TICK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        let set = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            it_value: libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            },
        };
        let mut got = set;
        let off = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            it_value: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: plain syscalls with valid pointers to local structs.
        let ok = unsafe {
            libc::setitimer(libc::ITIMER_PROF, &set, std::ptr::null_mut()) == 0
                && libc::getitimer(libc::ITIMER_PROF, &mut got) == 0
                && libc::setitimer(libc::ITIMER_PROF, &off, std::ptr::null_mut()) == 0
        };
        let us = to_us(got.it_value.tv_sec as u64, got.it_value.tv_usec as u64);
        if ok && us > 1_000_000 {
            // Round to 100 µs: the CPU time spent in between is tiny.
            (us - 1_000_000 + 50) / 100 * 100
        } else {
            0
        }
    })
}

pub fn restore(t: &impl Inject, timers: &ITimers) -> Result<()> {
    for (timer, (which, name)) in [timers.real, timers.virt, timers.prof].iter().zip(WHICH) {
        if timer.value_us == 0 {
            continue; // disarmed; an interval alone means nothing
        }
        let mut timer = *timer;
        if which != libc::ITIMER_REAL {
            let tick = cpu_timer_tick_us();
            timer.value_us = timer.value_us.saturating_sub(tick).max(1);
        }
        let mut b = [0u8; 32];
        for (i, v) in [
            timer.interval_us / 1_000_000,
            timer.interval_us % 1_000_000,
            timer.value_us / 1_000_000,
            timer.value_us % 1_000_000,
        ]
        .iter()
        .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        t.write_scratch(0, &b)?;
        t.call(
            libc::SYS_setitimer,
            &[which as u64, t.scratch(), 0],
            &format!("arming {name}"),
        )?;
    }
    Ok(())
}
