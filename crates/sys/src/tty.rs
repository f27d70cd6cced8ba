//! Terminal ioctls on a descriptor: termios2, window size, the real
//! device behind an alias (TIOCGDEV), input not read yet.

use crate::{Error, Result};
use std::os::fd::{AsRawFd, BorrowedFd};

/// TCGETS2.
pub fn get_termios2(fd: BorrowedFd<'_>) -> Result<libc::termios2> {
    // SAFETY: termios2 is plain integers and bytes: all zeros is valid.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS2 fills one termios2.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2, &mut t) } != 0 {
        return Err(Error::last_os("TCGETS2"));
    }
    Ok(t)
}

/// TCSETS2.
pub fn set_termios2(fd: BorrowedFd<'_>, t: &libc::termios2) -> Result<()> {
    // SAFETY: TCSETS2 reads one termios2.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS2, t) } != 0 {
        return Err(Error::last_os("TCSETS2"));
    }
    Ok(())
}

/// TIOCGWINSZ: [rows, cols, xpixel, ypixel].
pub fn get_winsize(fd: BorrowedFd<'_>) -> Result<[u16; 4]> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills one winsize.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) } != 0 {
        return Err(Error::last_os("TIOCGWINSZ"));
    }
    Ok([w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel])
}

/// TIOCSWINSZ.
pub fn set_winsize(fd: BorrowedFd<'_>, ws: [u16; 4]) -> Result<()> {
    let w = libc::winsize {
        ws_row: ws[0],
        ws_col: ws[1],
        ws_xpixel: ws[2],
        ws_ypixel: ws[3],
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &w) } != 0 {
        return Err(Error::last_os("TIOCSWINSZ"));
    }
    Ok(())
}

/// TIOCGDEV: the device number (st_rdev encoding) of the terminal behind
/// the descriptor (for /dev/console, the one the console is on).
pub fn real_device(fd: BorrowedFd<'_>) -> Result<u64> {
    let mut d: libc::c_uint = 0;
    // SAFETY: TIOCGDEV writes one unsigned int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGDEV, &mut d) } != 0 {
        return Err(Error::last_os("TIOCGDEV"));
    }
    // The kernel's new_encode_dev: minor low byte, major, minor high bits.
    let (major, minor) = ((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00));
    Ok(libc::makedev(major, minor))
}

/// FIONREAD: bytes of input not read yet.
pub fn input_queued(fd: BorrowedFd<'_>) -> Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(Error::last_os("FIONREAD"));
    }
    Ok(n.max(0) as usize)
}

/// TIOCGPTPEER: a new non-blocking, close-on-exec description of the
/// slave side of pty master `master`'s pair (not made a controlling
/// terminal).
pub fn open_peer(master: BorrowedFd<'_>) -> Result<std::os::fd::OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags by value and returns a new
    // descriptor.
    let s = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if s < 0 {
        return Err(Error::last_os("opening the slave side (TIOCGPTPEER)"));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) })
}

/// Opens /dev/tty on the slave of pty master `master`, as a process whose
/// controlling terminal that slave is: the kernel gives /dev/tty the
/// opener's controlling terminal, fixed at the open.  The open is made by
/// a short-lived child sharing the caller's descriptor table: it starts a
/// session, makes the slave its controlling terminal, opens /dev/tty with
/// `flags` (plus O_NOCTTY and O_CLOEXEC) and exits; its session ends with
/// it and leaves the terminal without one (for a pty the kernel then only
/// signals the exiting child's own group: no hangup).  The terminal must
/// not be another session's controlling terminal, and its pair unlocked.
pub fn open_alias(master: BorrowedFd<'_>, flags: i32) -> Result<std::os::fd::OwnedFd> {
    use crate::process::{clone_with_tids, Forked};
    use std::os::fd::{FromRawFd, OwnedFd};
    // The slot the child puts the description at (a descriptor of ours).
    // SAFETY: a valid NUL-terminated path.
    let slot = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if slot < 0 {
        return Err(Error::last_os("opening /dev/null"));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let slot = unsafe { OwnedFd::from_raw_fd(slot) };
    let (m, s) = (master.as_raw_fd(), slot.as_raw_fd());
    // SAFETY: the child makes only raw syscalls on integers and a static
    // path, then exits; CLONE_FILES shares the descriptor table, not memory.
    match unsafe { clone_with_tids(&[], libc::CLONE_FILES as u64)? } {
        Forked::Child => {
            let code = alias_child(m, s, flags);
            // SAFETY: ends the child at once, without running destructors.
            unsafe { libc::_exit(code) }
        }
        Forked::Parent(c) => {
            let mut status = 0;
            // SAFETY: waits for our own child.
            if unsafe { libc::waitpid(c, &mut status, libc::__WALL) } != c {
                return Err(Error::last_os("waiting for the /dev/tty helper"));
            }
            match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
                (true, 0) => Ok(slot),
                (true, e) => Err(Error::io(
                    "opening /dev/tty as the session of the pty",
                    std::io::Error::from_raw_os_error(e),
                )),
                _ => Err(Error::io(
                    format!("the /dev/tty helper ended with status {status:#x}"),
                    std::io::Error::from_raw_os_error(libc::ECHILD),
                )),
            }
        }
    }
}

fn alias_child(master: i32, slot: i32, flags: i32) -> i32 {
    let err = || std::io::Error::last_os_error().raw_os_error().unwrap_or(1);
    // SAFETY: raw syscalls on descriptors of the shared table and a static
    // path; nothing allocates.
    unsafe {
        if libc::setsid() < 0 {
            return err();
        }
        let peer = libc::ioctl(
            master,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if peer < 0 {
            return err();
        }
        if libc::ioctl(peer, libc::TIOCSCTTY, 0) != 0 {
            return err();
        }
        let t = libc::open(
            c"/dev/tty".as_ptr(),
            (flags & libc::O_ACCMODE) | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if t < 0 {
            return err();
        }
        if libc::dup3(t, slot, libc::O_CLOEXEC) < 0 {
            return err();
        }
        libc::close(t);
        libc::close(peer);
    }
    0
}

/// The terminal ioctls that read one int.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// TIOCGPTN: the pty's number (a master).
    PtyNumber,
    /// TIOCGSID: the session whose controlling terminal it is.
    Session,
    /// TIOCGPGRP: the foreground process group.
    ForegroundGroup,
    /// TIOCGETD: the line discipline.
    LineDiscipline,
    /// FIONREAD: bytes of input not read yet.
    InputQueued,
    /// TIOCOUTQ: bytes of output not sent yet.
    OutputQueued,
    /// TIOCGPKT: packet mode (a master).
    PacketMode,
    /// TIOCGPTLCK: the pair is locked (a master).
    Locked,
    /// TIOCGEXCL: exclusive mode.
    Exclusive,
}

impl Query {
    fn request(self) -> (libc::Ioctl, &'static str) {
        match self {
            Query::PtyNumber => (libc::TIOCGPTN, "TIOCGPTN"),
            Query::Session => (libc::TIOCGSID, "TIOCGSID"),
            Query::ForegroundGroup => (libc::TIOCGPGRP, "TIOCGPGRP"),
            Query::LineDiscipline => (libc::TIOCGETD, "TIOCGETD"),
            Query::InputQueued => (libc::FIONREAD, "FIONREAD"),
            Query::OutputQueued => (libc::TIOCOUTQ, "TIOCOUTQ"),
            Query::PacketMode => (libc::TIOCGPKT, "TIOCGPKT"),
            Query::Locked => (libc::TIOCGPTLCK, "TIOCGPTLCK"),
            Query::Exclusive => (libc::TIOCGEXCL, "TIOCGEXCL"),
        }
    }
}

/// Reads the int that `q` asks the terminal for.
pub fn query(fd: BorrowedFd<'_>, q: Query) -> Result<i32> {
    let (req, name) = q.request();
    let mut v: libc::c_int = 0;
    // SAFETY: every request of `Query` writes one int through the pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) } != 0 {
        return Err(Error::last_os(name));
    }
    Ok(v)
}

/// The terminal ioctls that take one int (or nothing) and set a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// TIOCSPTLCK: lock or unlock the pair (a master).
    Locked(bool),
    /// TIOCPKT: packet mode on or off (a master).
    PacketMode(bool),
    /// TIOCEXCL: exclusive mode on (it is turned off by TIOCNXCL).
    Exclusive,
}

/// Sets `s` on the terminal.
pub fn set(fd: BorrowedFd<'_>, s: Setting) -> Result<()> {
    // SAFETY: TIOCSPTLCK and TIOCPKT read one int; TIOCEXCL takes no
    // argument.
    let r = unsafe {
        match s {
            Setting::Locked(on) => {
                libc::ioctl(fd.as_raw_fd(), libc::TIOCSPTLCK, &libc::c_int::from(on))
            }
            Setting::PacketMode(on) => {
                libc::ioctl(fd.as_raw_fd(), libc::TIOCPKT, &libc::c_int::from(on))
            }
            Setting::Exclusive => libc::ioctl(fd.as_raw_fd(), libc::TIOCEXCL),
        }
    };
    if r != 0 {
        return Err(Error::last_os(format!("{s:?}")));
    }
    Ok(())
}

/// TIOCGPTPEER with the caller's open flags (O_NOCTTY and O_CLOEXEC
/// added): a new description of the slave of master `master`'s pair.
pub fn open_slave(master: BorrowedFd<'_>, flags: i32) -> Result<std::os::fd::OwnedFd> {
    let flags = flags | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags by value and returns a new
    // descriptor.
    let s = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if s < 0 {
        return Err(Error::last_os("opening the slave side (TIOCGPTPEER)"));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) })
}
