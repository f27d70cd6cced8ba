//! AF_UNIX sockets as the kernel's sock_diag netlink interface shows them
//! (what `ss -x` reads): name, bound inode, peer, pending connections,
//! queue lengths and shutdown state, by socket inode.

use crate::{Error, Result};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UDIAG_SHOW_UID: u32 = 0x40;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const UNIX_DIAG_UID: u16 = 7;

/// `sk_state` of a listening socket.
pub const STATE_LISTEN: u8 = 10;
/// `sk_state` of a connected socket.
pub const STATE_ESTABLISHED: u8 = 1;
/// `sk_state` of an unconnected socket.
pub const STATE_CLOSE: u8 = 7;

/// One AF_UNIX socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: u8,
    /// `sk_state` (see the STATE_ constants).
    pub state: u8,
    /// The bound address as in `sun_path` (abstract names start with a
    /// NUL byte); empty when unbound.
    pub name: Vec<u8>,
    /// (inode, device as [`encode_dev`] gives it) of the socket file of a
    /// filesystem name.
    pub vfs: Option<(u32, u32)>,
    /// The peer's inode: `Some(0)` when the peer has been closed.
    pub peer: Option<u32>,
    /// Listening sockets: for each connection waiting to be accepted,
    /// oldest first, the inode of its client end (0 if closed) — the
    /// server ends have no inode yet.
    pub icons: Vec<u32>,
    /// Listening: (connections waiting, backlog).  Otherwise: (bytes in
    /// the receive queue — the first message's only for datagrams, bytes
    /// sent and not yet received).
    pub rqlen: Option<(u32, u32)>,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
    pub uid: Option<u32>,
}

/// A device number as sock_diag shows it (the kernel's internal dev_t:
/// major << 20 | minor).
pub fn encode_dev(dev: u64) -> u32 {
    (libc::major(dev) << 20) | (libc::minor(dev) & 0xf_ffff)
}

/// Sends one SOCK_DIAG_BY_FAMILY dump request whose body (the
/// family's `*_diag_req`, after the netlink header this adds) is `body`,
/// and hands each datagram of the answer to `datagram` until it returns
/// true (NLMSG_DONE seen).  `what` names the request in errors.  Shared by
/// every family crest lists (AF_UNIX here, AF_INET/AF_INET6 in
/// [`crate::inetdiag`]).
pub(crate) fn dump(
    body: &[u8],
    what: &str,
    mut datagram: impl FnMut(&[u8]) -> Result<bool>,
) -> Result<()> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(Error::last_os("socket(AF_NETLINK, NETLINK_SOCK_DIAG)"));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct nlmsghdr (16 bytes), then the request.
    let len = 16 + body.len();
    let mut req = vec![0u8; len];
    req[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16..].copy_from_slice(body);
    // SAFETY: send from a local buffer of the given length.
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n != req.len() as isize {
        return Err(Error::last_os(format!("sending a {what} request")));
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv into a buffer we own, of the given length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error::io(format!("reading the {what} answer"), e));
        }
        if n == 0 {
            return Err(Error::parse(what, "the answer ended early"));
        }
        if datagram(&buf[..n as usize])? {
            return Ok(());
        }
    }
}

/// Every AF_UNIX socket of crest's network namespace, by inode.
pub fn unix_sockets() -> Result<HashMap<u32, UnixDiag>> {
    // struct unix_diag_req (24 bytes).
    let mut req = [0u8; 24];
    req[0] = libc::AF_UNIX as u8;
    req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    let show = UDIAG_SHOW_NAME
        | UDIAG_SHOW_VFS
        | UDIAG_SHOW_PEER
        | UDIAG_SHOW_ICONS
        | UDIAG_SHOW_RQLEN
        | UDIAG_SHOW_UID;
    req[12..16].copy_from_slice(&show.to_ne_bytes());
    let mut out = HashMap::new();
    dump(&req, "sock_diag", |d| parse_messages(d, &mut out))?;
    Ok(out)
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one datagram of netlink messages; true once NLMSG_DONE is seen.
pub fn parse_messages(mut b: &[u8], out: &mut HashMap<u32, UnixDiag>) -> Result<bool> {
    let bad = |m: &str| Error::parse("sock_diag", m.to_string());
    while b.len() >= 16 {
        let len = u32_at(b, 0) as usize;
        let ty = u16_at(b, 4);
        if len < 16 || len > b.len() {
            return Err(bad("a message with a bad length"));
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = if len >= 20 {
                    -(u32_at(b, 16) as i32)
                } else {
                    0
                };
                if errno == 0 {
                    return Ok(true);
                }
                return Err(Error::io(
                    "sock_diag request for AF_UNIX sockets",
                    std::io::Error::from_raw_os_error(errno),
                ));
            }
            SOCK_DIAG_BY_FAMILY => {
                let d = parse_one(&b[16..len]).ok_or_else(|| bad("a malformed unix_diag_msg"))?;
                out.insert(d.ino, d);
            }
            _ => {}
        }
        let step = (len + 3) & !3;
        b = &b[step.min(b.len())..];
    }
    Ok(false)
}

/// Parses a `struct unix_diag_msg` and its attributes.
fn parse_one(b: &[u8]) -> Option<UnixDiag> {
    if b.len() < 16 {
        return None;
    }
    let mut d = UnixDiag {
        sock_type: b[1],
        state: b[2],
        ino: u32_at(b, 4),
        ..Default::default()
    };
    let mut a = &b[16..];
    while a.len() >= 4 {
        let len = u16_at(a, 0) as usize;
        let ty = u16_at(a, 2) & 0x3fff;
        if len < 4 || len > a.len() {
            return None;
        }
        let v = &a[4..len];
        match ty {
            UNIX_DIAG_NAME => d.name = v.to_vec(),
            UNIX_DIAG_VFS if v.len() >= 8 => d.vfs = Some((u32_at(v, 0), u32_at(v, 4))),
            UNIX_DIAG_PEER if v.len() >= 4 => d.peer = Some(u32_at(v, 0)),
            UNIX_DIAG_ICONS => d.icons = v.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
            UNIX_DIAG_RQLEN if v.len() >= 8 => d.rqlen = Some((u32_at(v, 0), u32_at(v, 4))),
            UNIX_DIAG_SHUTDOWN if !v.is_empty() => d.shutdown = v[0],
            UNIX_DIAG_UID if v.len() >= 4 => d.uid = Some(u32_at(v, 0)),
            _ => {}
        }
        let step = (len + 3) & !3;
        a = &a[step.min(a.len())..];
    }
    Some(d)
}

/// SIOCUNIXFILE: an O_PATH descriptor on the file an AF_UNIX socket is
/// bound to (needs CAP_NET_ADMIN over the socket's network namespace).
const SIOCUNIXFILE: libc::c_ulong = 0x89E0;

/// The file AF_UNIX socket `fd` is bound to, opened O_PATH.
pub fn unix_file(fd: std::os::fd::RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: the ioctl takes no argument and returns a new descriptor.
    let r = unsafe { libc::ioctl(fd, SIOCUNIXFILE as _, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn parses_a_message() {
        let mut body = vec![1u8, 1, 10, 0];
        body.extend_from_slice(&77u32.to_ne_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend(attr(UNIX_DIAG_NAME, b"/tmp/s"));
        body.extend(attr(UNIX_DIAG_ICONS, &[5, 0, 0, 0, 6, 0, 0, 0]));
        body.extend(attr(UNIX_DIAG_SHUTDOWN, &[3]));
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend(body);
        let mut done = vec![0u8; 20];
        done[0] = 20;
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend(done);
        let mut out = HashMap::new();
        assert!(parse_messages(&msg, &mut out).unwrap());
        let d = &out[&77];
        assert_eq!(d.name, b"/tmp/s");
        assert_eq!(d.icons, vec![5, 6]);
        assert_eq!((d.state, d.shutdown), (STATE_LISTEN, 3));
    }

    #[test]
    fn lists_a_socketpair() {
        let mut fds = [0i32; 2];
        // SAFETY: socketpair fills two descriptors into the array.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: fresh descriptors nobody else owns.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let ino = |f: &OwnedFd| {
            std::fs::metadata(format!("/proc/self/fd/{}", f.as_raw_fd()))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32)
                .unwrap()
        };
        let all = unix_sockets().unwrap();
        let (ia, ib) = (ino(&a), ino(&b));
        assert_eq!(all[&ia].peer, Some(ib));
        assert_eq!(all[&ib].peer, Some(ia));
        assert_eq!(all[&ia].state, STATE_ESTABLISHED);
    }
}
