//! `events`: eventfd, timerfd, signalfd, inotify and epoll descriptors with
//! distinctive state across the checkpoint. After go each one's state is
//! compared with what it was (fdinfo, flags, timer values) and then
//! exercised: counters read, timers fire, signals and inotify events
//! arrive, and the epoll instances report exactly the registrations they
//! had (events and data), with the program's own fd numbers.

use std::ffi::CString;

use crate::checks::Checks;
use crate::proto::Proto;
use crate::util::{clock_ns, err_str, errno, readlink};

const A_COUNT: u64 = 0x1_2345_6789;
const B_COUNT: u64 = 3;
const T1_VALUE: u64 = 100_000_000_000;
const T1_INTERVAL: u64 = 1_500_000_123;
const T2_VALUE: u64 = 200_000_000_000;
const T4_INTERVAL: u64 = 10_000_000_000;
const T6_INTERVAL: u64 = 300_000_000;
/// How far wall-clock timers may have run on across the checkpoint.
const SLACK: u64 = 60_000_000_000;

const D_A: u64 = 0xdead_beef_1234_5678;
const D_C: u64 = 0xc0;
const D_X: u64 = 0xc1;
const D_T3: u64 = 0x73;
const D_PR: u64 = 0x50;
const D_PW: u64 = 0x51;
const D_S: u64 = 0x5f;
const D_I: u64 = 0x1e;
const D_E2: u64 = 0xe2;
const D_B: u64 = 0xb0;
const D_SX: u64 = 0x5a;
const D_SY: u64 = 0x5b;
const D_Z: u64 = 0x2a;

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;

struct Fds {
    a: i32,
    b: i32,
    c: i32,
    t1: i32,
    t2: i32,
    t3: i32,
    t4: i32,
    t6: i32,
    s: i32,
    i: i32,
    pr: i32,
    pw: i32,
    e: i32,
    e2: i32,
    /// Numbers under which closed registrations were made, now holding
    /// other files: y (c, close-on-exec), z (b).
    y: i32,
    z: i32,
}

fn ck(p: &Proto, r: i64, what: &str) -> i64 {
    if r < 0 {
        p.bail_errno(what);
    }
    r
}

fn ts(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as i64,
    }
}

fn ns(t: libc::timespec) -> u64 {
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn arm(fd: i32, flags: i32, value: u64, interval: u64) -> i32 {
    let its = libc::itimerspec {
        it_interval: ts(interval),
        it_value: ts(value),
    };
    // SAFETY: valid itimerspec; no old value requested.
    unsafe { libc::timerfd_settime(fd, flags, &its, std::ptr::null_mut()) }
}

/// (value, interval) of a timerfd.
fn tget(fd: i32) -> Result<(u64, u64), i32> {
    let mut its = libc::itimerspec {
        it_interval: ts(0),
        it_value: ts(0),
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::timerfd_gettime(fd, &mut its) } != 0 {
        return Err(errno());
    }
    Ok((ns(its.it_value), ns(its.it_interval)))
}

fn add(ep: i32, fd: i32, events: u32, data: u64) -> i32 {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: valid event.
    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) }
}

/// Reads one u64 (eventfd/timerfd); Err(errno).
fn read_u64(fd: i32) -> Result<u64, i32> {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into `v`.
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    if n == 8 {
        Ok(v)
    } else if n < 0 {
        Err(errno())
    } else {
        Err(-1)
    }
}

fn write_u64(fd: i32, v: u64) -> i32 {
    // SAFETY: writes 8 bytes from `v`.
    unsafe { libc::write(fd, (&v as *const u64).cast(), 8) as i32 }
}

fn fdinfo(fd: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default()
}

fn fdinfo_field(fd: i32, key: &str) -> Option<String> {
    fdinfo(fd).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// (tfd, events, data) of every registration, sorted.
fn epoll_regs(fd: i32) -> Vec<(i32, u32, u64)> {
    let mut v: Vec<(i32, u32, u64)> = fdinfo(fd)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("tfd:")?;
            let t: Vec<&str> = rest.split_whitespace().collect();
            let tfd = t.first()?.parse().ok()?;
            let ev = u32::from_str_radix(t.get(2)?, 16).ok()?;
            let data = u64::from_str_radix(t.get(4)?, 16).ok()?;
            Some((tfd, ev, data))
        })
        .collect();
    v.sort_unstable();
    v
}

/// (wd, ino, sdev, mask) of every inotify watch, sorted.
fn inotify_watches(fd: i32) -> Vec<(i32, String, String, String)> {
    let mut v: Vec<(i32, String, String, String)> = fdinfo(fd)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("inotify wd:")?;
            let wd = i32::from_str_radix(rest.split_whitespace().next()?, 16).ok()?;
            let get = |k: &str| {
                rest.split_whitespace()
                    .find_map(|t| t.strip_prefix(k))
                    .unwrap_or("")
                    .to_string()
            };
            Some((wd, get("ino:"), get("sdev:"), get("mask:")))
        })
        .collect();
    v.sort();
    v
}

/// What epoll_wait reports now (no waiting), as sorted (data, events).
fn ready(ep: i32) -> Result<Vec<(u64, u32)>, i32> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 32];
    // SAFETY: the buffer holds 32 events.
    let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 32, 0) };
    if n < 0 {
        return Err(errno());
    }
    let mut v: Vec<(u64, u32)> = evs[..n as usize]
        .iter()
        .map(|e| {
            let (d, ev) = (e.u64, e.events);
            (d, ev)
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

fn sorted(mut v: Vec<(u64, u32)>) -> Vec<(u64, u32)> {
    v.sort_unstable();
    v
}

fn mkdir(path: &std::path::Path) -> i32 {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    unsafe { libc::mkdir(c.as_ptr(), 0o755) }
}

fn add_watch(ifd: i32, path: &std::path::Path, mask: u32) -> i32 {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    unsafe { libc::inotify_add_watch(ifd, c.as_ptr(), mask) }
}

/// Every queued inotify event: (wd, mask, name).
fn inotify_events(ifd: i32) -> Result<Vec<(i32, u32, String)>, i32> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: reads into a buffer we own.
        let n = unsafe { libc::read(ifd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            if e == libc::EAGAIN {
                return Ok(out);
            }
            return Err(e);
        }
        let mut off = 0;
        while off + 16 <= n as usize {
            let wd = i32::from_ne_bytes(buf[off..off + 4].try_into().unwrap());
            let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
            let name = &buf[off + 16..off + 16 + len];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(len)];
            out.push((wd, mask, String::from_utf8_lossy(name).into_owned()));
            off += 16 + len;
        }
    }
}

fn fionread(fd: i32) -> i32 {
    let mut n: libc::c_int = -1;
    // SAFETY: FIONREAD into a valid int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n
}

fn getfl(fd: i32) -> i32 {
    // SAFETY: plain fcntl.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

fn getfd(fd: i32) -> i32 {
    // SAFETY: plain fcntl.
    unsafe { libc::fcntl(fd, libc::F_GETFD) }
}

fn sigbit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

fn setup(p: &Proto) -> Fds {
    let dir = p.dir();
    // SAFETY (whole block): plain syscalls creating descriptors.
    let (a, b, c) = unsafe {
        (
            libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC),
            libc::eventfd(B_COUNT as u32, libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK),
            libc::eventfd(0, 0),
        )
    };
    ck(p, a.min(b).min(c) as i64, "eventfd");
    ck(p, write_u64(a, A_COUNT) as i64, "write eventfd");

    // SAFETY: plain syscalls creating descriptors.
    let mk = |clock| unsafe { libc::timerfd_create(clock, libc::TFD_NONBLOCK) };
    let (t1, t2, t3, t4, t6) = (
        mk(libc::CLOCK_MONOTONIC),
        mk(libc::CLOCK_REALTIME),
        mk(libc::CLOCK_MONOTONIC),
        mk(libc::CLOCK_BOOTTIME),
        mk(libc::CLOCK_MONOTONIC),
    );
    ck(
        p,
        t1.min(t2).min(t3).min(t4).min(t6) as i64,
        "timerfd_create",
    );
    ck(p, arm(t1, 0, T1_VALUE, T1_INTERVAL) as i64, "arming t1");
    let now = clock_ns(libc::CLOCK_REALTIME) as u64;
    ck(
        p,
        arm(
            t2,
            libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET,
            now + T2_VALUE,
            0,
        ) as i64,
        "arming t2",
    );
    ck(p, arm(t3, 0, 1_000_000, 0) as i64, "arming t3");
    ck(p, arm(t4, 0, 10_000_000, T4_INTERVAL) as i64, "arming t4");
    ck(p, arm(t6, 0, 1_000_000, T6_INTERVAL) as i64, "arming t6");

    // signalfd on SIGUSR1 and SIGRTMIN+4 (blocked).
    let mask = sigbit(libc::SIGUSR1) | sigbit(libc::SIGRTMIN() + 4);
    crate::util::sigmask(libc::SIG_BLOCK, Some(mask));
    // SAFETY: signalfd4 reads an 8-byte kernel sigset.
    let s = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const u64,
            8,
            libc::SFD_NONBLOCK,
        )
    } as i32;
    ck(p, s as i64, "signalfd");

    // inotify with watch descriptors 1, 3, 5, 6 (2 and 4 removed).
    // SAFETY: plain syscall.
    let i = unsafe { libc::inotify_init1(libc::IN_NONBLOCK) };
    ck(p, i as i64, "inotify_init1");
    for d in ["w1", "w2", "w3"] {
        ck(p, mkdir(&dir.join(d)) as i64, "mkdir");
    }
    std::fs::write(dir.join("f"), b"f").unwrap_or_else(|e| p.bail(&format!("setup: {e}")));
    let wds = [
        add_watch(i, &dir.join("w1"), libc::IN_CREATE | libc::IN_DELETE),
        add_watch(i, &dir.join("f"), libc::IN_MODIFY),
        add_watch(i, &dir.join("w3"), libc::IN_CREATE | libc::IN_ONESHOT),
        add_watch(i, &dir.join("w2"), libc::IN_ATTRIB),
    ];
    if wds != [1, 2, 3, 4] {
        p.bail(&format!("setup: inotify watch descriptors {wds:?}"));
    }
    // SAFETY: plain syscalls.
    unsafe {
        libc::inotify_rm_watch(i, 2);
        libc::inotify_rm_watch(i, 4);
    }
    let w5 = add_watch(i, &dir.join("w2"), libc::IN_CREATE | libc::IN_MOVED_TO);
    let w6 = add_watch(
        i,
        &dir.join("f"),
        libc::IN_CLOSE_WRITE | libc::IN_EXCL_UNLINK,
    );
    if (w5, w6) != (5, 6) {
        p.bail(&format!("setup: inotify watch descriptors {w5} {w6}"));
    }
    // The removals queued IN_IGNORED events: read them away.
    match inotify_events(i) {
        Ok(ev) if ev.len() == 2 && ev.iter().all(|e| e.1 == libc::IN_IGNORED) => {}
        other => p.bail(&format!("setup: inotify events after rm_watch: {other:?}")),
    }

    let mut pfd = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors.
    ck(
        p,
        unsafe { libc::pipe2(pfd.as_mut_ptr(), libc::O_NONBLOCK) } as i64,
        "pipe2",
    );
    let (pr, pw) = (pfd[0], pfd[1]);

    // SAFETY: plain syscalls.
    let (e, e2) = unsafe {
        (
            libc::epoll_create1(0),
            libc::epoll_create1(libc::EPOLL_CLOEXEC),
        )
    };
    ck(p, e.min(e2) as i64, "epoll_create1");
    // A dup of c registered, then closed: the registration outlives it.
    // SAFETY: plain syscall.
    let x = unsafe { libc::dup(c) };
    ck(p, x as i64, "dup");
    let regs = [
        (e, a, IN | libc::EPOLLET as u32, D_A),
        (e, c, IN, D_C),
        (e, x, OUT, D_X),
        (e, t3, IN | libc::EPOLLONESHOT as u32, D_T3),
        (e, pr, IN | libc::EPOLLRDHUP as u32, D_PR),
        (e, pw, OUT, D_PW),
        (e, s, IN, D_S),
        (e, i, IN, D_I),
        (e, e2, IN, D_E2),
        (e2, b, IN | libc::EPOLLEXCLUSIVE as u32, D_B),
    ];
    for (ep, fd, ev, data) in regs {
        ck(p, add(ep, fd, ev, data) as i64, "epoll_ctl(ADD)");
    }
    // SAFETY: closing our own dup.
    unsafe { libc::close(x) };
    // Registrations under numbers that are closed since (sx, above every
    // fd left: where a restorer keeps its own descriptors) or hold another
    // file now (y: a signalfd's, now c close-on-exec; z: a's, now b).
    // SAFETY: plain syscalls.
    let (y, z) = unsafe { (libc::dup(s), libc::dup(a)) };
    // SAFETY: plain syscall.
    let sx = unsafe { libc::fcntl(s, libc::F_DUPFD, z + 2) };
    ck(p, sx.min(y).min(z) as i64, "dup");
    ck(p, add(e, sx, IN, D_SX) as i64, "epoll_ctl(ADD sx)");
    ck(p, add(e, y, IN, D_SY) as i64, "epoll_ctl(ADD y)");
    ck(p, add(e, z, OUT, D_Z) as i64, "epoll_ctl(ADD z)");
    // SAFETY: plain syscalls on our own descriptors.
    unsafe {
        libc::close(sx);
        ck(p, libc::dup3(c, y, libc::O_CLOEXEC) as i64, "dup3");
        ck(p, libc::dup2(b, z) as i64, "dup2");
    }
    // Let t3 (one-shot) and t4/t6 (periodic) expire, unread.
    crate::util::sleep_ns(30_000_000);
    Fds {
        a,
        b,
        c,
        t1,
        t2,
        t3,
        t4,
        t6,
        s,
        i,
        pr,
        pw,
        e,
        e2,
        y,
        z,
    }
}

/// Open fds and their links; pipes are compared by kind only (a restored
/// pipe is a new one).
fn fd_table() -> Vec<(i32, String)> {
    crate::util::list_fds()
        .into_iter()
        .map(|fd| {
            let l = if fd > 2 {
                readlink(&format!("/proc/self/fd/{fd}")).unwrap_or_default()
            } else {
                String::new()
            };
            let l = if l.starts_with("pipe:[") {
                "pipe".to_string()
            } else {
                l
            };
            (fd, l)
        })
        .collect()
}

pub fn run(p: &Proto, args: &[String]) -> Checks {
    match args.first().map(String::as_str) {
        None => run_all(p),
        Some("queued-inotify") => run_queued_inotify(p),
        Some(o) => p.bail(&format!(
            "setup: events takes no argument or 'queued-inotify', got {o:?}"
        )),
    }
}

/// An inotify with an event queued (which crest refuses to checkpoint):
/// after go the event must still be there.
fn run_queued_inotify(p: &Proto) -> Checks {
    // SAFETY: plain syscall.
    let i = unsafe { libc::inotify_init1(libc::IN_NONBLOCK) };
    ck(p, i as i64, "inotify_init1");
    ck(p, mkdir(&p.dir().join("w")) as i64, "mkdir");
    ck(
        p,
        add_watch(i, &p.dir().join("w"), libc::IN_CREATE) as i64,
        "inotify_add_watch",
    );
    ck(p, mkdir(&p.dir().join("w/queued")) as i64, "mkdir");
    let fds = fd_table();
    p.write_ready();
    let wait = p.wait_go();
    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    c.eq("open fds and their links", fds, fd_table());
    c.eq(
        "the queued inotify event",
        Ok(vec![(
            1,
            libc::IN_CREATE | libc::IN_ISDIR,
            "queued".to_string(),
        )]),
        inotify_events(i),
    );
    c
}

fn run_all(p: &Proto) -> Checks {
    let f = setup(p);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let all = [
        f.a, f.b, f.c, f.t1, f.t2, f.t3, f.t4, f.t6, f.s, f.i, f.pr, f.pw, f.e, f.e2, f.y, f.z,
    ];
    let flags: Vec<(i32, i32)> = all.iter().map(|&fd| (getfl(fd), getfd(fd))).collect();
    let table = fd_table();
    let e_regs = epoll_regs(f.e);
    let e2_regs = epoll_regs(f.e2);
    let watches = inotify_watches(f.i);
    if e_regs.len() != 12 || e2_regs.len() != 1 || watches.len() != 4 {
        p.bail(&format!(
            "setup: fdinfo shows {e_regs:?} / {e2_regs:?} / {watches:?}"
        ));
    }
    let t1_0 = tget(f.t1).unwrap_or_else(|e| p.bail(&format!("setup: t1: {}", err_str(e))));
    let t2_0 = tget(f.t2).unwrap_or_else(|e| p.bail(&format!("setup: t2: {}", err_str(e))));

    p.write_ready();
    let wait = p.wait_go();

    let mut c = Checks::new();
    wait.report(&mut c, "go-wait");
    // SAFETY: getpid has no preconditions.
    c.eq("getpid()", pid, unsafe { libc::getpid() });
    c.eq("getpid() vs ready", p.ready_pid(), pid);
    c.eq("open fds and their links", table, fd_table());
    let names = [
        "eventfd a",
        "eventfd b",
        "eventfd c",
        "timerfd t1",
        "timerfd t2",
        "timerfd t3",
        "timerfd t4",
        "timerfd t6",
        "signalfd",
        "inotify",
        "pipe read end",
        "pipe write end",
        "epoll e",
        "epoll e2",
        "fd y (dup3 of c, close-on-exec)",
        "fd z (dup2 of b)",
    ];
    for ((name, &fd), fl) in names.iter().zip(&all).zip(&flags) {
        c.eq(
            &format!("{name} (fd {fd}): F_GETFL, F_GETFD"),
            *fl,
            (getfl(fd), getfd(fd)),
        );
    }

    // Static state, before anything is consumed.
    for (name, fd, count, sem) in [
        ("a", f.a, A_COUNT, "0"),
        ("b", f.b, B_COUNT, "1"),
        ("c", f.c, 0, "0"),
    ] {
        let got = fdinfo_field(fd, "eventfd-count").and_then(|v| u64::from_str_radix(&v, 16).ok());
        c.eq(&format!("eventfd {name}: eventfd-count"), Some(count), got);
        c.eq(
            &format!("eventfd {name}: eventfd-semaphore"),
            Some(sem.to_string()),
            fdinfo_field(fd, "eventfd-semaphore"),
        );
    }
    match tget(f.t1) {
        Ok((v, i)) => {
            c.eq("timerfd t1 interval (ns)", T1_INTERVAL, i);
            c.ensure(v > 0 && v <= t1_0.0 && v + SLACK > t1_0.0, || {
                format!(
                    "timerfd t1 remaining {v} ns, recorded {} ns before ready",
                    t1_0.0
                )
            });
        }
        Err(e) => c.fail(format!("timerfd_gettime(t1): {}", err_str(e))),
    }
    match tget(f.t2) {
        Ok((v, i)) => {
            c.eq("timerfd t2 interval (ns)", 0, i);
            c.ensure(v > 0 && v <= t2_0.0 && v + SLACK > t2_0.0, || {
                format!(
                    "timerfd t2 remaining {v} ns, recorded {} ns before ready",
                    t2_0.0
                )
            });
        }
        Err(e) => c.fail(format!("timerfd_gettime(t2): {}", err_str(e))),
    }
    c.eq(
        "timerfd t2: settime flags (ABSTIME|CANCEL_ON_SET)",
        Some("03".to_string()),
        fdinfo_field(f.t2, "settime flags"),
    );
    c.eq(
        "timerfd clockids (t1 t2 t3 t4 t6)",
        vec![
            Some("1".to_string()),
            Some("0".into()),
            Some("1".into()),
            Some("7".into()),
            Some("1".into()),
        ],
        [f.t1, f.t2, f.t3, f.t4, f.t6]
            .iter()
            .map(|&fd| fdinfo_field(fd, "clockid"))
            .collect::<Vec<_>>(),
    );
    c.eq(
        "signalfd sigmask",
        Some(format!(
            "{:016x}",
            sigbit(libc::SIGUSR1) | sigbit(libc::SIGRTMIN() + 4)
        )),
        fdinfo_field(f.s, "sigmask"),
    );
    c.eq(
        "inotify watches (wd, ino, sdev, mask)",
        watches,
        inotify_watches(f.i),
    );
    c.eq("inotify FIONREAD (no stray events)", 0, fionread(f.i));
    c.eq(
        "epoll e registrations (tfd, events, data)",
        e_regs,
        epoll_regs(f.e),
    );
    c.eq(
        "epoll e2 registrations (tfd, events, data)",
        e2_regs,
        epoll_regs(f.e2),
    );

    // epoll behaviour: what is ready now.
    let first = sorted(vec![
        (D_A, IN),
        (D_Z, OUT),
        (D_X, OUT),
        (D_T3, IN),
        (D_PW, OUT),
        (D_E2, IN),
    ]);
    c.eq("epoll e: first epoll_wait", Ok(first), ready(f.e));
    // Edge-triggered a and one-shot t3 are not reported again.
    let second = sorted(vec![(D_Z, OUT), (D_X, OUT), (D_PW, OUT), (D_E2, IN)]);
    c.eq("epoll e: second epoll_wait", Ok(second.clone()), ready(f.e));
    c.eq("epoll e2: epoll_wait", Ok(vec![(D_B, IN)]), ready(f.e2));
    // Make the others ready.
    c.eq("write 1 to eventfd c", 8, write_u64(f.c, 1));
    // SAFETY: writes one byte.
    c.eq("write to the pipe", 1, unsafe {
        libc::write(f.pw, b"z".as_ptr().cast(), 1)
    });
    // SAFETY: plain kill to ourselves (SIGUSR1 is blocked).
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    c.eq("mkdir w1/new", 0, mkdir(&p.dir().join("w1/new")));
    let third = sorted(
        second
            .into_iter()
            .chain([
                (D_C, IN),
                (D_PR, IN),
                (D_S, IN),
                (D_SX, IN),
                (D_SY, IN),
                (D_I, IN),
            ])
            .collect(),
    );
    c.eq(
        "epoll e: epoll_wait after making fds ready",
        Ok(third),
        ready(f.e),
    );
    // Registrations are keyed by the program's fd numbers.
    let mut ev = libc::epoll_event {
        events: OUT,
        u64: 0x1234,
    };
    // SAFETY: valid event.
    let r = unsafe { libc::epoll_ctl(f.e, libc::EPOLL_CTL_MOD, f.c, &mut ev) };
    c.eq(
        "epoll_ctl(MOD) of fd c",
        0,
        if r == 0 { 0 } else { errno() },
    );
    // SAFETY: valid event.
    let r = unsafe { libc::epoll_ctl(f.e, libc::EPOLL_CTL_DEL, f.a, &mut ev) };
    c.eq(
        "epoll_ctl(DEL) of fd a",
        0,
        if r == 0 { 0 } else { errno() },
    );
    // SAFETY: valid event.
    let r = unsafe { libc::epoll_ctl(f.e, libc::EPOLL_CTL_ADD, f.a, &mut ev) };
    c.eq(
        "epoll_ctl(ADD) of fd a again",
        0,
        if r == 0 { 0 } else { errno() },
    );

    // Counters.
    c.eq("read eventfd a", Ok(A_COUNT), read_u64(f.a));
    c.eq("read eventfd a again", Err(libc::EAGAIN), read_u64(f.a));
    for k in 0..B_COUNT {
        c.eq(
            &format!("read semaphore eventfd b ({k})"),
            Ok(1),
            read_u64(f.b),
        );
    }
    c.eq(
        "read semaphore eventfd b (empty)",
        Err(libc::EAGAIN),
        read_u64(f.b),
    );
    c.eq("read eventfd c", Ok(1), read_u64(f.c));
    let mut byte = [0u8; 2];
    // SAFETY: reads into a local buffer.
    let n = unsafe { libc::read(f.pr, byte.as_mut_ptr().cast(), 2) };
    c.eq("read the pipe", (1, b'z'), (n, byte[0]));

    // signalfd: the signal sent above, then a queued one with a value.
    let mut si = zeroed_ssi();
    let sz = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads one signalfd_siginfo.
    let n = unsafe { libc::read(f.s, (&mut si as *mut libc::signalfd_siginfo).cast(), sz) };
    c.eq(
        "signalfd read after kill(SIGUSR1): (bytes, signo)",
        (sz as isize, libc::SIGUSR1 as u32),
        (n, si.ssi_signo),
    );
    let val = libc::sigval {
        sival_ptr: 99 as *mut libc::c_void,
    };
    // SAFETY: sigqueue to ourselves (the signal is blocked).
    unsafe { libc::sigqueue(pid, libc::SIGRTMIN() + 4, val) };
    // SAFETY: as above.
    let n = unsafe { libc::read(f.s, (&mut si as *mut libc::signalfd_siginfo).cast(), sz) };
    c.eq(
        "signalfd read after sigqueue(SIGRTMIN+4, 99): (bytes, signo, value)",
        (sz as isize, (libc::SIGRTMIN() + 4) as u32, 99),
        (n, si.ssi_signo, si.ssi_int),
    );
    // SAFETY: as above.
    let n = unsafe { libc::read(f.s, (&mut si as *mut libc::signalfd_siginfo).cast(), sz) };
    c.eq("signalfd read when empty", (-1, libc::EAGAIN), (n, errno()));

    // inotify events on every watch.
    c.eq("mkdir w2/x", 0, mkdir(&p.dir().join("w2/x")));
    c.eq("mkdir w3/y", 0, mkdir(&p.dir().join("w3/y")));
    c.eq("mkdir w3/z", 0, mkdir(&p.dir().join("w3/z")));
    match std::fs::OpenOptions::new()
        .write(true)
        .open(p.dir().join("f"))
    {
        Ok(file) => drop(file),
        Err(e) => c.fail(format!("opening f for writing: {e}")),
    }
    let isdir = libc::IN_CREATE | libc::IN_ISDIR;
    c.eq(
        "inotify events (wd, mask, name)",
        Ok(vec![
            (1, isdir, "new".to_string()),
            (5, isdir, "x".to_string()),
            (3, isdir, "y".to_string()),
            (3, libc::IN_IGNORED, String::new()),
            (6, libc::IN_CLOSE_WRITE, String::new()),
        ]),
        inotify_events(f.i),
    );

    // Timers.
    c.eq(
        "read timerfd t3 (expired once, unread)",
        Ok(1),
        read_u64(f.t3),
    );
    c.eq(
        "read timerfd t4 (periodic, expired once)",
        Ok(1),
        read_u64(f.t4),
    );
    match tget(f.t4) {
        Ok((v, i)) => {
            c.eq("timerfd t4 interval (ns)", T4_INTERVAL, i);
            c.ensure(v > 0 && v <= T4_INTERVAL, || {
                format!("timerfd t4 remaining {v} ns, expected in (0, {T4_INTERVAL}]")
            });
        }
        Err(e) => c.fail(format!("timerfd_gettime(t4): {}", err_str(e))),
    }
    match read_u64(f.t6) {
        Ok(n) => c.ensure(n >= 1, || format!("read timerfd t6: {n} expirations")),
        Err(e) => c.fail(format!("read timerfd t6: {}", err_str(e))),
    }
    match tget(f.t6) {
        Ok((v, i)) => {
            c.eq("timerfd t6 interval (ns)", T6_INTERVAL, i);
            c.ensure(v > 0 && v <= T6_INTERVAL, || {
                format!("timerfd t6 remaining {v} ns, expected in (0, {T6_INTERVAL}]")
            });
        }
        Err(e) => c.fail(format!("timerfd_gettime(t6): {}", err_str(e))),
    }
    // t6 must fire again within its interval.
    let t0 = clock_ns(libc::CLOCK_MONOTONIC);
    let mut pfd = libc::pollfd {
        fd: f.t6,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, 2000) };
    let waited = clock_ns(libc::CLOCK_MONOTONIC) - t0;
    c.ensure(
        r == 1 && waited <= (T6_INTERVAL as i128) + 100_000_000,
        || format!("timerfd t6: poll returned {r} after {waited} ns (interval {T6_INTERVAL} ns)"),
    );
    c.ensure(read_u64(f.t6).is_ok_and(|n| n >= 1), || {
        "timerfd t6: nothing to read after it fired".into()
    });
    // t1 still works: re-armed short, it fires.
    c.eq("re-arming t1 at 20 ms", 0, arm(f.t1, 0, 20_000_000, 0));
    pfd.fd = f.t1;
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, 2000) };
    c.eq(
        "timerfd t1 fires after re-arming",
        (1, Ok(1)),
        (r, read_u64(f.t1)),
    );

    for fd in all {
        // SAFETY: closing our own descriptors.
        unsafe { libc::close(fd) };
    }
    c
}

fn zeroed_ssi() -> libc::signalfd_siginfo {
    // SAFETY: a plain C struct of integers: all-zero is valid.
    unsafe { std::mem::zeroed() }
}
