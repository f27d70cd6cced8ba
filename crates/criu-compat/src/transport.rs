//! The swrk socket: one protobuf message per SOCK_SEQPACKET packet.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// Largest request accepted.  Requests are small (options and a list of
/// mounts); a larger packet is refused whole, never read in part.
pub const MAX_PACKET: usize = 1 << 20;

/// Why a socket cannot serve.
pub fn check_socket(fd: BorrowedFd<'_>) -> Result<(), String> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`, a c_int.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(format!(
            "descriptor {} is not a socket: {}",
            fd.as_raw_fd(),
            io::Error::last_os_error()
        ));
    }
    if ty != libc::SOCK_SEQPACKET {
        return Err(format!(
            "descriptor {} is not a SOCK_SEQPACKET socket",
            fd.as_raw_fd()
        ));
    }
    Ok(())
}

/// The pid of the process at the other end (the runtime that created the
/// socket pair): descriptors named in requests (`images_dir_fd`,
/// `work_dir_fd`) are numbers in its table, not in ours.
pub fn peer_pid(fd: &OwnedFd) -> io::Result<i32> {
    let (pid, _, _) = crest_sys::net::peer_cred(fd.as_raw_fd())?;
    if pid <= 0 {
        return Err(io::Error::other("the socket's peer has no pid"));
    }
    Ok(pid)
}

/// What a receive brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    Data(Vec<u8>),
    /// The peer closed its end.
    Closed,
}

/// Receives one packet; a packet over [`MAX_PACKET`] is an error.
pub fn recv(fd: &OwnedFd) -> io::Result<Packet> {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf; MSG_TRUNC
        // makes it return the packet's real length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        if n == 0 {
            return Ok(Packet::Closed);
        }
        if n > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request of {n} bytes is larger than the {MAX_PACKET} accepted"),
            ));
        }
        buf.truncate(n);
        return Ok(Packet::Data(buf));
    }
}

/// Whether the runtime has closed its end (checked without waiting):
/// a result no one will read must not cost the tree its life.
pub fn peer_gone(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, without waiting.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
}

/// Sends one packet (no SIGPIPE if the peer is gone: an error instead).
pub fn send(fd: &OwnedFd, data: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: send reads data.len() bytes from data.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n as usize != data.len() {
            return Err(io::Error::other("short send on a SEQPACKET socket"));
        }
        return Ok(());
    }
}

/// A connected SOCK_SEQPACKET pair (for tests and for runtimes in Rust).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into fds.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors were just created and are owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
