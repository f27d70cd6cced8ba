//! Interval timers (setitimer/alarm).  Remaining times are saved as they
//! were at the freeze, so a restored timer fires as late as it would have.

use crate::error::Result;
use crate::model::{ITimer, ITimers, PosixTimer};
use crate::task::freeze::{Call, Inject};

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
        let at = t.place(&b)?;
        t.queue(Call::new(
            libc::SYS_setitimer,
            &[which as u64, at, 0],
            format!("arming {name}"),
        ))?;
    }
    Ok(())
}

// ---- POSIX timers (timer_create)

/// prctl making timer_create take the id to use from `*timerid` (Linux 6.15).
const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
const PR_TIMER_CREATE_RESTORE_IDS_OFF: u64 = 0;
const PR_TIMER_CREATE_RESTORE_IDS_ON: u64 = 1;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;

/// One timer of /proc/PID/timers, before its times are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcTimer {
    pub id: i32,
    pub signo: i32,
    pub sigev_value: u64,
    pub notify: i32,
    pub tid: i32,
    pub clockid: i32,
}

/// Parses /proc/PID/timers.
pub fn parse_proc_timers(text: &str) -> std::result::Result<Vec<ProcTimer>, String> {
    let mut out: Vec<ProcTimer> = Vec::new();
    for line in text.lines() {
        let bad = || format!("/proc/PID/timers: bad line {line:?}");
        let Some((key, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if key == "ID" {
            out.push(ProcTimer {
                id: v.parse().map_err(|_| bad())?,
                signo: 0,
                sigev_value: 0,
                notify: SIGEV_SIGNAL,
                tid: 0,
                clockid: 0,
            });
            continue;
        }
        let Some(t) = out.last_mut() else {
            return Err(bad());
        };
        match key {
            "signal" => {
                let (s, val) = v.split_once('/').ok_or_else(bad)?;
                t.signo = s.parse().map_err(|_| bad())?;
                let val = val.trim_start_matches("0x");
                t.sigev_value = u64::from_str_radix(val, 16).map_err(|_| bad())?;
            }
            "notify" => {
                // "signal/pid.123", "none/pid.123", "thread/pid.123", "signal/tid.124"
                let (kind, who) = v.split_once('/').ok_or_else(bad)?;
                let (pt, n) = who.split_once('.').ok_or_else(bad)?;
                t.notify = match kind {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return Err(bad()),
                };
                match pt {
                    "tid" => {
                        t.notify |= SIGEV_THREAD_ID;
                        t.tid = n.parse().map_err(|_| bad())?;
                    }
                    "pid" => {}
                    _ => return Err(bad()),
                }
            }
            "ClockID" => t.clockid = v.parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

fn ns(sec: u64, nsec: u64) -> u64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

fn refuse(pid: i32, id: i32, reason: String) -> crate::Error {
    crate::Error::Unsupported(vec![crate::Obstacle {
        pid,
        object: format!("POSIX timer {id}"),
        reason,
    }])
}

/// Reads the POSIX timers of the process `t` is the leader of (`tids`:
/// its threads): /proc/PID/timers for the sigevents and clocks, and an
/// injected timer_gettime/timer_getoverrun for each one's times.
pub fn collect_posix(t: &impl Inject, tids: &[i32]) -> Result<Vec<PosixTimer>> {
    let pid = t.pid();
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .map_err(|e| crate::Error::msg(format!("reading /proc/{pid}/timers: {e}")))?;
    let timers = parse_proc_timers(&text).map_err(crate::Error::msg)?;
    let mut out = Vec::with_capacity(timers.len());
    for pt in timers {
        if pt.clockid < 0 {
            // A CPU-time clock: (~pid << 3) | (per-thread << 2) | which.
            let owner = !(pt.clockid >> 3);
            if pt.clockid & 7 == 3 {
                return Err(refuse(
                    pid,
                    pt.id,
                    "timers on dynamic (fd) clocks are not supported".into(),
                ));
            }
            if owner == 0 && pt.clockid & 4 != 0 && tids.len() > 1 {
                return Err(refuse(
                    pid,
                    pt.id,
                    "a timer on the CPU clock of the thread that created it, in a process \
                     with several threads, cannot be placed (the creator is not known)"
                        .into(),
                ));
            }
            if owner != 0 && owner != pid && !tids.contains(&owner) {
                return Err(refuse(
                    pid,
                    pt.id,
                    format!("the timer runs on the CPU clock of pid {owner}, outside the process"),
                ));
            }
        }
        t.call(
            libc::SYS_timer_gettime,
            &[pt.id as u64, t.scratch()],
            &format!("reading POSIX timer {}", pt.id),
        )?;
        let mut b = [0u8; 32];
        t.read_scratch(0, &mut b)?;
        let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        let overrun = t.call(
            libc::SYS_timer_getoverrun,
            &[pt.id as u64],
            &format!("reading the overrun of POSIX timer {}", pt.id),
        )? as i32;
        out.push(PosixTimer {
            id: pt.id,
            clockid: pt.clockid,
            signo: pt.signo,
            sigev_value: pt.sigev_value,
            notify: pt.notify,
            tid: pt.tid,
            interval_ns: ns(w(0), w(1)),
            value_ns: ns(w(2), w(3)),
            overrun,
        });
    }
    Ok(out)
}

/// The sigevent of a timer, as the kernel reads it (64 bytes).
fn sigevent(p: &PosixTimer) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&p.sigev_value.to_ne_bytes());
    b[8..12].copy_from_slice(&p.signo.to_ne_bytes());
    b[12..16].copy_from_slice(&p.notify.to_ne_bytes());
    b[16..20].copy_from_slice(&p.tid.to_ne_bytes());
    b
}

const SCRATCH_SIGEV: u64 = 0;
const SCRATCH_ID: u64 = 64;
const SCRATCH_SPEC: u64 = 128;

/// timer_create in the task; returns the id the kernel gave.  With
/// PR_TIMER_CREATE_RESTORE_IDS on, the kernel takes `want` as the id.
fn create(t: &impl Inject, p: &PosixTimer, want: i32) -> Result<i32> {
    t.write_scratch(SCRATCH_SIGEV, &sigevent(p))?;
    t.write_scratch(SCRATCH_ID, &want.to_ne_bytes())?;
    t.call(
        libc::SYS_timer_create,
        &[
            p.clockid as i64 as u64,
            t.scratch() + SCRATCH_SIGEV,
            t.scratch() + SCRATCH_ID,
        ],
        &format!("creating POSIX timer {} (clock {})", p.id, p.clockid),
    )?;
    let mut b = [0u8; 4];
    t.read_scratch(SCRATCH_ID, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

fn delete(t: &impl Inject, id: i32) -> Result<()> {
    t.call(
        libc::SYS_timer_delete,
        &[id as u64],
        &format!("deleting filler POSIX timer {id}"),
    )?;
    Ok(())
}

/// Recreates the POSIX timers with their ids, sigevents and clocks in the
/// process `t` is the leader of (its threads must exist already), armed
/// with the time they had left at the dump and their intervals.
pub fn restore_posix(t: &impl Inject, timers: &[PosixTimer]) -> Result<()> {
    if timers.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&PosixTimer> = timers.iter().collect();
    sorted.sort_by_key(|p| p.id);
    if sorted.windows(2).any(|w| w[0].id == w[1].id) || sorted[0].id < 0 {
        return Err(crate::Error::Invalid(
            "repeated or negative POSIX timer id".into(),
        ));
    }
    let exact = t
        .prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            &[PR_TIMER_CREATE_RESTORE_IDS_ON],
            "enabling PR_TIMER_CREATE_RESTORE_IDS",
        )
        .is_ok();
    if exact {
        for p in &sorted {
            let got = create(t, p, p.id)?;
            if got != p.id {
                return Err(crate::Error::msg(format!(
                    "POSIX timer {} came back with id {got}",
                    p.id
                )));
            }
        }
        t.prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            &[PR_TIMER_CREATE_RESTORE_IDS_OFF],
            "disabling PR_TIMER_CREATE_RESTORE_IDS",
        )?;
    } else {
        // Older kernels hand out ids from a counter that starts at 0 in a
        // new process and only goes up: use the ids below each wanted one
        // up with filler timers, deleted again at once.
        let filler = PosixTimer {
            id: 0,
            clockid: libc::CLOCK_MONOTONIC,
            signo: libc::SIGALRM,
            sigev_value: 0,
            notify: SIGEV_NONE,
            tid: 0,
            value_ns: 0,
            interval_ns: 0,
            overrun: 0,
        };
        let mut next = 0;
        for p in &sorted {
            if p.id - next > 1 << 16 {
                return Err(crate::Error::Incompatible(format!(
                    "this kernel has no PR_TIMER_CREATE_RESTORE_IDS, and POSIX timer id {} \
                     is too high to reach",
                    p.id
                )));
            }
            while next < p.id {
                let got = create(t, &filler, 0)?;
                delete(t, got)?;
                next = got + 1;
            }
            let got = create(t, p, 0)?;
            if got != p.id {
                return Err(crate::Error::Incompatible(format!(
                    "this kernel has no PR_TIMER_CREATE_RESTORE_IDS and gave POSIX timer \
                     id {got} where {} was needed",
                    p.id
                )));
            }
            next = got + 1;
        }
    }
    for p in &sorted {
        if p.value_ns == 0 {
            continue; // disarmed
        }
        let mut b = [0u8; 32];
        for (i, v) in [
            p.interval_ns / 1_000_000_000,
            p.interval_ns % 1_000_000_000,
            p.value_ns / 1_000_000_000,
            p.value_ns % 1_000_000_000,
        ]
        .iter()
        .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        t.write_scratch(SCRATCH_SPEC, &b)?;
        t.call(
            libc::SYS_timer_settime,
            &[p.id as u64, 0, t.scratch() + SCRATCH_SPEC, 0],
            &format!("arming POSIX timer {}", p.id),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers() {
        let text = "ID: 3\nsignal: 12/000000001234abcd\nnotify: signal/tid.21657\nClockID: -2\n\
                    ID: 1\nsignal: 35/0000000000000000\nnotify: none/pid.21657\nClockID: 7\n\
                    ID: 0\nsignal: 34/00007f0000001000\nnotify: thread/pid.21657\nClockID: 1\n";
        let t = parse_proc_timers(text).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            ProcTimer {
                id: 0,
                signo: 34,
                sigev_value: 0x7f00_0000_1000,
                notify: SIGEV_THREAD,
                tid: 0,
                clockid: 1
            }
        );
        assert_eq!((t[1].id, t[1].notify, t[1].clockid), (1, SIGEV_NONE, 7));
        assert_eq!(
            (t[2].id, t[2].signo, t[2].notify, t[2].tid, t[2].clockid),
            (3, 12, SIGEV_SIGNAL | SIGEV_THREAD_ID, 21657, -2)
        );
        assert!(parse_proc_timers("signal: 1/0\n").is_err());
    }

    /// A task whose timer syscalls a model kernel answers: with `restore_ids`
    /// the prctl exists; without it ids come from an increasing counter.
    struct Model {
        restore_ids: bool,
        mode_on: std::cell::Cell<bool>,
        next: std::cell::Cell<i32>,
        live: std::cell::RefCell<std::collections::BTreeMap<i32, (i32, i32, u64)>>,
        armed: std::cell::RefCell<Vec<(i32, [u64; 4])>>,
        scratch: std::cell::RefCell<Vec<u8>>,
    }

    impl Model {
        fn new(restore_ids: bool) -> Model {
            Model {
                restore_ids,
                mode_on: false.into(),
                next: 0.into(),
                live: Default::default(),
                armed: Default::default(),
                scratch: vec![0; 4096].into(),
            }
        }
        fn word(&self, off: u64) -> u64 {
            let s = self.scratch.borrow();
            u64::from_ne_bytes(s[off as usize..off as usize + 8].try_into().unwrap())
        }
    }

    const BASE: u64 = 0x10000;

    impl Inject for Model {
        fn pid(&self) -> i32 {
            100
        }
        fn call(&self, nr: i64, a: &[u64], what: &str) -> Result<u64> {
            let err = || Err(crate::Error::msg(format!("{what}: EINVAL")));
            match nr {
                libc::SYS_prctl if a[0] == PR_TIMER_CREATE_RESTORE_IDS as u64 => {
                    if !self.restore_ids {
                        return err();
                    }
                    self.mode_on.set(a[1] == PR_TIMER_CREATE_RESTORE_IDS_ON);
                    Ok(0)
                }
                libc::SYS_timer_create => {
                    let id_off = a[2] - BASE;
                    let id = if self.mode_on.get() {
                        self.word(id_off) as u32 as i32
                    } else {
                        let n = self.next.get();
                        self.next.set(n + 1);
                        n
                    };
                    if self.live.borrow().contains_key(&id) {
                        return err();
                    }
                    let ev = a[1] - BASE;
                    let signo = (self.word(ev + 8) & 0xffff_ffff) as i32;
                    self.live
                        .borrow_mut()
                        .insert(id, (a[0] as i32, signo, self.word(ev)));
                    self.scratch.borrow_mut()[id_off as usize..id_off as usize + 4]
                        .copy_from_slice(&id.to_ne_bytes());
                    Ok(0)
                }
                libc::SYS_timer_delete => {
                    self.live.borrow_mut().remove(&(a[0] as i32));
                    Ok(0)
                }
                libc::SYS_timer_settime => {
                    let o = a[2] - BASE;
                    let spec = [
                        self.word(o),
                        self.word(o + 8),
                        self.word(o + 16),
                        self.word(o + 24),
                    ];
                    self.armed.borrow_mut().push((a[0] as i32, spec));
                    Ok(0)
                }
                _ => err(),
            }
        }
        fn scratch(&self) -> u64 {
            BASE
        }
        fn read_scratch(&self, off: u64, buf: &mut [u8]) -> Result<()> {
            buf.copy_from_slice(&self.scratch.borrow()[off as usize..off as usize + buf.len()]);
            Ok(())
        }
        fn write_scratch(&self, off: u64, data: &[u8]) -> Result<()> {
            self.scratch.borrow_mut()[off as usize..off as usize + data.len()]
                .copy_from_slice(data);
            Ok(())
        }
    }

    fn timer(id: i32, clockid: i32, value_ns: u64, interval_ns: u64) -> PosixTimer {
        PosixTimer {
            id,
            clockid,
            signo: 34 + id,
            sigev_value: 0x1000 + id as u64,
            notify: SIGEV_SIGNAL,
            tid: 0,
            value_ns,
            interval_ns,
            overrun: 0,
        }
    }

    #[test]
    fn restore_keeps_ids_both_ways() {
        let want = [
            timer(5, 1, 2_500_000_000, 0),
            timer(0, 0, 0, 0),
            timer(2, -6, 7, 1_000_000_001),
        ];
        for restore_ids in [true, false] {
            let m = Model::new(restore_ids);
            restore_posix(&m, &want).unwrap();
            let live = m.live.borrow();
            assert_eq!(
                live.iter().map(|(&id, &v)| (id, v)).collect::<Vec<_>>(),
                vec![
                    (0, (0, 34, 0x1000)),
                    (2, (-6, 36, 0x1002)),
                    (5, (1, 39, 0x1005))
                ],
                "restore_ids {restore_ids}"
            );
            assert!(!m.mode_on.get(), "the prctl must be off again");
            assert_eq!(
                *m.armed.borrow(),
                vec![(2, [1, 1, 0, 7]), (5, [0, 0, 2, 500_000_000])]
            );
        }
    }
}
