//! Small socket operations of the restore, each with its error context.

use super::*;
use crate::error::Error;
use rustix::net::{AddressFamily, Shutdown, SocketAddrUnix, SocketFlags, SocketType};

/// The flags of every socket the restore makes (the final ones are set
/// with the descriptor's own flags later).
const FLAGS: SocketFlags = SocketFlags::CLOEXEC.union(SocketFlags::NONBLOCK);

/// An error of a socket call, with what crest was doing.
fn os(e: rustix::io::Errno, what: impl FnOnce() -> String) -> Error {
    crest_sys::Error::io(what(), e.into()).into()
}

/// The address of UNIX name `name` (abstract after a NUL byte, else a
/// filesystem path, which ends at its first NUL as the kernel reads it).
fn unix_addr(name: &[u8]) -> Result<SocketAddrUnix> {
    let r = match name.first() {
        Some(0) => SocketAddrUnix::new_abstract_name(&name[1..]),
        _ => SocketAddrUnix::new(&norm_name(name)[..]),
    };
    r.map_err(|_| {
        Error::Invalid(format!(
            "AF_UNIX name {} ({} bytes) is not a valid address",
            show(name),
            name.len()
        ))
    })
}

pub(super) fn check(r: libc::c_long, what: impl FnOnce() -> String) -> Result<libc::c_long> {
    if r < 0 {
        Err(crest_sys::Error::last_os(what()).into())
    } else {
        Ok(r)
    }
}

pub(super) fn valid_type(t: i32) -> Result<()> {
    if [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&t) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "AF_UNIX socket of unknown type {t}"
        )))
    }
}

pub(super) fn new_socket(t: i32) -> Result<OwnedFd> {
    valid_type(t)?;
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::from_raw(t as u32),
        FLAGS,
        None,
    )
    .map_err(|e| os(e, || "socket(AF_UNIX)".into()))
}

pub(super) fn socketpair(t: i32) -> Result<(OwnedFd, OwnedFd)> {
    valid_type(t)?;
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::from_raw(t as u32),
        FLAGS,
        None,
    )
    .map_err(|e| os(e, || "socketpair(AF_UNIX)".into()))
}

/// A sockaddr_un for `name` and its length.
pub(crate) fn sockaddr_un(name: &[u8]) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.len() >= a.sun_path.len() {
        return Err(Error::Invalid(format!(
            "AF_UNIX name of {} bytes is too long",
            name.len()
        )));
    }
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let extra = if name.first().is_some_and(|&b| b != 0) {
        1
    } else {
        0
    };
    Ok((a, (2 + name.len() + extra) as libc::socklen_t))
}

pub(super) fn show(name: &[u8]) -> String {
    match name.first() {
        Some(0) => format!("@{}", String::from_utf8_lossy(&name[1..])),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

pub(super) fn bind(fd: &OwnedFd, name: &[u8]) -> Result<()> {
    rustix::net::bind(fd, &unix_addr(name)?)
        .map_err(|e| os(e, || format!("binding a UNIX socket to {}", show(name))))
}

/// Binds `fd` to the relative name `name` as a program whose cwd is `dir`
/// did: from a thread with a working directory of its own (unshared from
/// crest's), so the socket keeps its name as given.
pub(super) fn bind_in(fd: &OwnedFd, name: &[u8], dir: &str) -> Result<()> {
    std::thread::scope(|sc| {
        sc.spawn(|| -> Result<()> {
            // SAFETY: plain syscall; it affects this thread only.
            let r = unsafe { libc::unshare(libc::CLONE_FS) };
            check(r as libc::c_long, || "unshare(CLONE_FS)".into())?;
            std::env::set_current_dir(dir).map_err(|e| {
                Error::msg(format!(
                    "binding a UNIX socket to {} in {dir}: {e}",
                    show(name)
                ))
            })?;
            bind(fd, name)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::msg("the binding thread panicked".to_string())))
    })
}

pub(super) fn connect(fd: &OwnedFd, name: &[u8]) -> Result<()> {
    rustix::net::connect(fd, &unix_addr(name)?)
        .map_err(|e| os(e, || format!("connecting a UNIX socket to {}", show(name))))
}

pub(super) fn accept(fd: &OwnedFd, name: &[u8]) -> Result<OwnedFd> {
    rustix::net::accept_with(fd, FLAGS)
        .map_err(|e| os(e, || format!("accepting a connection on {}", show(name))))
}

pub(super) fn listen(fd: &OwnedFd, backlog: u32, name: &[u8]) -> Result<()> {
    rustix::net::listen(fd, backlog.min(i32::MAX as u32) as i32)
        .map_err(|e| os(e, || format!("listening on {}", show(name))))
}

pub(super) fn shutdown(fd: &OwnedFd, mask: u8) -> Result<()> {
    let how = match mask & 3 {
        0 => return Ok(()),
        1 => Shutdown::Read,
        2 => Shutdown::Write,
        _ => Shutdown::Both,
    };
    rustix::net::shutdown(fd, how).map_err(|e| os(e, || "shutting a UNIX socket down".into()))
}

pub(super) fn set_int(fd: &OwnedFd, name: i32, v: i32, what: &str) -> Result<()> {
    setsockopt_raw(fd.as_raw_fd(), libc::SOL_SOCKET, name, &v)
        .map_err(|e| crest_sys::Error::io(format!("setting {what} to {v}"), e).into())
}

pub(super) fn set_timeout(fd: &OwnedFd, name: i32, us: u64, what: &str) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_usec: (us % 1_000_000) as libc::suseconds_t,
    };
    setsockopt_raw(fd.as_raw_fd(), libc::SOL_SOCKET, name, &tv)
        .map_err(|e| crest_sys::Error::io(format!("setting {what} to {us} µs"), e).into())
}

/// The placeholder for socket `u`'s open file description: a socket of
/// its type, replaced by the real one in [`restore`].
pub fn open(u: &UnixSocket) -> Result<OwnedFd> {
    new_socket(u.sock_type)
}
