//! userfaultfd(2), used for one thing: tracking which pages of another
//! process are written while crest copies its memory (asynchronous
//! write-protection, Linux 6.7+).
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

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xaa << 8) | nr
}

/// Feature bits of `struct uffdio_api` (include/uapi/linux/userfaultfd.h).
pub mod feature {
    pub const EVENT_REMAP: u64 = 1 << 2;
    pub const EVENT_REMOVE: u64 = 1 << 3;
    pub const EVENT_UNMAP: u64 = 1 << 6;
    pub const WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    pub const WP_ASYNC: u64 = 1 << 15;
}

/// `UFFDIO_REGISTER_MODE_WP`.
const REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFD_USER_MODE_ONLY`, a flag of userfaultfd(2) itself.
pub const USER_MODE_ONLY: u64 = 1;

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
            for m in &msgs[..count] {
                let [a, b, c] = m.arg;
                match m.event {
                    EVENT_REMAP => out.push(Event::Remap {
                        from: a,
                        to: b,
                        len: c,
                    }),
                    EVENT_REMOVE => out.push(Event::Remove { start: a, end: b }),
                    EVENT_UNMAP => out.push(Event::Unmap { start: a, end: b }),
                    _ => {}
                }
            }
            if count < msgs.len() {
                return Ok(());
            }
        }
    }
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
