//! A watchdog process: if crest dies while it serves a lazy restore, the
//! tree it serves must not run on with missing pages (closing the last
//! userfaultfd of an address space makes its missing pages read as zero).
//!
//! The watchdog is a forked child of crest that holds a copy of each
//! userfaultfd (so they outlive crest: a faulting task waits instead of
//! reading a zero page) and a pidfd of each process.  It waits on a pipe
//! whose only write end crest holds.  crest dismisses it with one byte;
//! if the pipe ends without that byte, crest died: the watchdog kills
//! every process by its pidfd, waits for them to exit, and exits.
//!
//! Processes forked during the lazy phase are handed over while it runs
//! ([`Watchdog::adopt`]): the userfaultfd of each new address space as
//! soon as crest reads the fork, and a pidfd of the new process once it
//! is found, through a socket only the two share.  The watchdog holds and
//! kills those too (a descriptor that is no pidfd just fails the kill).

use crate::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A running watchdog.
#[derive(Debug)]
pub struct Watchdog {
    pid: libc::pid_t,
    pipe: Option<OwnedFd>,
    /// crest's end of the socket descriptors are handed over on.
    sock: OwnedFd,
}

/// Descriptors the watchdog can hold from [`Watchdog::adopt`].
const ADOPT_MAX: usize = 8192;
/// Descriptors per handover message.
const PER_MSG: usize = 16;

impl Watchdog {
    /// Forks the watchdog, which keeps `hold` open and kills the
    /// processes of `pidfds` if crest dies.  Every other descriptor is
    /// closed in it.
    pub fn spawn(hold: &[RawFd], pidfds: &[RawFd]) -> Result<Watchdog> {
        let mut p = [0i32; 2];
        // SAFETY: pipe2 writes two descriptors into `p`.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(Error::last_os("creating the watchdog's pipe"));
        }
        // SAFETY: both are new descriptors nobody else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let mut sp = [0i32; 2];
        let ty = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC;
        // SAFETY: socketpair writes two descriptors into `sp`.
        if unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, sp.as_mut_ptr()) } < 0 {
            return Err(Error::last_os("creating the watchdog's socket"));
        }
        // SAFETY: both are new descriptors nobody else owns.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sp[0]), OwnedFd::from_raw_fd(sp[1])) };
        let mut keep: Vec<RawFd> = hold.iter().chain(pidfds).copied().collect();
        keep.push(r.as_raw_fd());
        keep.push(theirs.as_raw_fd());
        keep.sort_unstable();
        // SAFETY: the child runs only async-signal-safe raw syscalls on
        // memory prepared before the fork (`keep`, `pidfds`), then exits
        // with _exit: nothing of crest's state is used in it.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::last_os("forking the lazy restore's watchdog"));
        }
        if pid == 0 {
            // SAFETY: see above; the child never returns.
            unsafe { watch(&keep, r.as_raw_fd(), theirs.as_raw_fd(), pidfds) }
        }
        drop(r);
        drop(theirs);
        Ok(Watchdog {
            pid,
            pipe: Some(w),
            sock: ours,
        })
    }

    /// Hands `fds` (userfaultfds, pidfds) over: the watchdog holds copies
    /// and, if crest dies, kills the processes of the pidfds among them.
    pub fn adopt(&self, fds: &[RawFd]) -> Result<()> {
        for part in fds.chunks(PER_MSG) {
            let mut cbuf = [0u64; 16];
            let bytes = std::mem::size_of_val(part);
            // SAFETY: CMSG_SPACE is arithmetic.
            let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
            let mut one = [0u8; 1];
            let mut iov = libc::iovec {
                iov_base: one.as_mut_ptr().cast(),
                iov_len: 1,
            };
            // SAFETY: a zeroed msghdr is valid; its pointers are set below
            // to locals that outlive the sendmsg.
            let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
            m.msg_iov = &mut iov;
            m.msg_iovlen = 1;
            m.msg_control = cbuf.as_mut_ptr().cast();
            m.msg_controllen = space;
            // SAFETY: the control buffer (128 bytes) holds one header and
            // up to PER_MSG descriptors; CMSG_FIRSTHDR points into it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&m);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
                std::ptr::copy_nonoverlapping(
                    part.as_ptr(),
                    libc::CMSG_DATA(c).cast::<RawFd>(),
                    part.len(),
                );
            }
            // SAFETY: `m` is a complete msghdr over live buffers.
            if unsafe { libc::sendmsg(self.sock.as_raw_fd(), &m, libc::MSG_NOSIGNAL) } < 0 {
                return Err(Error::last_os("handing descriptors to the lazy watchdog"));
            }
        }
        Ok(())
    }

    /// crest is done: the watchdog exits without touching anything.
    pub fn dismiss(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(w) = self.pipe.take() {
            // SAFETY: writes one byte from a local into our pipe.
            unsafe { libc::write(w.as_raw_fd(), b"d".as_ptr().cast(), 1) };
            drop(w);
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WALL) };
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The watchdog's life (in the forked child).
///
/// # Safety
/// Only in the child of a fork; uses raw syscalls only.
unsafe fn watch(keep: &[RawFd], pipe: RawFd, sock: RawFd, pidfds: &[RawFd]) -> ! {
    // Every descriptor but those kept goes: the watchdog must not keep
    // crest's connections or files open.
    let mut from = 0u32;
    for &k in keep {
        if k as u32 > from {
            libc::syscall(libc::SYS_close_range, from, k as u32 - 1, 0);
        }
        from = k as u32 + 1;
    }
    libc::syscall(libc::SYS_close_range, from, u32::MAX, 0);
    let mut adopted = [-1 as RawFd; ADOPT_MAX];
    let mut na = 0usize;
    let mut b = 0u8;
    let n = loop {
        let mut pf = [
            libc::pollfd {
                fd: pipe,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if libc::poll(pf.as_mut_ptr(), 2, -1) < 0 {
            continue;
        }
        if pf[1].revents & libc::POLLIN != 0 {
            na += receive(sock, &mut adopted[na..]);
        }
        if pf[0].revents == 0 {
            continue;
        }
        let n = libc::read(pipe, (&mut b as *mut u8).cast(), 1);
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        break n;
    };
    if n != 1 {
        // crest is gone before the lazy phase ended: what it handed over
        // last may still wait in the socket.
        loop {
            let mut pf = libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pf, 1, 0) <= 0 || pf.revents & libc::POLLIN == 0 {
                break;
            }
            let got = receive(sock, &mut adopted[na..]);
            if got == 0 {
                break;
            }
            na += got;
        }
        for &p in pidfds.iter().chain(&adopted[..na]) {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                p,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
        for &p in pidfds.iter().chain(&adopted[..na]) {
            let mut pf = libc::pollfd {
                fd: p,
                events: libc::POLLIN,
                revents: 0,
            };
            libc::poll(&mut pf, 1, 5000);
        }
    }
    libc::_exit(0)
}

/// Receives one handover message into `room`; the number of descriptors.
///
/// # Safety
/// In the watchdog child: raw syscalls on stack buffers only.
unsafe fn receive(sock: RawFd, room: &mut [RawFd]) -> usize {
    let mut cbuf = [0u64; 16];
    let mut one = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: one.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut m: libc::msghdr = std::mem::zeroed();
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf.as_mut_ptr().cast();
    m.msg_controllen = std::mem::size_of_val(&cbuf);
    if libc::recvmsg(sock, &mut m, libc::MSG_CMSG_CLOEXEC) <= 0 {
        return 0;
    }
    let mut got = 0;
    let mut c = libc::CMSG_FIRSTHDR(&m);
    while !c.is_null() {
        if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            let n = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
            for i in 0..n {
                let fd = std::ptr::read_unaligned(data.add(i));
                if got < room.len() {
                    room[got] = fd;
                    got += 1;
                } else {
                    // Beyond ADOPT_MAX: not held (and not killed).
                    libc::close(fd);
                }
            }
        }
        c = libc::CMSG_NXTHDR(&m, c);
    }
    got
}
