//! userfaultfd(2), used for two things: tracking which pages of another
//! process are written while crest copies its memory (asynchronous
//! write-protection, Linux 6.7+), and filling a process's missing pages
//! on demand (MISSING mode, `UFFDIO_COPY` / `UFFDIO_ZEROPAGE`), the
//! building block of a lazy (post-copy) restore.
//!
//! A userfaultfd is bound to the address space of the process that created
//! it, so crest has the *target* create one (an injected syscall) and takes
//! it over with pidfd_getfd.  Every ioctl below then acts on the target's
//! address space.  Closing the last descriptor unregisters every range and
//! clears the write-protect bits, so a crest that dies leaves the target
//! as it was.

use crate::{Error, Result};
use std::os::fd::{AsRawFd, OwnedFd};

/// The userfaultfd API version (`UFFD_API`).
const UFFD_API: u64 = 0xaa;

/// `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
const UFFDIO_API: u64 = ioc(3, 0x3f, std::mem::size_of::<UffdioApi>());
/// `_IOWR(0xaa, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: u64 = ioc(3, 0x00, std::mem::size_of::<UffdioRegister>());
/// `_IOR(0xaa, 0x01, struct uffdio_range)`.
const UFFDIO_UNREGISTER: u64 = ioc(2, 0x01, std::mem::size_of::<UffdioRange>());
/// `_IOR(0xaa, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: u64 = ioc(2, 0x02, std::mem::size_of::<UffdioRange>());
/// `_IOWR(0xaa, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: u64 = ioc(3, 0x03, std::mem::size_of::<UffdioCopy>());
/// `_IOWR(0xaa, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: u64 = ioc(3, 0x04, std::mem::size_of::<UffdioZeropage>());

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xaa << 8) | nr
}

/// Feature bits of `struct uffdio_api` (include/uapi/linux/userfaultfd.h).
pub mod feature {
    pub const EVENT_FORK: u64 = 1 << 1;
    pub const EVENT_REMAP: u64 = 1 << 2;
    pub const EVENT_REMOVE: u64 = 1 << 3;
    pub const EVENT_UNMAP: u64 = 1 << 6;
    pub const WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    pub const WP_ASYNC: u64 = 1 << 15;
}

/// `UFFDIO_REGISTER_MODE_MISSING`.
const REGISTER_MODE_MISSING: u64 = 1;
/// `UFFDIO_REGISTER_MODE_WP`.
const REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFD_USER_MODE_ONLY`, a flag of userfaultfd(2) itself.
pub const USER_MODE_ONLY: u64 = 1;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg`: an event byte, padding, then a 24-byte union.
#[repr(C)]
#[derive(Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    arg: [u64; 3],
}

// The kernel's layouts, checked at compile time.
const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRange>() == 16);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(std::mem::size_of::<UffdioZeropage>() == 32);
const _: () = assert!(UFFDIO_COPY == 0xc028_aa03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xc020_aa04);
const _: () = assert!(UFFDIO_WAKE == 0x8010_aa02);
const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_aa01);

/// A change of the address-space layout reported by the kernel: the bytes
/// in these ranges may no longer be what they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// mremap moved `len` bytes from `from` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// madvise(MADV_DONTNEED/FREE/REMOVE) dropped `start..end`.
    Remove { start: u64, end: u64 },
    /// munmap (or a mapping over it) removed `start..end`.
    Unmap { start: u64, end: u64 },
}

/// A message of a userfaultfd registered for missing pages.
#[derive(Debug)]
pub enum Msg {
    /// A task touched the missing page at `addr` (page-aligned) and
    /// waits until it is filled (or woken).
    Fault { addr: u64, write: bool },
    /// The process forked; `fd` is the child's userfaultfd (its
    /// registered ranges are missing pages of the child now).
    Fork { fd: OwnedFd },
    /// A layout change (see [`Event`]).
    Event(Event),
}

/// What one [`Userfaultfd::try_copy`] or [`Userfaultfd::try_zeropage`]
/// did; the number is the bytes filled before it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// All of it.
    Done(u64),
    /// The layout is changing (an event waits to be read): read the
    /// events, then try the rest again.
    Again(u64),
    /// The page after the filled bytes is present already.
    Exists(u64),
    /// No mapping registered with this descriptor there (any more).
    Unmapped(u64),
    /// The address space is gone (the process exited or exec'd).
    Gone,
}

/// Waits up to `timeout_ms` for any of `fds` to have events.
pub fn wait_any<T: std::ops::Deref<Target = Userfaultfd>>(
    fds: &[T],
    timeout_ms: i32,
) -> Result<()> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|u| libc::pollfd {
            fd: u.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` holds p.len() valid pollfds and lives across the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::io("polling userfaultfds", e));
        }
    }
    Ok(())
}

/// A userfaultfd bound to another process's address space.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    pid: i32,
}

impl std::os::fd::AsFd for Userfaultfd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::os::fd::AsRawFd for Userfaultfd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl Userfaultfd {
    /// Takes over `fd`, a userfaultfd created by process `pid`.
    pub fn new(fd: OwnedFd, pid: i32) -> Userfaultfd {
        Userfaultfd { fd, pid }
    }

    /// The process whose address space this tracks.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Negotiates the API with `features`; fails if the kernel lacks any.
    pub fn api(&self, features: u64) -> Result<()> {
        let mut a = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which
        // `a` is (layout checked above), and lives across the call.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_API as _, &mut a) };
        if r < 0 {
            return Err(Error::last_os(format!(
                "userfaultfd of pid {}: UFFDIO_API with features {features:#x}",
                self.pid
            )));
        }
        Ok(())
    }

    /// Registers `start..end` for write-protect tracking.
    pub fn register_wp(&self, start: u64, end: u64) -> Result<()> {
        let mut r = UffdioRegister {
            range: UffdioRange {
                start,
                len: end - start,
            },
            mode: REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct
        // uffdio_register`, which `r` is, and lives across the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut r) };
        if rc < 0 {
            return Err(Error::last_os(format!(
                "pid {}: registering {start:#x}-{end:#x} for write tracking",
                self.pid
            )));
        }
        Ok(())
    }

    /// Registers `start..end` for missing-page faults: a task touching a
    /// page there that has none waits until crest fills it.
    pub fn register_missing(&self, start: u64, end: u64) -> Result<()> {
        let mut r = UffdioRegister {
            range: UffdioRange {
                start,
                len: end - start,
            },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct
        // uffdio_register`, which `r` is, and lives across the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut r) };
        if rc < 0 {
            return Err(Error::last_os(format!(
                "pid {}: registering {start:#x}-{end:#x} for missing pages",
                self.pid
            )));
        }
        Ok(())
    }

    /// Wakes the tasks waiting on a fault in `addr..addr+len`.
    pub fn wake(&self, addr: u64, len: u64) -> Result<()> {
        let r = UffdioRange { start: addr, len };
        // SAFETY: UFFDIO_WAKE reads a `struct uffdio_range`, which `r` is.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE as _, &r) };
        if rc < 0 {
            return Err(Error::last_os(format!(
                "pid {}: waking faults at {addr:#x}+{len:#x}",
                self.pid
            )));
        }
        Ok(())
    }

    /// Fills the missing pages at `addr` with `data` (whole pages) and
    /// wakes whoever waits on them.  Pages already present are left as
    /// they are (and their waiters woken); returns the bytes copied.
    /// A range no longer mapped (`ENOENT`, `ESRCH`: unmapped, or the
    /// process is gone) copies nothing.
    pub fn copy(&self, addr: u64, data: &[u8], page_size: u64) -> Result<u64> {
        let mut done = 0u64;
        let mut copied = 0u64;
        let len = data.len() as u64;
        while done < len {
            let mut c = UffdioCopy {
                dst: addr + done,
                src: data[done as usize..].as_ptr() as u64,
                len: len - done,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads `c.len` bytes from `c.src`, which
            // lie inside `data`, and writes the `struct uffdio_copy`.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut c) };
            if c.copy > 0 {
                done += c.copy as u64;
                copied += c.copy as u64;
            }
            if rc == 0 {
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                Some(libc::EEXIST) => {
                    // The page at `done` is there already: skip it.
                    self.wake(addr + done, page_size)?;
                    done += page_size;
                }
                Some(libc::ENOENT) | Some(libc::ESRCH) => return Ok(copied),
                _ => {
                    return Err(Error::io(
                        format!(
                            "pid {}: filling {:#x}+{:#x} (UFFDIO_COPY)",
                            self.pid,
                            addr + done,
                            len - done
                        ),
                        e,
                    ))
                }
            }
        }
        Ok(copied)
    }

    /// Maps the zero page at the missing pages of `addr..addr+len` and
    /// wakes their waiters (pages already present are only woken).
    pub fn zeropage(&self, addr: u64, len: u64) -> Result<()> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start: addr, len },
            mode: 0,
            zeropage: 0,
        };
        loop {
            // SAFETY: UFFDIO_ZEROPAGE reads and writes a `struct
            // uffdio_zeropage`, which `z` is.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE as _, &mut z) };
            if rc == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                Some(libc::EEXIST) => self.wake(addr, len),
                Some(libc::ENOENT) | Some(libc::ESRCH) => Ok(()),
                _ => Err(Error::io(
                    format!(
                        "pid {}: zero-filling {addr:#x}+{len:#x} (UFFDIO_ZEROPAGE)",
                        self.pid
                    ),
                    e,
                )),
            };
        }
    }

    /// One UFFDIO_COPY of whole pages at `addr`, for a caller that reads
    /// the descriptor's events itself (a lazy restore): unlike
    /// [`Userfaultfd::copy`] it never waits for the layout to settle.
    pub fn try_copy(&self, addr: u64, data: &[u8]) -> Result<Fill> {
        let mut c = UffdioCopy {
            dst: addr,
            src: data.as_ptr() as u64,
            len: data.len() as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads `c.len` bytes from `c.src`, which are
        // `data`, and writes the `struct uffdio_copy`.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut c) };
        self.fill_result(rc, c.copy, || {
            format!("filling {addr:#x}+{:#x} (UFFDIO_COPY)", data.len())
        })
    }

    /// What a UFFDIO_COPY or UFFDIO_ZEROPAGE that returned `rc` and
    /// reported `done` bytes means to [`Userfaultfd::try_copy`]'s callers.
    fn fill_result(&self, rc: i32, done: i64, what: impl FnOnce() -> String) -> Result<Fill> {
        let done = done.max(0) as u64;
        if rc == 0 {
            return Ok(Fill::Done(done));
        }
        let e = std::io::Error::last_os_error();
        Ok(match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Fill::Again(done),
            Some(libc::EEXIST) => Fill::Exists(done),
            Some(libc::ENOENT) => Fill::Unmapped(done),
            Some(libc::ESRCH) => Fill::Gone,
            _ => return Err(Error::io(format!("pid {}: {}", self.pid, what()), e)),
        })
    }

    /// One UFFDIO_ZEROPAGE of `addr..addr+len` (see [`Userfaultfd::try_copy`]).
    pub fn try_zeropage(&self, addr: u64, len: u64) -> Result<Fill> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start: addr, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes a `struct
        // uffdio_zeropage`, which `z` is.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE as _, &mut z) };
        self.fill_result(rc, z.zeropage, || {
            format!("zero-filling {addr:#x}+{len:#x} (UFFDIO_ZEROPAGE)")
        })
    }

    /// Reads the messages queued now (the descriptor is non-blocking) of
    /// a descriptor registered for missing pages.
    pub fn read_msgs(&self, out: &mut Vec<Msg>) -> Result<()> {
        let page = crate::process::page_size() as u64;
        self.read_raw(|m| out.extend(decode(m, page)))
    }

    /// Calls `each` on every message queued now, reading them in batches
    /// until the descriptor (non-blocking) has no more.
    fn read_raw(&self, mut each: impl FnMut(&UffdMsg)) -> Result<()> {
        let mut msgs = [UffdMsg {
            event: 0,
            reserved: [0; 7],
            arg: [0; 3],
        }; 16];
        loop {
            // SAFETY: reads at most size_of_val(&msgs) bytes into `msgs`,
            // plain integers for which any bytes are valid.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    std::mem::size_of_val(&msgs),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(()),
                    Some(libc::EINTR) => continue,
                    _ => Err(Error::io(
                        format!("reading the userfaultfd of pid {}", self.pid),
                        e,
                    )),
                };
            }
            let count = n as usize / std::mem::size_of::<UffdMsg>();
            msgs[..count].iter().for_each(&mut each);
            if count < msgs.len() {
                return Ok(());
            }
        }
    }

    /// Unregisters `start..end` (which must cover only registered or
    /// anonymous mappings).
    pub fn unregister(&self, start: u64, end: u64) -> Result<()> {
        let r = UffdioRange {
            start,
            len: end - start,
        };
        // SAFETY: UFFDIO_UNREGISTER reads a `struct uffdio_range`, which
        // `r` is, and lives across the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER as _, &r) };
        if rc < 0 {
            return Err(Error::last_os(format!(
                "pid {}: unregistering {start:#x}-{end:#x}",
                self.pid
            )));
        }
        Ok(())
    }

    /// Reads the events queued now (the descriptor is non-blocking) into
    /// `out`.  Reading an event is what lets the task that caused it go
    /// on.  Events of kinds not asked for are dropped.
    pub fn read_events(&self, out: &mut Vec<Event>) -> Result<()> {
        let page = crate::process::page_size() as u64;
        self.read_raw(|m| {
            if let Some(Msg::Event(e)) = decode(m, page) {
                out.push(e)
            }
        })
    }
}

/// One message as crest uses it (`None`: a kind crest does not ask for).
fn decode(m: &UffdMsg, page: u64) -> Option<Msg> {
    let [a, b, c] = m.arg;
    Some(match m.event {
        // pagefault: flags, address, feat.
        EVENT_PAGEFAULT => Msg::Fault {
            addr: b & !(page - 1),
            write: a & 1 != 0,
        },
        EVENT_FORK => {
            use std::os::fd::FromRawFd;
            let raw = a as u32 as i32;
            // SAFETY: the kernel installed this descriptor in our table
            // for us (the reader); nobody else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            Msg::Fork { fd }
        }
        EVENT_REMAP => Msg::Event(Event::Remap {
            from: a,
            to: b,
            len: c,
        }),
        EVENT_REMOVE => Msg::Event(Event::Remove { start: a, end: b }),
        EVENT_UNMAP => Msg::Event(Event::Unmap { start: a, end: b }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::{page_category as cat, Pagemap, ScanQuery};
    use std::os::fd::FromRawFd;

    /// Tracks writes to a mapping of this process: protect, write two
    /// pages, find exactly those two, and find the protection gone once
    /// the descriptor is closed.
    #[test]
    fn async_write_tracking_of_own_memory() {
        let ps = 4096usize;
        let len = 16 * ps;
        // SAFETY: a fresh private mapping; nothing else references it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as u64;
        let mem = p.cast::<u8>();
        for i in 0..16 {
            // SAFETY: inside the mapping made above.
            unsafe { mem.add(i * ps).write_volatile(1) };
        }
        // SAFETY: plain syscall.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            eprintln!(
                "userfaultfd unavailable: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        // SAFETY: a new descriptor nobody else owns.
        let u = Userfaultfd::new(unsafe { OwnedFd::from_raw_fd(fd as i32) }, 0);
        u.api(feature::WP_ASYNC).unwrap();
        u.register_wp(base, base + len as u64).unwrap();
        let pm = Pagemap::open(std::process::id() as i32).unwrap();
        let written = ScanQuery {
            required: cat::WRITTEN,
            ..Default::default()
        };
        let mut out = Vec::new();
        pm.scan(base, base + len as u64, written, true, &mut out)
            .unwrap();
        assert_eq!(out, vec![(base, base + len as u64, 0)]);
        for i in [3, 9] {
            // SAFETY: inside the mapping made above.
            unsafe { mem.add(i * ps).write_volatile(2) };
        }
        out.clear();
        pm.scan(base, base + len as u64, written, false, &mut out)
            .unwrap();
        let p3 = base + 3 * ps as u64;
        let p9 = base + 9 * ps as u64;
        assert_eq!(out, vec![(p3, p3 + ps as u64, 0), (p9, p9 + ps as u64, 0)]);
        assert!(pm.read_vec(base, 1).unwrap()[0].uffd_wp());
        drop(u);
        assert!(!pm.read_vec(base, 1).unwrap()[0].uffd_wp());
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(p, len) };
    }
}

#[cfg(test)]
mod missing_tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// Missing-page mode on a mapping of this process: a thread touching
    /// two missing pages waits until one is filled with UFFDIO_COPY and
    /// the other with the zero page, and then sees exactly that; filling
    /// a page that is already there leaves it as it is.
    #[test]
    fn missing_pages_are_filled_on_demand() {
        let ps = 4096u64;
        let len = 16 * ps;
        // SAFETY: a fresh private mapping; nothing else references it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as u64;
        // SAFETY: plain syscall.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor nobody else owns.
        let u = Userfaultfd::new(unsafe { OwnedFd::from_raw_fd(fd as i32) }, 0);
        u.api(feature::EVENT_REMOVE).unwrap();
        u.register_missing(base, base + len).unwrap();
        let toucher = std::thread::spawn(move || {
            let mem = base as *const u8;
            // SAFETY: inside the mapping made above, which outlives the
            // thread (joined before the unmap).
            unsafe {
                (
                    mem.add(3 * ps as usize + 17).read_volatile(),
                    mem.add(5 * ps as usize).read_volatile(),
                )
            }
        });
        let mut msgs = Vec::new();
        let mut filled = Vec::new();
        let t0 = std::time::Instant::now();
        while filled.len() < 2 {
            assert!(t0.elapsed().as_secs() < 10, "no fault reported: {msgs:?}");
            wait_any(&[&u], 10).unwrap();
            msgs.clear();
            u.read_msgs(&mut msgs).unwrap();
            for m in &msgs {
                match *m {
                    Msg::Fault { addr, write } if addr == base + 3 * ps => {
                        assert!(!write);
                        let page = vec![0xabu8; ps as usize];
                        assert_eq!(u.copy(addr, &page, ps).unwrap(), ps);
                        filled.push(addr);
                    }
                    Msg::Fault { addr, .. } if addr == base + 5 * ps => {
                        u.zeropage(addr, ps).unwrap();
                        filled.push(addr);
                    }
                    ref m => panic!("unexpected message {m:?}"),
                }
            }
        }
        assert_eq!(toucher.join().unwrap(), (0xab, 0));
        // Present already: left alone.
        let other = vec![0x11u8; 2 * ps as usize];
        assert_eq!(u.copy(base + 3 * ps, &other, ps).unwrap(), ps);
        // SAFETY: inside the mapping; the pages are present now.
        unsafe {
            assert_eq!((base as *const u8).add(3 * ps as usize).read(), 0xab);
            assert_eq!((base as *const u8).add(4 * ps as usize).read(), 0x11);
        }
        drop(u);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(p, len as usize) };
    }
}
