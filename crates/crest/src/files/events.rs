//! Event descriptors: eventfd, timerfd, signalfd, inotify and epoll.
//!
//! Dump reads each one's state from its fdinfo (and, where fdinfo is not
//! enough, from a copy of the descriptor taken with pidfd_getfd); restore
//! creates each open file description once in crest, which then hands it
//! to the stubs like any other.  An epoll instance is created empty and
//! filled by [`add_epoll_targets`] once every other descriptor of the tree
//! is open, since its targets are other descriptors.

use crate::error::{Context, Error, Result};
use crate::model::{
    Checkpoint, EpollTarget, InotifyWatch, ObjectKind, OpenFile, OpenTarget, Process,
};
use crate::task::freeze::Inject;
use crest_sys::proc::{self, FdInfo};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// kcmp(2) type comparing a descriptor with an epoll target.
const KCMP_EPOLL_TFD: i32 = 7;
/// ioctl setting a timerfd's expiration count (CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;
const EFD_SEMAPHORE: i32 = 1;
/// epoll flags that are not events.
const EPOLL_FLAG_BITS: u32 = (1 << 31) | (1 << 30) | (1 << 29) | (1 << 28);
/// The inotify mask bits a watch keeps (events, IN_EXCL_UNLINK, IN_ONESHOT).
const IN_KEPT: u32 = 0xfff | 0x0400_0000 | 0x8000_0000;
/// Watch descriptors above this are not recreated (each gap costs two
/// syscalls).
const MAX_WD: i32 = 1 << 22;

/// What a refused descriptor says.
type Refusal = std::result::Result<OpenTarget, String>;

/// The state of the event descriptor `fd` of `pid` (its /proc link is
/// `link`, its fdinfo `info`), or why it cannot be checkpointed.
pub fn collect(pid: i32, fd: i32, link: &str, info: &FdInfo) -> Refusal {
    let what = link
        .trim_start_matches("anon_inode:")
        .trim_matches(|c| c == '[' || c == ']');
    match what {
        "eventfd" => eventfd_state(info),
        "timerfd" => timerfd_state(pid, fd, info),
        "signalfd" => signalfd_state(info),
        "inotify" => inotify_state(pid, fd, info),
        "eventpoll" => epoll_state(pid, fd, info),
        "pidfd" => crate::files::pidfd::collect(info),
        _ => Err(format!("{what} descriptors are not supported yet")),
    }
}

fn hex(s: &str, what: &str) -> std::result::Result<u64, String> {
    u64::from_str_radix(s.trim(), 16).map_err(|_| format!("fdinfo: bad {what} {s:?}"))
}

fn eventfd_state(info: &FdInfo) -> Refusal {
    let count = hex(
        info.get("eventfd-count")
            .ok_or("fdinfo has no eventfd-count line")?,
        "eventfd-count",
    )?;
    let semaphore = match info.get("eventfd-semaphore") {
        Some("0") => false,
        Some("1") => true,
        Some(s) => return Err(format!("fdinfo: bad eventfd-semaphore {s:?}")),
        None => {
            return Err("this kernel does not show whether an eventfd is in semaphore mode".into())
        }
    };
    Ok(OpenTarget::Eventfd { count, semaphore })
}

/// "(sec, nsec)" → nanoseconds.
fn parse_timespec(s: &str) -> Option<u64> {
    let (a, b) = s
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    let sec: u64 = a.trim().parse().ok()?;
    let nsec: u64 = b.trim().parse().ok()?;
    sec.checked_mul(1_000_000_000)?.checked_add(nsec)
}

/// The timerfd fields of an fdinfo: (clockid, settime flags, value, interval, ticks).
pub fn parse_timerfd(info: &FdInfo) -> std::result::Result<(i32, u32, u64, u64, u64), String> {
    let get = |k: &str| info.get(k).ok_or(format!("fdinfo has no {k} line"));
    let clockid = get("clockid")?
        .parse()
        .map_err(|_| "fdinfo: bad clockid".to_string())?;
    let flags = match info.get("settime flags") {
        Some(f) => {
            u32::from_str_radix(f, 8).map_err(|_| format!("fdinfo: bad settime flags {f:?}"))?
        }
        None => return Err("this kernel does not show a timerfd's settime flags".into()),
    };
    let ticks = get("ticks")?
        .parse()
        .map_err(|_| "fdinfo: bad ticks".to_string())?;
    let value = parse_timespec(get("it_value")?).ok_or("fdinfo: bad it_value")?;
    let interval = parse_timespec(get("it_interval")?).ok_or("fdinfo: bad it_interval")?;
    Ok((clockid, flags, value, interval, ticks))
}

fn timerfd_state(pid: i32, fd: i32, info: &FdInfo) -> Refusal {
    let (mut clockid, mut flags, mut value, mut interval, mut ticks) = parse_timerfd(info)?;
    if ticks > 0 && interval > 0 && value == 0 {
        // An expired periodic timer is only brought forward (its missed
        // expirations counted, the next one armed) when it is read or
        // queried: query a copy of it, which does just that, and read the
        // state again.
        let own = steal(pid, fd)?;
        for _ in 0..3 {
            let mut cur = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
            };
            // SAFETY: timerfd_gettime on a descriptor we own, valid out-pointer.
            if unsafe { libc::timerfd_gettime(own.as_raw_fd(), &mut cur) } != 0 {
                return Err(format!(
                    "timerfd_gettime: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let info = proc::read_fdinfo(std::process::id() as i32, own.as_raw_fd())
                .map_err(|e| e.to_string())?;
            (clockid, flags, value, interval, ticks) = parse_timerfd(&info)?;
            if value > 0 {
                break;
            }
        }
    }
    Ok(OpenTarget::Timerfd {
        clockid,
        settime_flags: flags,
        value_ns: value,
        interval_ns: interval,
        ticks,
    })
}

fn signalfd_state(info: &FdInfo) -> Refusal {
    let mask = hex(
        info.get("sigmask").ok_or("fdinfo has no sigmask line")?,
        "sigmask",
    )?;
    Ok(OpenTarget::Signalfd { mask })
}

/// The `key:value` tokens of an fdinfo line's value part.
fn tokens(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split_whitespace().filter_map(|t| t.split_once(':'))
}

/// One `inotify wd:…` line: (wd, ino, kernel sdev, mask, handle type, handle).
pub type InotifyLine = (i32, u64, u32, u32, i32, Vec<u8>);

/// Parses the value of an `inotify wd` fdinfo line (everything after
/// "inotify wd:").
pub fn parse_inotify_line(v: &str) -> std::result::Result<InotifyLine, String> {
    let bad = || format!("fdinfo: bad inotify line {v:?}");
    let wd = v.split_whitespace().next().ok_or_else(bad)?;
    let wd = i32::from_str_radix(wd, 16).map_err(|_| bad())?;
    let (mut ino, mut sdev, mut mask, mut htype, mut hbytes, mut handle) =
        (None, None, None, None, None, None);
    for (k, val) in tokens(v) {
        match k {
            "ino" => ino = u64::from_str_radix(val, 16).ok(),
            "sdev" => sdev = u32::from_str_radix(val, 16).ok(),
            "mask" => mask = u32::from_str_radix(val, 16).ok(),
            "fhandle-bytes" => hbytes = usize::from_str_radix(val, 16).ok(),
            "fhandle-type" => htype = i32::from_str_radix(val, 16).ok(),
            "f_handle" => {
                handle = (0..val.len() / 2)
                    .map(|i| u8::from_str_radix(&val[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
            }
            _ => {}
        }
    }
    let handle = handle.unwrap_or_default();
    if hbytes.is_some_and(|n| n != handle.len()) {
        return Err(bad());
    }
    Ok((
        wd,
        ino.ok_or_else(bad)?,
        sdev.ok_or_else(bad)?,
        mask.ok_or_else(bad)?,
        htype.unwrap_or(0),
        handle,
    ))
}

/// A copy of descriptor `fd` of `pid` (the same open file description).
fn steal(pid: i32, fd: i32) -> std::result::Result<OwnedFd, String> {
    let pidfd = crest_sys::pidfd::open(pid).map_err(|e| e.to_string())?;
    crest_sys::pidfd::getfd(&pidfd, pid, fd).map_err(|e| e.to_string())
}

fn inotify_state(pid: i32, fd: i32, info: &FdInfo) -> Refusal {
    let own = steal(pid, fd)?;
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD on a descriptor we own, into a valid int.
    if unsafe { libc::ioctl(own.as_raw_fd(), libc::FIONREAD, &mut queued) } != 0 {
        return Err(format!(
            "FIONREAD on the inotify: {}",
            std::io::Error::last_os_error()
        ));
    }
    if queued > 0 {
        return Err(format!(
            "inotify has {queued} bytes of events queued (not supported yet)"
        ));
    }
    let mut watches = Vec::new();
    for v in info.get_all("inotify wd") {
        let (wd, ino, sdev, mask, htype, handle) = parse_inotify_line(v)?;
        let (major, minor) = (sdev >> 20, sdev & 0xfffff);
        let dev = libc::makedev(major, minor);
        let path = path_of_handle(major, minor, ino, dev, htype, &handle)
            .map_err(|e| format!("inotify watch {wd}: {e}"))?;
        watches.push(InotifyWatch {
            wd,
            path,
            mask: mask & IN_KEPT,
            ino,
            dev,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(OpenTarget::Inotify { watches })
}

/// The path of the inode with file handle `handle` on the filesystem of
/// device `major:minor`: opened with open_by_handle_at on a mount of it.
fn path_of_handle(
    major: u32,
    minor: u32,
    ino: u64,
    dev: u64,
    htype: i32,
    handle: &[u8],
) -> std::result::Result<String, String> {
    let gone =
        || format!("cannot find a path for the watched inode {ino} on device {major}:{minor}");
    if handle.is_empty() {
        return Err(format!("{} (its filesystem gives no file handle)", gone()));
    }
    let mut mounts: Vec<proc::MountInfo> = proc::read_mountinfo(std::process::id() as i32)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|m| m.major == major && m.minor == minor)
        .collect();
    mounts.sort_by_key(|m| m.root != "/");
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; },
    // in a u32 buffer for its alignment.
    let mut fh = vec![0u32; 2 + handle.len().div_ceil(4)];
    fh[0] = handle.len() as u32;
    fh[1] = htype as u32;
    // SAFETY: the buffer has room for the header and the handle bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            handle.as_ptr(),
            fh.as_mut_ptr().add(2).cast::<u8>(),
            handle.len(),
        )
    };
    let mut last = None;
    for m in mounts {
        let Ok(dir) = std::fs::File::open(&m.mount_point) else {
            continue;
        };
        // SAFETY: open_by_handle_at with a valid struct file_handle.
        let r = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                dir.as_raw_fd(),
                fh.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if r < 0 {
            last = Some(std::io::Error::last_os_error());
            continue;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let f = unsafe { OwnedFd::from_raw_fd(r as i32) };
        let Ok(p) = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())) else {
            continue;
        };
        let p = p.to_string_lossy().into_owned();
        if p.ends_with(" (deleted)") {
            return Err(format!("the watched file {p} was deleted"));
        }
        if same_inode(&p, dev, ino) {
            return Ok(p);
        }
    }
    Err(match last {
        Some(e) => format!("{}: open_by_handle_at: {e}", gone()),
        None => gone(),
    })
}

/// Whether `path` (not followed) is inode `ino` of device `dev`.
fn same_inode(path: &str, dev: u64, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// One `tfd:` line of an epoll's fdinfo: (tfd, events, data).
pub fn parse_epoll_line(v: &str) -> std::result::Result<(i32, u32, u64), String> {
    let bad = || format!("fdinfo: bad epoll line {v:?}");
    let t: Vec<&str> = v.split_whitespace().collect();
    let tfd = t.first().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let after = |key: &str| {
        t.iter()
            .position(|s| *s == key)
            .and_then(|i| t.get(i + 1))
            .copied()
            .ok_or_else(bad)
    };
    let events = u32::from_str_radix(after("events:")?, 16).map_err(|_| bad())?;
    let data = u64::from_str_radix(after("data:")?, 16).map_err(|_| bad())?;
    Ok((tfd, events, data))
}

/// Whether descriptor `fd` of `pid` is the file registered in epoll `efd`
/// of `pid` as (`tfd`, the `toff`-th registration with that number).
fn is_epoll_target(pid: i32, fd: i32, efd: i32, tfd: i32, toff: u32) -> bool {
    let slot: [u32; 3] = [efd as u32, tfd as u32, toff];
    crest_sys::process::kcmp(pid, pid, KCMP_EPOLL_TFD, fd as u64, slot.as_ptr() as u64)
        .is_ok_and(|r| r == 0)
}

fn epoll_state(pid: i32, efd: i32, info: &FdInfo) -> Refusal {
    let mut targets = Vec::new();
    let mut fds: Option<Vec<i32>> = None;
    let mut seen: HashMap<i32, u32> = HashMap::new();
    for v in info.get_all("tfd") {
        let (tfd, events, data) = parse_epoll_line(v)?;
        // Registrations with the same number are told apart by their rank.
        let toff = seen.entry(tfd).or_insert(0);
        let rank = *toff;
        *toff += 1;
        let fd = if is_epoll_target(pid, tfd, efd, tfd, rank) {
            tfd
        } else {
            // The registered number was closed (or reused) since: look
            // for the file elsewhere in the table.
            let all = match &fds {
                Some(f) => f,
                None => fds.insert(proc::list_fds(pid).map_err(|e| e.to_string())?),
            };
            match all
                .iter()
                .copied()
                .find(|&fd| fd != efd && is_epoll_target(pid, fd, efd, tfd, rank))
            {
                Some(fd) => fd,
                None => {
                    return Err(format!(
                        "epoll watches a file registered as fd {tfd} that is no longer \
                         open in the process (closed since, and held elsewhere)"
                    ))
                }
            }
        };
        targets.push(EpollTarget {
            pid,
            fd,
            tfd,
            events,
            data,
        });
    }
    Ok(OpenTarget::Epoll { targets })
}

fn check(r: libc::c_long, what: impl FnOnce() -> String) -> Result<libc::c_long> {
    if r < 0 {
        Err(crest_sys::Error::last_os(what()).into())
    } else {
        Ok(r)
    }
}

fn owned(r: libc::c_long, what: impl FnOnce() -> String) -> Result<OwnedFd> {
    let r = check(r, what)?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Sets the status flags (O_NONBLOCK, O_ASYNC, …) of a new descriptor.
fn set_status_flags(fd: &OwnedFd, flags: u32) -> Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags as libc::c_int) };
    check(r as libc::c_long, || "setting the status flags".into())?;
    Ok(())
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

fn clock_now_ns(clockid: i32) -> Result<u64> {
    let mut ts = timespec(0);
    // SAFETY: clock_gettime with a valid out-pointer.
    let r = unsafe { libc::clock_gettime(clockid, &mut ts) };
    check(r as libc::c_long, || format!("reading clock {clockid}"))?;
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Creates the event descriptor `o` in crest (an epoll comes back empty).
pub fn open(o: &OpenFile) -> Result<OwnedFd> {
    let nonblock = o.flags & libc::O_NONBLOCK as u32 != 0;
    let nb = |flag: i32| if nonblock { flag } else { 0 };
    let fd = match &o.target {
        OpenTarget::Eventfd { count, semaphore } => {
            let flags = libc::EFD_CLOEXEC
                | nb(libc::EFD_NONBLOCK)
                | if *semaphore { EFD_SEMAPHORE } else { 0 };
            // SAFETY: plain syscall.
            let fd = owned(unsafe { libc::eventfd(0, flags) } as libc::c_long, || {
                "eventfd".into()
            })?;
            if *count > 0 {
                let b = count.to_ne_bytes();
                // SAFETY: write of 8 bytes from a local buffer.
                let r = unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), 8) };
                check(r as libc::c_long, || {
                    format!("setting an eventfd's counter to {count}")
                })?;
            }
            fd
        }
        &OpenTarget::Timerfd {
            clockid,
            settime_flags,
            value_ns,
            interval_ns,
            ticks,
        } => {
            // SAFETY: plain syscall.
            let fd = owned(
                unsafe { libc::timerfd_create(clockid, libc::TFD_CLOEXEC | nb(libc::TFD_NONBLOCK)) }
                    as libc::c_long,
                || format!("timerfd_create(clock {clockid})"),
            )?;
            if value_ns > 0 {
                // The time left runs from now.  An absolute timer stays
                // absolute (so TFD_TIMER_CANCEL_ON_SET keeps working), at
                // now + the time it had left.
                let abs = settime_flags & TFD_TIMER_ABSTIME != 0;
                let value = if abs {
                    clock_now_ns(clockid)?.saturating_add(value_ns)
                } else {
                    value_ns
                };
                let its = libc::itimerspec {
                    it_interval: timespec(interval_ns),
                    it_value: timespec(value),
                };
                let flags = if abs {
                    (settime_flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET)) as i32
                } else {
                    0
                };
                // SAFETY: timerfd_settime with a valid itimerspec.
                let r = unsafe {
                    libc::timerfd_settime(fd.as_raw_fd(), flags, &its, std::ptr::null_mut())
                };
                check(r as libc::c_long, || "arming a timerfd".into())?;
            }
            if ticks > 0 {
                // SAFETY: the ioctl reads one u64 from a valid pointer.
                let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS as _, &ticks) };
                check(r as libc::c_long, || {
                    format!("setting a timerfd's expiration count to {ticks} (TFD_IOC_SET_TICKS)")
                })?;
            }
            fd
        }
        OpenTarget::Signalfd { mask } => {
            let flags = libc::SFD_CLOEXEC | nb(libc::SFD_NONBLOCK);
            // SAFETY: signalfd4 reads an 8-byte kernel sigset from a valid pointer.
            let r = unsafe { libc::syscall(libc::SYS_signalfd4, -1, mask as *const u64, 8, flags) };
            owned(r, || format!("signalfd with mask {mask:#x}"))?
        }
        OpenTarget::Inotify { watches } => {
            // SAFETY: plain syscall.
            let fd = owned(
                unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) }
                    as libc::c_long,
                || "inotify_init1".into(),
            )?;
            add_watches(&fd, watches)?;
            fd
        }
        OpenTarget::Epoll { .. } => {
            owned(
                // SAFETY: plain syscall.
                unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } as libc::c_long,
                || "epoll_create1".into(),
            )?
        }
        _ => return Err(Error::msg("events::open called for another kind of file")),
    };
    set_status_flags(&fd, o.flags)?;
    Ok(fd)
}

fn add_watch(ifd: &OwnedFd, path: &str, mask: u32) -> Result<i32> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| Error::Invalid(format!("path with a NUL byte: {path:?}")))?;
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::inotify_add_watch(ifd.as_raw_fd(), c.as_ptr(), mask) };
    Ok(check(r as libc::c_long, || {
        format!("adding an inotify watch on {path}")
    })? as i32)
}

/// Reads (and drops) every event queued on the non-blocking inotify `ifd`.
fn drain(ifd: &OwnedFd) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: read into a buffer we own.
        let n = unsafe { libc::read(ifd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
    }
}

/// A directory crest watches to use up watch descriptors; removed on drop.
struct Filler(std::path::PathBuf);

impl Filler {
    fn new() -> Result<Filler> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("crest-inotify-{}-{n}", std::process::id()));
        std::fs::create_dir(&p).context(|| format!("creating {}", p.display()))?;
        Ok(Filler(p))
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Adds the watches with their descriptor numbers.  The kernel hands out
/// watch descriptors in increasing order (idr_alloc_cyclic), never reusing
/// one until it wraps: each number below a wanted one is used up by
/// adding and removing a watch on a directory of crest's, and the
/// IN_IGNORED events that removal queues are read away at the end.
fn add_watches(ifd: &OwnedFd, watches: &[InotifyWatch]) -> Result<()> {
    let mut ws: Vec<&InotifyWatch> = watches.iter().collect();
    ws.sort_by_key(|w| w.wd);
    let mut filler: Option<Filler> = None;
    let mut next = 1;
    let mut pending = 0;
    for w in ws {
        if w.wd < next || w.wd > MAX_WD {
            return Err(Error::Invalid(format!(
                "inotify watch descriptor {} is repeated or out of range",
                w.wd
            )));
        }
        while next < w.wd {
            let dir = match &filler {
                Some(f) => f,
                None => filler.insert(Filler::new()?),
            };
            let path = dir.0.to_string_lossy().into_owned();
            let got = add_watch(ifd, &path, libc::IN_ATTRIB)?;
            // SAFETY: plain syscall on a descriptor we own.
            unsafe { libc::inotify_rm_watch(ifd.as_raw_fd(), got) };
            if got != next {
                return Err(Error::msg(format!(
                    "recreating inotify watch descriptor {}: the kernel gave {got} where {next} was expected",
                    w.wd
                )));
            }
            next += 1;
            pending += 1;
            if pending >= 4096 {
                drain(ifd);
                pending = 0;
            }
        }
        match std::fs::symlink_metadata(&w.path) {
            Err(e) => {
                return Err(Error::Incompatible(format!(
                    "inotify watch {} is on {}, which is gone: {e}",
                    w.wd, w.path
                )))
            }
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                if m.dev() == w.dev && m.ino() != w.ino {
                    return Err(Error::Incompatible(format!(
                        "inotify watch {} is on {}, which is another file now",
                        w.wd, w.path
                    )));
                }
            }
        }
        let got = add_watch(ifd, &w.path, (w.mask & IN_KEPT) | libc::IN_DONT_FOLLOW)?;
        if got != w.wd {
            return Err(Error::msg(format!(
                "recreating the inotify watch on {}: the kernel gave descriptor {got}, not {}",
                w.path, w.wd
            )));
        }
        next = w.wd + 1;
    }
    drain(ifd);
    Ok(())
}

/// Object `id` (ids are indexes in a restored image; anything else falls
/// back to a search).
fn object(ckpt: &Checkpoint, id: u32) -> Option<&ObjectKind> {
    match ckpt.objects.get(id as usize) {
        Some(o) if o.id == id => Some(&o.kind),
        _ => ckpt.object(id),
    }
}

/// The object of an epoll target: the open file description at (pid, fd).
fn target_object(ckpt: &Checkpoint, t: &EpollTarget) -> Option<u32> {
    ckpt.processes
        .iter()
        .find(|p| p.pid == t.pid)
        .and_then(|p| p.fds.iter().find(|f| f.fd == t.fd))
        .map(|f| f.file)
}

fn is_signalfd(ckpt: &Checkpoint, id: u32) -> bool {
    matches!(
        object(ckpt, id),
        Some(ObjectKind::Open(OpenFile {
            target: OpenTarget::Signalfd { .. },
            ..
        }))
    )
}

/// Registers, from inside the restored process `p` (whose descriptors are
/// in place), the signalfd targets of its epolls.  A signalfd reports the
/// signals of the task that polls it, and epoll polls it once, at
/// EPOLL_CTL_ADD, hooking itself on *that* task's signal wait queue: the
/// add must come from the process, not from crest.
pub fn add_process_targets(t: &impl Inject, ckpt: &Checkpoint, p: &Process) -> Result<()> {
    let mut done = std::collections::HashSet::new();
    for epfd in &p.fds {
        let Some(ObjectKind::Open(OpenFile {
            target: OpenTarget::Epoll { targets },
            ..
        })) = object(ckpt, epfd.file)
        else {
            continue;
        };
        if !done.insert(epfd.file) {
            continue;
        }
        for tg in targets {
            if tg.pid != p.pid || !target_object(ckpt, tg).is_some_and(|o| is_signalfd(ckpt, o)) {
                continue;
            }
            let mut ev = [0u8; 12];
            ev[0..4].copy_from_slice(&tg.events.to_ne_bytes());
            ev[4..12].copy_from_slice(&tg.data.to_ne_bytes());
            t.write_scratch(0, &ev)?;
            let what = format!(
                "registering signalfd {} in the epoll at fd {} as fd {}",
                tg.fd, epfd.fd, tg.tfd
            );
            let add = || {
                t.call(
                    libc::SYS_epoll_ctl,
                    &[
                        epfd.fd as u64,
                        libc::EPOLL_CTL_ADD as u64,
                        tg.tfd as u64,
                        t.scratch(),
                    ],
                    &what,
                )
            };
            if tg.tfd == tg.fd {
                add()?;
                continue;
            }
            // Registered under a number that is closed now or another
            // file's (the program's, or a restore helper's right above the
            // program's descriptors): place the signalfd there for the add,
            // then put back whatever was there.
            let occupant = t
                .call(
                    libc::SYS_fcntl,
                    &[tg.tfd as u64, libc::F_GETFD as u64, 0],
                    &what,
                )
                .ok();
            let top = p.fds.iter().map(|f| f.fd).max().unwrap_or(0).max(tg.tfd) + 1;
            let saved = match occupant {
                Some(_) => Some(t.call(
                    libc::SYS_fcntl,
                    &[tg.tfd as u64, libc::F_DUPFD_CLOEXEC as u64, top as u64],
                    &what,
                )?),
                None => None,
            };
            t.call(libc::SYS_dup2, &[tg.fd as u64, tg.tfd as u64], &what)?;
            add()?;
            match (saved, occupant) {
                (Some(s), Some(fdflags)) => {
                    t.call(libc::SYS_dup2, &[s, tg.tfd as u64], &what)?;
                    t.call(
                        libc::SYS_fcntl,
                        &[tg.tfd as u64, libc::F_SETFD as u64, fdflags],
                        &what,
                    )?;
                    t.call(libc::SYS_close, &[s], &what)?;
                }
                _ => {
                    t.call(libc::SYS_close, &[tg.tfd as u64], &what)?;
                }
            }
        }
    }
    Ok(())
}

/// One epoll_ctl(ADD) to make: crest's descriptors of the epoll and of
/// the target, the number to register it with, the event.
struct EpollAdd {
    ep: RawFd,
    target: RawFd,
    tfd: i32,
    events: u32,
    data: u64,
}

/// Fills every epoll of the image, once all the open file descriptions
/// of the tree are open in crest: `opened` maps object ids to crest's
/// descriptors.  Each target is registered under the number the program
/// registered it with (the kernel keys registrations by (file, number),
/// and the program's later EPOLL_CTL_MOD/DEL use that number): the adds
/// run in a thread of crest with a private descriptor table, where each
/// target is placed at that number.  Signalfd targets are left to
/// [`add_process_targets`].
pub fn add_epoll_targets(ckpt: &Checkpoint, opened: &HashMap<u32, RawFd>) -> Result<()> {
    let mut adds = Vec::new();
    let mut ids: Vec<u32> = opened.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let Some(ObjectKind::Open(OpenFile {
            target: OpenTarget::Epoll { targets },
            ..
        })) = object(ckpt, id)
        else {
            continue;
        };
        for t in targets {
            let obj = target_object(ckpt, t);
            if obj.is_some_and(|o| is_signalfd(ckpt, o)) {
                continue; // added by the process itself: see add_process_targets
            }
            let Some(&target) = obj.and_then(|o| opened.get(&o)) else {
                return Err(Error::Invalid(format!(
                    "epoll object {id}: its target fd {} of pid {} is not in the image",
                    t.fd, t.pid
                )));
            };
            if t.tfd < 0 || t.tfd >= 1 << 20 {
                return Err(Error::Invalid(format!(
                    "epoll object {id}: bad target number {}",
                    t.tfd
                )));
            }
            adds.push(EpollAdd {
                ep: opened[&id],
                target,
                tfd: t.tfd,
                events: t.events,
                data: t.data,
            });
        }
    }
    if adds.is_empty() {
        return Ok(());
    }
    std::thread::scope(|s| s.spawn(|| run_epoll_adds(&adds)).join())
        .map_err(|_| Error::msg("the epoll restore thread panicked"))?
}

/// In a thread of its own: unshares the descriptor table and makes the adds.
fn run_epoll_adds(adds: &[EpollAdd]) -> Result<()> {
    // SAFETY: unshare(CLONE_FILES) gives this thread a private copy of the
    // descriptor table; the rest of crest keeps its own.
    let r = unsafe { libc::unshare(libc::CLONE_FILES) };
    check(r as libc::c_long, || "unshare(CLONE_FILES)".into())?;
    // Move crest's descriptors above every target number first.
    let base = adds.iter().map(|a| a.tfd).max().unwrap_or(0) + 1;
    let mut raws: Vec<RawFd> = adds.iter().flat_map(|a| [a.ep, a.target]).collect();
    raws.sort_unstable();
    raws.dedup();
    let need = base as u64 + raws.len() as u64 + 1;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let old = lim;
    if lim.rlim_cur < need {
        lim.rlim_cur = need;
        lim.rlim_max = lim.rlim_max.max(need);
        // SAFETY: setrlimit with a valid struct (crest is root).
        let r = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        check(r as libc::c_long, || {
            format!("raising RLIMIT_NOFILE to {need} to register epoll targets")
        })?;
    }
    let r = (|| -> Result<()> {
        let mut high: HashMap<RawFd, OwnedFd> = HashMap::new();
        for &raw in &raws {
            // SAFETY: fcntl on a descriptor of this thread's table.
            let r = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, base) };
            high.insert(
                raw,
                owned(r as libc::c_long, || "moving a descriptor".into())?,
            );
        }
        for a in adds {
            // SAFETY: dup2 within this thread's private table; the number
            // `tfd` is below every descriptor still needed.
            let r = unsafe { libc::dup2(high[&a.target].as_raw_fd(), a.tfd) };
            check(r as libc::c_long, || {
                format!("placing an epoll target at fd {}", a.tfd)
            })?;
            let mut ev = libc::epoll_event {
                events: a.events,
                u64: a.data,
            };
            // SAFETY: epoll_ctl with a valid event.
            let r = unsafe {
                libc::epoll_ctl(high[&a.ep].as_raw_fd(), libc::EPOLL_CTL_ADD, a.tfd, &mut ev)
            };
            check(r as libc::c_long, || {
                format!(
                    "registering fd {} in an epoll (events {:#x}, data {:#x})",
                    a.tfd, a.events, a.data
                )
            })?;
            // SAFETY: closing the copy placed above (the registration stays:
            // the file is still open elsewhere).
            unsafe { libc::close(a.tfd) };
        }
        Ok(())
    })();
    if lim.rlim_cur != old.rlim_cur {
        // SAFETY: setrlimit with a valid struct.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) };
    }
    r
}

/// A short description of an event descriptor, for `inspect`.
pub fn describe(t: &OpenTarget) -> Option<String> {
    Some(match t {
        OpenTarget::Pidfd { pid, .. } => format!("pidfd of pid {pid}"),
        OpenTarget::Eventfd { count, semaphore } => format!(
            "eventfd (count {count}{})",
            if *semaphore { ", semaphore" } else { "" }
        ),
        OpenTarget::Timerfd {
            clockid,
            settime_flags,
            value_ns,
            interval_ns,
            ticks,
        } => format!(
            "timerfd (clock {clockid}, {}, interval {}, {ticks} unread expirations{})",
            if *value_ns == 0 {
                "disarmed".to_string()
            } else {
                format!("{} left", secs(*value_ns))
            },
            secs(*interval_ns),
            if settime_flags & TFD_TIMER_ABSTIME != 0 {
                ", absolute"
            } else {
                ""
            }
        ),
        OpenTarget::Signalfd { mask } => format!("signalfd (mask {mask:#018x})"),
        OpenTarget::Inotify { watches } => {
            let w: Vec<String> = watches
                .iter()
                .map(|w| format!("{}:{} mask {:#x}", w.wd, w.path, w.mask))
                .collect();
            format!("inotify ({})", w.join(", "))
        }
        OpenTarget::Epoll { targets } => {
            let t: Vec<String> = targets
                .iter()
                .map(|t| {
                    let flags = t.events & EPOLL_FLAG_BITS;
                    format!(
                        "fd {}{} events {:#x}{} data {:#x}",
                        t.tfd,
                        if t.fd != t.tfd {
                            format!(" (now fd {})", t.fd)
                        } else {
                            String::new()
                        },
                        t.events & !EPOLL_FLAG_BITS,
                        if flags != 0 {
                            format!("|{flags:#x}")
                        } else {
                            String::new()
                        },
                        t.data
                    )
                })
                .collect();
            format!("epoll ({})", t.join(", "))
        }
        _ => return None,
    })
}

fn secs(ns: u64) -> String {
    format!("{}.{:09}s", ns / 1_000_000_000, ns % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(text: &str) -> FdInfo {
        proc::parse_fdinfo(text).unwrap()
    }

    #[test]
    fn eventfd_lines() {
        let i = info("pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:        12345678e\neventfd-id: 1\neventfd-semaphore: 1\n");
        assert_eq!(
            eventfd_state(&i),
            Ok(OpenTarget::Eventfd {
                count: 0x1_2345_678e,
                semaphore: true
            })
        );
        let old = info("pos:\t0\nflags:\t02\neventfd-count:        0\neventfd-id: 1\n");
        assert!(eventfd_state(&old).is_err());
    }

    #[test]
    fn timerfd_lines() {
        let i = info("pos:\t0\nflags:\t02\nclockid: 0\nticks: 4\nsettime flags: 03\nit_value: (49, 847295133)\nit_interval: (3, 500)\n");
        assert_eq!(
            parse_timerfd(&i),
            Ok((0, 3, 49_847_295_133, 3_000_000_500, 4))
        );
    }

    #[test]
    fn inotify_line() {
        let v = "4 ino:996063 sdev:fe00000 mask:80000100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:63609900828a9762";
        let (wd, ino, sdev, mask, t, h) = parse_inotify_line(v).unwrap();
        assert_eq!(
            (wd, ino, sdev, mask, t),
            (4, 0x996063, 0xfe00000, 0x8000_0100, 1)
        );
        assert_eq!(h, vec![0x63, 0x60, 0x99, 0, 0x82, 0x8a, 0x97, 0x62]);
        assert!(parse_inotify_line("1f ino:2 sdev:3 mask:4 fhandle-bytes:9 f_handle:00").is_err());
    }

    #[test]
    fn epoll_line() {
        assert_eq!(
            parse_epoll_line("3 events: 80000019 data: deadbeef12345678  pos:0 ino:40e sdev:10"),
            Ok((3, 0x8000_0019, 0xdead_beef_1234_5678))
        );
        assert_eq!(
            parse_epoll_line("9 events:       1c data:                7  pos:0 ino:40e sdev:10"),
            Ok((9, 0x1c, 7))
        );
        assert!(parse_epoll_line("x events: 1 data: 2").is_err());
    }
}
