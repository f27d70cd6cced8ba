//! A few socket calls made as another process: the kernel records the
//! caller's PID and effective ids in what they create (SO_PEERCRED of a
//! socketpair, a listener or a connection; the pid of SCM_CREDENTIALS
//! must be a live process).  The call runs in a short-lived child made
//! with the chosen PID (clone3 set_tid) that shares crest's descriptor
//! table, takes the effective ids, makes the call and exits.

use crate::process::Forked;
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
    // SAFETY: plain id changes of this process.
    unsafe {
        if libc::syscall(libc::SYS_setresgid, -1i32, egid, -1i32) != 0
            || libc::syscall(libc::SYS_setresuid, -1i32, euid, -1i32) != 0
        {
            return err();
        }
    }
    call(op)
}

/// Makes call `op` as this process is (ids unchanged); 0 or an errno.
/// Allocation-free.
pub(crate) fn call(op: &Op) -> i32 {
    let err = || std::io::Error::last_os_error().raw_os_error().unwrap_or(1);
    // SAFETY: raw syscalls on memory prepared by the caller (all pointers
    // valid for the call); nothing allocates.
    unsafe {
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
    run_as_tids(&[pid], euid, egid, op)
}

/// Makes call `op` as a process with PIDs `tids` (innermost first, as
/// clone3's set_tid: `tids[0]` in the PID namespace crest creates its
/// children in, `tids[1]` in the one above, …; each must be free) and
/// effective ids `euid`/`egid`.
pub fn run_as_tids(tids: &[i32], euid: u32, egid: u32, op: &Op) -> Result<()> {
    let pid = tids.first().copied().unwrap_or(0);
    // SAFETY: the child only runs `child` (raw syscalls, no allocation)
    // and exits; CLONE_FILES shares the descriptor table, not memory.
    match unsafe { crate::process::clone_with_tids(tids, libc::CLONE_FILES as u64)? } {
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

/// The PID in SO_PEERCRED of socket `fd` as the PID namespace of process
/// `holder` sees it (the kernel answers in the caller's namespace): read
/// by a short-lived child forked in that namespace, sharing the
/// descriptor table.  0: the peer has no PID there.
pub fn peer_pid_in(holder: i32, fd: RawFd) -> Result<i32> {
    let own = crate::ns::open(std::process::id() as i32, "pid")?;
    let ns = crate::ns::open(holder, "pid")?;
    crate::ns::setns(&ns, libc::CLONE_NEWPID)?;
    let got = read_in_child(fd);
    crate::ns::setns(&own, libc::CLONE_NEWPID)?;
    got
}

fn read_in_child(fd: RawFd) -> Result<i32> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::last_os("pipe2"));
    }
    // SAFETY: fresh descriptors nobody else owns.
    let (rd, wr) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(p[0]),
            std::os::fd::OwnedFd::from_raw_fd(p[1]),
        )
    };
    use std::os::fd::AsRawFd;
    let w = wr.as_raw_fd();
    // SAFETY: the child makes two raw syscalls on integers and a local,
    // then exits; CLONE_FILES shares the descriptor table, not memory.
    match unsafe { crate::process::clone_with_tids(&[], libc::CLONE_FILES as u64)? } {
        Forked::Child => {
            let mut c = libc::ucred {
                pid: 0,
                uid: 0,
                gid: 0,
            };
            let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
            // SAFETY: getsockopt fills one ucred; write sends its pid.
            let code = unsafe {
                if libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_PEERCRED,
                    (&mut c as *mut libc::ucred).cast(),
                    &mut len,
                ) != 0
                    || libc::write(w, (&c.pid as *const i32).cast(), 4) != 4
                {
                    1
                } else {
                    0
                }
            };
            // SAFETY: ends the child at once, without running destructors.
            unsafe { libc::_exit(code) }
        }
        Forked::Parent(c) => {
            let mut status = 0;
            // SAFETY: waits for our own child.
            if unsafe { libc::waitpid(c, &mut status, libc::__WALL) } != c {
                return Err(Error::last_os("waiting for the SO_PEERCRED reader"));
            }
            drop(wr);
            let mut pid = 0i32;
            // SAFETY: reads one i32 into a local.
            let n = unsafe { libc::read(rd.as_raw_fd(), (&mut pid as *mut i32).cast(), 4) };
            if n != 4 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                return Err(Error::io(
                    "reading SO_PEERCRED in the socket holder's PID namespace",
                    std::io::Error::from_raw_os_error(libc::EIO),
                ));
            }
            Ok(pid)
        }
    }
}
