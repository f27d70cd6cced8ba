//! Locks named in the abstract UNIX socket namespace: held by a listening
//! socket bound to the name, released by the kernel whenever the holder
//! closes it or dies (also by SIGKILL), and the holder's pid can be asked
//! for (SO_PEERCRED of a connection to it).

use crate::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn socket() -> Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::last_os("socket(AF_UNIX)"));
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(name: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let n = name.len().min(a.sun_path.len() - 1);
    for (d, s) in a.sun_path[1..=n].iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + n;
    (a, len as libc::socklen_t)
}

/// Takes the lock `name`: the socket that holds it, or `Err(holder)` with
/// the holder's pid (None if it could not be found) when it is held.
pub fn take(name: &str) -> Result<std::result::Result<OwnedFd, Option<i32>>> {
    let (a, len) = address(name);
    let s = socket()?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::bind(s.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    if r == 0 {
        // SAFETY: plain syscall on our socket.
        if unsafe { libc::listen(s.as_raw_fd(), 16) } < 0 {
            return Err(Error::last_os(format!("listen on lock {name}")));
        }
        return Ok(Ok(s));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EADDRINUSE) {
        return Err(Error::io(format!("taking lock {name}"), err));
    }
    Ok(Err(holder(name)))
}

/// The pid of the process holding lock `name`.
fn holder(name: &str) -> Option<i32> {
    let (a, len) = address(name);
    let c = socket().ok()?;
    // SAFETY: `a` is a valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::connect(c.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    if r < 0 {
        return None;
    }
    let pid = crate::net::peer_cred(c.as_raw_fd()).ok()?.0;
    (pid > 0).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_learns_the_holder() {
        let name = format!("crest-test-lock-{}", std::process::id());
        let held = take(&name).unwrap().expect("free");
        assert_eq!(
            take(&name).unwrap().err(),
            Some(Some(std::process::id() as i32))
        );
        drop(held);
        assert!(take(&name).unwrap().is_ok());
    }
}
