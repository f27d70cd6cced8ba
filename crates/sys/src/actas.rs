//! A few socket calls made as another process: the kernel records the
//! caller's PID and effective ids in what they create (SO_PEERCRED of a
//! socketpair, a listener or a connection; the pid of SCM_CREDENTIALS
//! must be a live process).  The call runs in a short-lived child made
//! with the chosen PID (clone3 set_tid) that shares crest's descriptor
//! table, takes the effective ids, makes the call and exits.

use crate::process::{clone_with_pid, Forked};
use crate::{Error, Result};
use std::os::fd::RawFd;

/// One call, all its memory prepared by the caller (the child may not
/// allocate).
pub enum Op<'a> {
    /// listen(fd, backlog)
    Listen { fd: RawFd, backlog: i32 },
    /// connect(fd, addr)
    Connect {
        fd: RawFd,
        addr: &'a libc::sockaddr_un,
        len: libc::socklen_t,
    },
    /// socketpair(AF_UNIX, ty), the two ends put at `into` (descriptor
    /// numbers the caller holds: their files are replaced).
    SocketPair { ty: i32, into: [RawFd; 2] },
    /// sendmsg(fd, msg) until every byte of its one iovec is sent (the
    /// control data goes with the first call only).
    SendAll { fd: RawFd, msg: &'a libc::msghdr },
}

fn child(euid: u32, egid: u32, op: &Op) -> i32 {
    let err = || std::io::Error::last_os_error().raw_os_error().unwrap_or(1);
    // SAFETY: raw syscalls on memory prepared by the parent and copied
    // into this child (all pointers valid for the call); nothing allocates.
    unsafe {
        if libc::syscall(libc::SYS_setresgid, -1i32, egid, -1i32) != 0
            || libc::syscall(libc::SYS_setresuid, -1i32, euid, -1i32) != 0
        {
            return err();
        }
        match op {
            Op::Listen { fd, backlog } => {
                if libc::listen(*fd, *backlog) != 0 {
                    return err();
                }
            }
            Op::Connect { fd, addr, len } => {
                let a = (*addr as *const libc::sockaddr_un).cast();
                if libc::connect(*fd, a, *len) != 0 {
                    return err();
                }
            }
            Op::SocketPair { ty, into } => {
                let mut p = [0i32; 2];
                if libc::socketpair(libc::AF_UNIX, *ty | libc::SOCK_CLOEXEC, 0, p.as_mut_ptr()) != 0
                {
                    return err();
                }
                for k in 0..2 {
                    if libc::dup3(p[k], into[k], libc::O_CLOEXEC) < 0 {
                        return err();
                    }
                    libc::close(p[k]);
                }
            }
            Op::SendAll { fd, msg } => {
                let mut m: libc::msghdr = **msg;
                let mut iov = if m.msg_iovlen > 0 {
                    *m.msg_iov
                } else {
                    libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }
                };
                m.msg_iov = &mut iov;
                loop {
                    let n = libc::sendmsg(*fd, &m, libc::MSG_NOSIGNAL);
                    if n < 0 {
                        return err();
                    }
                    let n = n as usize;
                    if n >= iov.iov_len {
                        break;
                    }
                    iov.iov_base = iov.iov_base.cast::<u8>().add(n).cast();
                    iov.iov_len -= n;
                    m.msg_control = std::ptr::null_mut();
                    m.msg_controllen = 0;
                }
            }
        }
    }
    0
}

/// Makes call `op` as a process with PID `pid` (in crest's PID
/// namespace, which must have it free) and effective ids `euid`/`egid`.
pub fn run_as(pid: i32, euid: u32, egid: u32, op: &Op) -> Result<()> {
    // SAFETY: the child only runs `child` (raw syscalls, no allocation)
    // and exits; CLONE_FILES shares the descriptor table, not memory.
    match unsafe { clone_with_pid(pid, libc::CLONE_FILES as u64)? } {
        Forked::Child => {
            let code = child(euid, egid, op);
            // SAFETY: ends the child at once, without running destructors.
            unsafe { libc::_exit(code) }
        }
        Forked::Parent(c) => {
            let mut status = 0;
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(c, &mut status, libc::__WALL) };
            if r != c {
                return Err(Error::last_os(format!(
                    "waiting for the helper with PID {pid}"
                )));
            }
            match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
                (true, 0) => Ok(()),
                (true, e) => Err(Error::io(
                    format!("a socket call made as PID {pid} (uid {euid}, gid {egid})"),
                    std::io::Error::from_raw_os_error(e),
                )),
                _ => Err(Error::io(
                    format!("the helper with PID {pid} ended with status {status:#x}"),
                    std::io::Error::from_raw_os_error(libc::ECHILD),
                )),
            }
        }
    }
}
