//! Event descriptors made and queried in crest: eventfd, timerfd,
//! signalfd, inotify and epoll, on rustix where it has the call.
//!
//! Every function takes or returns owned descriptors and plain numbers;
//! an error says which call failed and on what.

use crate::error::{Error, Result};
use rustix::event::{epoll, eventfd as rx_eventfd, EventfdFlags};
use rustix::fs::inotify;
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn os(context: impl Into<String>, e: rustix::io::Errno) -> Error {
    Error::io(context, e.into())
}

fn check(r: libc::c_long, what: impl FnOnce() -> String) -> Result<libc::c_long> {
    if r < 0 {
        Err(Error::last_os(what()))
    } else {
        Ok(r)
    }
}

/// The status flags (O_NONBLOCK, O_ASYNC, …) of `fd` set to `flags`.
pub fn set_status_flags(fd: BorrowedFd<'_>, flags: u32) -> Result<()> {
    // SAFETY: fcntl(F_SETFL) on a borrowed, open descriptor; it takes an
    // int and touches no memory.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags as libc::c_int) };
    check(r as libc::c_long, || {
        format!("setting status flags {flags:#o}")
    })?;
    Ok(())
}

/// A new eventfd holding `count`, close-on-exec, in semaphore mode or not.
pub fn eventfd(count: u64, semaphore: bool, nonblock: bool) -> Result<OwnedFd> {
    let mut flags = EventfdFlags::CLOEXEC;
    if semaphore {
        flags |= EventfdFlags::SEMAPHORE;
    }
    if nonblock {
        flags |= EventfdFlags::NONBLOCK;
    }
    let fd = rx_eventfd(0, flags).map_err(|e| os("eventfd", e))?;
    if count > 0 {
        // The counter is 64 bits; eventfd()'s initial value only 32: write it.
        rustix::io::write(&fd, &count.to_ne_bytes())
            .map_err(|e| os(format!("setting an eventfd's counter to {count}"), e))?;
    }
    Ok(fd)
}

fn timespec(ns: u64) -> Timespec {
    Timespec {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_nsec: (ns % 1_000_000_000) as i64,
    }
}

fn nanos(t: &Timespec) -> u64 {
    (t.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec.max(0) as u64)
}

fn timerfd_clock(clockid: i32) -> Result<TimerfdClockId> {
    Ok(match clockid {
        libc::CLOCK_REALTIME => TimerfdClockId::Realtime,
        libc::CLOCK_MONOTONIC => TimerfdClockId::Monotonic,
        libc::CLOCK_BOOTTIME => TimerfdClockId::Boottime,
        libc::CLOCK_REALTIME_ALARM => TimerfdClockId::RealtimeAlarm,
        libc::CLOCK_BOOTTIME_ALARM => TimerfdClockId::BoottimeAlarm,
        c => {
            return Err(Error::parse(
                "timerfd",
                format!("clock {c} is not one a timerfd can use"),
            ))
        }
    })
}

/// The current time of clock `clockid`, in nanoseconds.
pub fn clock_now_ns(clockid: i32) -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid local.
    let r = unsafe { libc::clock_gettime(clockid, &mut ts) };
    check(r as libc::c_long, || format!("reading clock {clockid}"))?;
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// A new, disarmed timerfd on clock `clockid`, close-on-exec.
pub fn timerfd(clockid: i32, nonblock: bool) -> Result<OwnedFd> {
    let mut flags = TimerfdFlags::CLOEXEC;
    if nonblock {
        flags |= TimerfdFlags::NONBLOCK;
    }
    rustix::time::timerfd_create(timerfd_clock(clockid)?, flags)
        .map_err(|e| os(format!("timerfd_create(clock {clockid})"), e))
}

/// What a timerfd has left: (time to the next expiration, interval), in
/// nanoseconds.  Querying brings an expired periodic timer forward.
pub fn timerfd_get(fd: BorrowedFd<'_>) -> Result<(u64, u64)> {
    let t = rustix::time::timerfd_gettime(fd).map_err(|e| os("timerfd_gettime", e))?;
    Ok((nanos(&t.it_value), nanos(&t.it_interval)))
}

/// Arms a timerfd: `value_ns` (absolute on its clock when `flags` holds
/// TFD_TIMER_ABSTIME), then every `interval_ns`.
pub fn timerfd_set(fd: BorrowedFd<'_>, flags: u32, value_ns: u64, interval_ns: u64) -> Result<()> {
    let its = Itimerspec {
        it_interval: timespec(interval_ns),
        it_value: timespec(value_ns),
    };
    rustix::time::timerfd_settime(fd, TimerfdTimerFlags::from_bits_retain(flags), &its)
        .map_err(|e| os("arming a timerfd", e))?;
    Ok(())
}

/// ioctl setting a timerfd's expiration count (CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

/// Sets how many expirations a timerfd has that were not read yet.
pub fn timerfd_set_ticks(fd: BorrowedFd<'_>, ticks: u64) -> Result<()> {
    // SAFETY: this ioctl reads one u64 from the valid pointer given.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS as _, &ticks) };
    check(r as libc::c_long, || {
        format!("setting a timerfd's expiration count to {ticks} (TFD_IOC_SET_TICKS)")
    })?;
    Ok(())
}

/// A new signalfd for the signals in the kernel sigset `mask`.
pub fn signalfd(mask: u64, nonblock: bool) -> Result<OwnedFd> {
    let flags = libc::SFD_CLOEXEC | if nonblock { libc::SFD_NONBLOCK } else { 0 };
    // SAFETY: signalfd4 reads an 8-byte kernel sigset from a valid local.
    let r = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8, flags) };
    let r = check(r, || format!("signalfd with mask {mask:#x}"))?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// A new non-blocking, close-on-exec inotify instance.
pub fn inotify() -> Result<OwnedFd> {
    inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        .map_err(|e| os("inotify_init1", e))
}

/// Adds a watch with mask `mask` on `path`; returns its watch descriptor.
pub fn inotify_add(ifd: BorrowedFd<'_>, path: &str, mask: u32) -> Result<i32> {
    inotify::add_watch(ifd, path, inotify::WatchFlags::from_bits_retain(mask))
        .map_err(|e| os(format!("adding an inotify watch on {path}"), e))
}

/// Removes watch `wd` (its IN_IGNORED event is queued).
pub fn inotify_remove(ifd: BorrowedFd<'_>, wd: i32) -> Result<()> {
    inotify::remove_watch(ifd, wd).map_err(|e| os(format!("removing inotify watch {wd}"), e))
}

/// Reads and drops every event queued on a non-blocking descriptor.
pub fn drain(fd: BorrowedFd<'_>) {
    let mut buf = vec![0u8; 64 * 1024];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// How many bytes can be read from `fd` now (FIONREAD).
pub fn readable(fd: BorrowedFd<'_>) -> Result<u64> {
    rustix::io::ioctl_fionread(fd).map_err(|e| os("FIONREAD", e))
}

/// A new, empty, close-on-exec epoll instance.
pub fn epoll() -> Result<OwnedFd> {
    epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| os("epoll_create1", e))
}

/// Registers `target` in epoll `ep` for `events` (event bits and flags
/// such as EPOLLET, as the kernel keeps them) with user data `data`.
pub fn epoll_add(ep: BorrowedFd<'_>, target: BorrowedFd<'_>, events: u32, data: u64) -> Result<()> {
    epoll::add(
        ep,
        target,
        epoll::EventData::new_u64(data),
        epoll::EventFlags::from_bits_retain(events),
    )
    .map_err(|e| {
        os(
            format!(
                "registering fd {} in an epoll (events {events:#x}, data {data:#x})",
                target.as_raw_fd()
            ),
            e,
        )
    })
}

/// A thread whose descriptor table is its own copy, in which descriptors
/// can be put at chosen numbers without touching the rest of the process.
/// Only the thread that made it may use it; it is not `Send`.
pub struct PrivateTable {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl PrivateTable {
    /// Unshares the calling thread's descriptor table.
    ///
    /// The caller must be a thread that uses no descriptor it did not
    /// get through this table afterwards and exits when done (the copy
    /// goes with it): e.g. a scoped thread spawned for this.
    pub fn unshare() -> Result<PrivateTable> {
        // SAFETY: CLONE_FILES gives this thread a private copy of the
        // table; descriptors opened by other threads after this are not
        // in it, and this thread only uses what it had and what it opens
        // itself (the contract above).
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FILES) }
            .map_err(|e| os("unshare(CLONE_FILES)", e))?;
        Ok(PrivateTable {
            _not_send: std::marker::PhantomData,
        })
    }

    /// A copy of `fd` at the lowest free number at or above `min`.
    pub fn dup_above(&self, fd: RawFd, min: RawFd) -> Result<OwnedFd> {
        // SAFETY: `fd` is a number in this thread's private table; the
        // duplicate is borrowed only for the call.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_dupfd_cloexec(b, min)
            .map_err(|e| os(format!("moving fd {fd} above {min}"), e))
    }

    /// A copy of `fd` at exactly `number` (whatever was there is closed).
    pub fn place_at(&self, fd: BorrowedFd<'_>, number: RawFd) -> Result<OwnedFd> {
        // SAFETY: dup2 within this thread's private table; the old
        // occupant of `number`, if any, is one of the table's copies that
        // no one uses any more.
        let r = unsafe { libc::dup2(fd.as_raw_fd(), number) };
        let r = check(r as libc::c_long, || {
            format!("placing a descriptor at fd {number}")
        })?;
        // SAFETY: `number` now holds the duplicate made just above, owned
        // by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    }
}

/// Raises RLIMIT_NOFILE to at least `need` for as long as the guard lives.
pub struct NofileAtLeast {
    old: Option<rustix::process::Rlimit>,
}

impl NofileAtLeast {
    pub fn new(need: u64) -> Result<NofileAtLeast> {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let old = getrlimit(Resource::Nofile);
        if old.current.is_some_and(|c| c >= need) {
            return Ok(NofileAtLeast { old: None });
        }
        let new = rustix::process::Rlimit {
            current: Some(need),
            maximum: old.maximum.map(|m| m.max(need)),
        };
        setrlimit(Resource::Nofile, new)
            .map_err(|e| os(format!("raising RLIMIT_NOFILE to {need}"), e))?;
        Ok(NofileAtLeast { old: Some(old) })
    }
}

impl Drop for NofileAtLeast {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn eventfd_keeps_a_64_bit_count() {
        let fd = eventfd(0x1_0000_0005, false, true).unwrap();
        let mut b = [0u8; 8];
        rustix::io::read(&fd, &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 0x1_0000_0005);
    }

    #[test]
    fn timerfd_round_trip() {
        let fd = timerfd(libc::CLOCK_MONOTONIC, true).unwrap();
        timerfd_set(fd.as_fd(), 0, 50_000_000_000, 1_000_000_000).unwrap();
        let (v, i) = timerfd_get(fd.as_fd()).unwrap();
        assert!(v > 49_000_000_000 && v <= 50_000_000_000, "{v}");
        assert_eq!(i, 1_000_000_000);
        assert!(timerfd(12345, false).is_err());
    }

    #[test]
    fn epoll_keeps_flags_and_data() {
        let ep = epoll().unwrap();
        let e = eventfd(1, false, true).unwrap();
        epoll_add(ep.as_fd(), e.as_fd(), libc::EPOLLIN as u32 | 1 << 31, 77).unwrap();
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", ep.as_raw_fd())).unwrap();
        let line = info.lines().find(|l| l.starts_with("tfd:")).unwrap();
        let t: Vec<&str> = line.split_whitespace().collect();
        let after = |k: &str| t[t.iter().position(|s| *s == k).unwrap() + 1];
        // The kernel adds EPOLLERR and EPOLLHUP to every registration.
        assert_eq!(after("events:"), "80000019", "{line}");
        assert_eq!(after("data:"), "4d", "{line}");
    }
}
