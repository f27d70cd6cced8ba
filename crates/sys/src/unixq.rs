//! Where the kernel's buffers (skbs) of an AF_UNIX stream queue begin.
//!
//! A stream socket's receive queue is a list of buffers, one or more per
//! write (a write is never merged into an earlier buffer), and the files
//! in flight with a write (SCM_RIGHTS) ride on its first buffer.  A read
//! gets them with the first byte it takes from that buffer and stops at
//! its end, so restoring them exactly needs where that buffer starts.
//! MSG_PEEK does not say: a peek walks on past the bytes it was asked for
//! to the next buffer carrying files and returns those files too.
//!
//! What does say is a peek into memory that ends in a page the kernel
//! cannot write: it copies buffer by buffer, and when the copy of one
//! faults it returns the bytes of the buffers copied whole before it (or
//! EFAULT when none was).  So a peek whose writable room is `limit` bytes
//! returns the last buffer boundary at or before `limit`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A page no access is allowed to, unmapped when dropped.
struct Guard {
    addr: *mut libc::c_void,
    len: usize,
}

impl Guard {
    fn new() -> io::Result<Guard> {
        // SAFETY: plain sysconf query.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let len = if page > 0 { page as usize } else { 4096 };
        // SAFETY: a fresh anonymous mapping the kernel places; nothing
        // else refers to it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Guard { addr, len })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`, used by no one now.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// What [`peek_whole_buffers`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole {
    /// Bytes of the buffers copied whole, from the peek offset.
    pub bytes: usize,
    /// The peek reached a buffer with files in flight and copied it
    /// whole (the copies it installed are closed).
    pub rights: bool,
}

/// Peeks at stream socket `fd` from its peek offset (SO_PEEK_OFF, which
/// moves on by the bytes returned) with `room` as the only writable
/// memory: the bytes of the queue's buffers that fit in it whole.
/// Nothing is consumed; descriptors the peek installs are closed.
pub fn peek_whole_buffers(fd: RawFd, room: &mut [u8]) -> io::Result<Whole> {
    let guard = Guard::new()?;
    let mut iov = [
        libc::iovec {
            iov_base: room.as_mut_ptr().cast(),
            iov_len: room.len(),
        },
        libc::iovec {
            iov_base: guard.addr,
            iov_len: guard.len,
        },
    ];
    let mut cbuf = [0u64; 256];
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: the first iovec is `room`, writable for its length; the
    // second is the guard page, which the kernel's copy faults on (it
    // checks every user access) — that fault is the point.  The control
    // buffer is live for its stated size.
    let n = unsafe {
        libc::recvmsg(
            fd,
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EFAULT) {
            return Ok(Whole {
                bytes: 0,
                rights: false,
            });
        }
        return Err(e);
    }
    let mut rights = false;
    // SAFETY: walking the control messages the kernel wrote into `cbuf`
    // with the libc macros, within msg_controllen; every descriptor in
    // SCM_RIGHTS / SCM_PIDFD was just installed for us and is owned here.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET
                && ((*c).cmsg_type == libc::SCM_RIGHTS || (*c).cmsg_type == SCM_PIDFD)
            {
                let dlen = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<i32>();
                for i in 0..dlen / 4 {
                    drop(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
                rights |= (*c).cmsg_type == libc::SCM_RIGHTS;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Whole {
        bytes: n as usize,
        rights,
    })
}

const SCM_PIDFD: i32 = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn send_with_fd(s: &UnixStream, data: &[u8], fd: RawFd) {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut cbuf = [0u64; 8];
        // SAFETY: test: msghdr zeroed, then pointed at live buffers.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
            assert_eq!(libc::sendmsg(s.as_raw_fd(), &msg, 0), data.len() as isize);
        }
    }

    fn set_off(s: &UnixStream, off: i32) {
        // SAFETY: test: setsockopt reads one int.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEEK_OFF,
                (&off as *const i32).cast(),
                4,
            )
        };
        assert_eq!(r, 0);
    }

    #[test]
    fn finds_the_start_of_the_buffer_with_rights() {
        use std::io::Write;
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"aaaa").unwrap();
        a.write_all(b"cc").unwrap();
        send_with_fd(&a, b"bbbb", 0);
        a.write_all(b"dddd").unwrap();
        let mut room = vec![0u8; 64];
        let at = |off: i32, m: usize, room: &mut Vec<u8>| {
            set_off(&b, off);
            peek_whole_buffers(b.as_raw_fd(), &mut room[..m]).unwrap()
        };
        let w = |bytes, rights| Whole { bytes, rights };
        // Boundaries at 4, 6 and 10 (end of the one with rights).
        assert_eq!(at(0, 3, &mut room), w(0, false));
        assert_eq!(at(0, 5, &mut room), w(4, false));
        assert_eq!(at(0, 9, &mut room), w(6, false));
        assert_eq!(at(0, 10, &mut room), w(10, true));
        assert_eq!(at(6, 3, &mut room), w(0, false));
        assert_eq!(at(2, 7, &mut room), w(4, false));
        // A buffer's rest counts from inside it; the peek stops after
        // the buffer with rights.
        assert_eq!(at(1, 64, &mut room), w(9, true));
        assert_eq!(&room[..9], b"aaaccbbbb");
    }
}
