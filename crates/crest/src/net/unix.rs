//! AF_UNIX sockets whose peers are all in the tree.
//!
//! Dump reads each socket from a copy of its descriptor (pidfd_getfd):
//! options with getsockopt, the receive queue with MSG_PEEK from offset 0
//! (SO_PEEK_OFF, put back afterwards), and what only the kernel knows —
//! name, bound file, peer, connections waiting to be accepted, shutdown
//! state — from sock_diag.  Peers refer to each other by their dump-time
//! inode numbers; a peer held outside the tree is refused.
//!
//! Restore has two steps.  [`open`] gives each socket's open file
//! description a placeholder (a fresh socket of the right type), which
//! the restore hands out like any other descriptor.  [`restore`], once
//! every descriptor of the tree is open in crest, builds the real sockets
//! together — listeners bound and listening, connected pairs made with
//! socketpair or with connect + accept on their listener (a temporary one
//! when the listener is closed), pending connections made by connecting
//! their clients last — refills every receive queue by sending from the
//! peer, connects datagram sockets, applies shutdowns and options, and
//! puts each socket in place of its placeholder (dup3), before anything
//! (an epoll) refers to those descriptors.

use crate::error::{Context, Error, Result};
use crate::model::{
    Checkpoint, ObjectKind, OpenFile, OpenTarget, UnixFile, UnixMsg, UnixPending, UnixSocket,
};
use crest_sys::sockdiag::{self, UnixDiag};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// What a refused descriptor says.
type Refusal<T> = std::result::Result<T, String>;

const SO_PASSPIDFD: i32 = 76;
const SCM_PIDFD: i32 = 4;
/// Receive queues larger than this are refused.
const MAX_QUEUE: usize = 64 << 20;
/// Queued messages beyond this many are refused.
const MAX_MESSAGES: usize = 1 << 20;

// ---------------------------------------------------------------- dump

/// The state of socket `fd` of `pid`, or why it cannot be checkpointed.
pub fn collect(pid: i32, fd: i32) -> Refusal<OpenTarget> {
    let own = steal(pid, fd).map_err(|e| format!("this socket is not supported ({e})"))?;
    let dom = getsockopt_int(&own, libc::SOL_SOCKET, libc::SO_DOMAIN)
        .map_err(|e| format!("this socket is not supported (SO_DOMAIN: {e})"))?;
    if dom != libc::AF_UNIX {
        return Err(format!("{} socket is not supported", family_name(dom)));
    }
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", own.as_raw_fd()))
        .map_err(|e| format!("AF_UNIX socket: cannot stat: {e}"))?
        .ino();
    let all = sockdiag::unix_sockets().map_err(|e| format!("AF_UNIX socket: {e}"))?;
    let d = all
        .get(&(ino as u32))
        .ok_or_else(|| format!("AF_UNIX socket socket:[{ino}] is not listed by sock_diag"))?;
    let sock_type = d.sock_type as i32;
    if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&sock_type) {
        return Err(format!(
            "AF_UNIX socket of type {sock_type} is not supported"
        ));
    }
    let name = norm_name(&d.name);
    if !name.is_empty() && name[0] != 0 && name[0] != b'/' {
        return Err(format!(
            "AF_UNIX socket bound to the relative path {:?} (not supported)",
            String::from_utf8_lossy(&name)
        ));
    }
    let me = crest_tids();
    let outq = d.rqlen.map(|r| r.1).unwrap_or(0);
    let stream = sock_type != libc::SOCK_DGRAM;
    match d.peer {
        Some(0) if !stream => return Err(
            "this datagram socket is connected to a socket that has been closed (not supported)"
                .into(),
        ),
        Some(0) => {
            // Closed, or the server end of a connection not accepted yet
            // (it has no inode): then a listener shows this socket among
            // its waiting connections.
            if let Some(l) = all
                .values()
                .find(|l| l.state == sockdiag::STATE_LISTEN && l.icons.contains(&(ino as u32)))
            {
                let lh = holders(l.ino);
                if !lh.iter().any(|p| in_tree(*p, &me)) {
                    return Err(match lh.first() {
                        Some(p) => format!(
                            "this UNIX socket waits to be accepted on a socket held by pid {p}, outside the tree"
                        ),
                        None => "this UNIX socket waits to be accepted on a socket that is not in the tree".into(),
                    });
                }
                if outq > 0 {
                    return Err(format!(
                        "this UNIX socket sent {outq} bytes on a connection not accepted yet \
                         (not supported: they cannot be read before the accept)"
                    ));
                }
            }
        }
        None => {}
        Some(p) => check_in_tree(p, &me)?,
    }
    let listen = (d.state == sockdiag::STATE_LISTEN).then(|| d.rqlen.map(|r| r.1).unwrap_or(0));
    let mut pending = Vec::new();
    if listen.is_some() {
        for &client in &d.icons {
            if client == 0 {
                return Err(
                    "a connection waiting to be accepted on this socket was closed by its client \
                     (not supported)"
                        .into(),
                );
            }
            let h = holders(client);
            if !h.iter().any(|p| in_tree(*p, &me)) {
                return Err(match h.first() {
                    Some(p) => format!(
                        "a connection waiting to be accepted on this socket comes from pid {p}, outside the tree"
                    ),
                    None => format!(
                        "a connection waiting to be accepted on this socket comes from socket:[{client}], which is not in the tree"
                    ),
                });
            }
            let sent = all
                .get(&client)
                .and_then(|c| c.rqlen)
                .map(|r| r.1)
                .unwrap_or(0);
            if sent > 0 {
                return Err(format!(
                    "a connection waiting to be accepted on this socket has {sent} bytes queued \
                     (not supported: they cannot be read before the accept)"
                ));
            }
            pending.push(UnixPending {
                client: client as u64,
            });
        }
    }
    let file = if !name.is_empty() && name[0] == b'/' {
        let path = std::ffi::OsStr::from_bytes(&name);
        match (std::fs::symlink_metadata(path), d.vfs) {
            (Ok(m), Some((vino, vdev)))
                if m.file_type().is_socket()
                    && m.ino() as u32 == vino
                    && sockdiag::encode_dev(m.dev()) == vdev =>
            {
                Some(UnixFile {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                })
            }
            _ => None,
        }
    } else {
        None
    };
    let opt = |name: i32| {
        getsockopt_int(&own, libc::SOL_SOCKET, name)
            .map_err(|e| format!("AF_UNIX socket: getsockopt({name}): {e}"))
    };
    let passcred = opt(libc::SO_PASSCRED)? != 0;
    let passpidfd = getsockopt_int(&own, libc::SOL_SOCKET, SO_PASSPIDFD).unwrap_or(0) != 0;
    let rcvbuf = opt(libc::SO_RCVBUF)? as u32;
    let sndbuf = opt(libc::SO_SNDBUF)? as u32;
    let peek_off = opt(libc::SO_PEEK_OFF)?;
    let rcvtimeo_us = get_timeout(&own, libc::SO_RCVTIMEO)?;
    let sndtimeo_us = get_timeout(&own, libc::SO_SNDTIMEO)?;
    let queue = if listen.is_some() {
        Vec::new()
    } else {
        peek_queue(&own, sock_type, peek_off, d)?
    };
    Ok(OpenTarget::Unix(UnixSocket {
        ino,
        sock_type,
        name,
        file,
        listen,
        peer: d.peer.map(u64::from),
        shutdown: d.shutdown,
        queue,
        pending,
        passcred,
        passpidfd,
        rcvbuf,
        sndbuf,
        peek_off,
        rcvtimeo_us,
        sndtimeo_us,
    }))
}

/// A name as the program sees it: filesystem names lose the NUL the
/// kernel keeps after them.
fn norm_name(n: &[u8]) -> Vec<u8> {
    if n.first().is_some_and(|&b| b != 0) {
        let end = n.iter().position(|&b| b == 0).unwrap_or(n.len());
        n[..end].to_vec()
    } else {
        n.to_vec()
    }
}

fn family_name(dom: i32) -> String {
    match dom {
        libc::AF_INET => "AF_INET".into(),
        libc::AF_INET6 => "AF_INET6".into(),
        libc::AF_NETLINK => "AF_NETLINK".into(),
        libc::AF_PACKET => "AF_PACKET".into(),
        d => format!("address family {d}"),
    }
}

/// A copy of descriptor `fd` of `pid` (the same open file description).
fn steal(pid: i32, fd: i32) -> Refusal<OwnedFd> {
    let pidfd = crest_sys::pidfd::open(pid).map_err(|e| e.to_string())?;
    crest_sys::pidfd::getfd(&pidfd, pid, fd).map_err(|e| e.to_string())
}

/// crest's thread ids: the tree's tasks are the ones one of them traces.
fn crest_tids() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn in_tree(pid: i32, me: &[i32]) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
        })
        .is_some_and(|t| me.contains(&t))
}

/// The processes (other than crest) whose descriptor tables hold socket `ino`.
fn holders(ino: u32) -> Vec<i32> {
    let want = format!("socket:[{ino}]");
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds.flatten().any(|f| {
            std::fs::read_link(f.path()).is_ok_and(|l| l.as_os_str().as_bytes() == want.as_bytes())
        }) {
            out.push(pid);
        }
    }
    out
}

/// Refuses a peer that no process of the tree holds.
fn check_in_tree(peer: u32, me: &[i32]) -> Refusal<()> {
    let h = holders(peer);
    if h.iter().any(|p| in_tree(*p, me)) {
        return Ok(());
    }
    Err(match h.first() {
        Some(p) => format!("the peer of this UNIX socket is held by pid {p}, outside the tree"),
        None => format!("the peer of this UNIX socket (socket:[{peer}]) is not in the tree"),
    })
}

fn getsockopt_int(fd: &OwnedFd, level: i32, name: i32) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn setsockopt_raw<T>(fd: RawFd, level: i32, name: i32, v: &T) -> std::io::Result<()> {
    // SAFETY: setsockopt reads size_of::<T>() bytes from a valid reference.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn get_timeout(fd: &OwnedFd, name: i32) -> Refusal<u64> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `tv`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(format!(
            "AF_UNIX socket: reading a timeout: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64)
}

/// Puts SO_PEEK_OFF back as the task had it, whatever happens.
struct PeekOffGuard<'a>(&'a OwnedFd, i32);

impl Drop for PeekOffGuard<'_> {
    fn drop(&mut self) {
        let _ = setsockopt_raw(
            self.0.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            &self.1,
        );
    }
}

/// One peeked message: bytes, real length, sender, credentials.
struct Peeked {
    data: Vec<u8>,
    len: usize,
    from: Vec<u8>,
    creds: Option<(i32, u32, u32)>,
    rights: usize,
}

/// Peeks at the message (or stream chunk) at the socket's peek offset.
fn peek_one(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<Peeked>> {
    let mut addr: libc::sockaddr_un = {
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        unsafe { std::mem::zeroed() }
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 64];
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: every pointer in `msg` refers to a live buffer of the stated size.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(None);
        }
        return Err(e);
    }
    let len = n as usize;
    let mut p = Peeked {
        data: buf[..len.min(buf.len())].to_vec(),
        len,
        from: Vec::new(),
        creds: None,
        rights: 0,
    };
    let nl = msg.msg_namelen as usize;
    if nl > 2 {
        let path = &addr.sun_path[..(nl - 2).min(addr.sun_path.len())];
        p.from = norm_name(&path.iter().map(|&c| c as u8).collect::<Vec<u8>>());
    }
    // SAFETY: walking the control messages the kernel wrote into `cbuf`,
    // with the libc macros and within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let dlen = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            if (*c).cmsg_level == libc::SOL_SOCKET {
                match (*c).cmsg_type {
                    libc::SCM_RIGHTS | SCM_PIDFD => {
                        // Descriptors the peek installed in crest: close them.
                        for i in 0..dlen / 4 {
                            let f = std::ptr::read_unaligned(data.cast::<i32>().add(i));
                            drop(OwnedFd::from_raw_fd(f));
                            if (*c).cmsg_type == libc::SCM_RIGHTS {
                                p.rights += 1;
                            }
                        }
                    }
                    libc::SCM_CREDENTIALS if dlen >= 12 => {
                        let u = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                        p.creds = Some((u.pid, u.uid, u.gid));
                    }
                    _ => {}
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Some(p))
}

/// The receive queue of a (non-listening) socket, read without consuming
/// anything: MSG_PEEK from peek offset 0, the task's offset put back.
fn peek_queue(own: &OwnedFd, sock_type: i32, peek_off: i32, d: &UnixDiag) -> Refusal<Vec<UnixMsg>> {
    let expected = d.rqlen.map(|r| r.0 as usize).unwrap_or(0);
    if sock_type != libc::SOCK_DGRAM && expected == 0 {
        return Ok(Vec::new());
    }
    let set = |off: i32| {
        setsockopt_raw(own.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, &off)
            .map_err(|e| format!("AF_UNIX socket: setting SO_PEEK_OFF: {e}"))
    };
    set(0)?;
    let _guard = PeekOffGuard(own, peek_off);
    let mut out: Vec<UnixMsg> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0usize;
    let mut total = 0usize;
    while let Some(p) = peek_one(own, &mut buf)
        .map_err(|e| format!("AF_UNIX socket: peeking at the queued data: {e}"))?
    {
        if p.rights > 0 {
            return Err(format!(
                "a message queued on this UNIX socket carries {} descriptor(s) in flight \
                 (SCM_RIGHTS), which is not supported yet",
                p.rights
            ));
        }
        if sock_type != libc::SOCK_STREAM && p.len > buf.len() {
            // A datagram larger than the buffer: peek at it again whole.
            buf.resize(p.len, 0);
            set(off as i32)?;
            continue;
        }
        if sock_type == libc::SOCK_STREAM && p.len == 0 {
            break;
        }
        let n = p.data.len();
        off += n;
        total += n;
        if total > MAX_QUEUE || off > i32::MAX as usize {
            return Err(format!(
                "this UNIX socket has more than {} MiB queued (not supported)",
                MAX_QUEUE >> 20
            ));
        }
        // A zero-length message does not move the peek offset; the kernel
        // marks it peeked and skips it on the next peek at that offset
        // (so one already peeked at — by the program, or an earlier
        // dump — cannot be seen at all).
        if out.len() >= MAX_MESSAGES {
            return Err(format!(
                "this UNIX socket has more than {MAX_MESSAGES} messages queued (not supported)"
            ));
        }
        let creds = p.creds;
        match out.last_mut() {
            Some(last)
                if sock_type == libc::SOCK_STREAM && last.creds == creds && !p.data.is_empty() =>
            {
                last.data.extend_from_slice(&p.data)
            }
            _ => out.push(UnixMsg {
                data: p.data,
                from: p.from,
                creds,
            }),
        }
        if sock_type != libc::SOCK_DGRAM && total >= expected {
            break;
        }
    }
    if sock_type != libc::SOCK_DGRAM && total != expected {
        return Err(format!(
            "AF_UNIX socket: {total} bytes could be read of the {expected} queued"
        ));
    }
    Ok(out)
}

// ------------------------------------------------------------- restore

fn check(r: libc::c_long, what: impl FnOnce() -> String) -> Result<libc::c_long> {
    if r < 0 {
        Err(crest_sys::Error::last_os(what()).into())
    } else {
        Ok(r)
    }
}

fn valid_type(t: i32) -> Result<()> {
    if [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&t) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "AF_UNIX socket of unknown type {t}"
        )))
    }
}

fn new_socket(t: i32) -> Result<OwnedFd> {
    valid_type(t)?;
    // SAFETY: plain syscall.
    let r = unsafe {
        libc::socket(
            libc::AF_UNIX,
            t | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    check(r as libc::c_long, || "socket(AF_UNIX)".into())?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

fn socketpair(t: i32) -> Result<(OwnedFd, OwnedFd)> {
    valid_type(t)?;
    let mut fds = [0i32; 2];
    // SAFETY: socketpair fills two descriptors into the array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            t | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    check(r as libc::c_long, || "socketpair(AF_UNIX)".into())?;
    // SAFETY: fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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

fn show(name: &[u8]) -> String {
    match name.first() {
        Some(0) => format!("@{}", String::from_utf8_lossy(&name[1..])),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

fn bind(fd: &OwnedFd, name: &[u8]) -> Result<()> {
    let (a, len) = sockaddr_un(name)?;
    // SAFETY: bind reads `len` bytes of a valid sockaddr_un.
    let r = unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    check(r as libc::c_long, || {
        format!("binding a UNIX socket to {}", show(name))
    })?;
    Ok(())
}

fn connect(fd: &OwnedFd, name: &[u8]) -> Result<()> {
    let (a, len) = sockaddr_un(name)?;
    // SAFETY: connect reads `len` bytes of a valid sockaddr_un.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    check(r as libc::c_long, || {
        format!("connecting a UNIX socket to {}", show(name))
    })?;
    Ok(())
}

fn accept(fd: &OwnedFd, name: &[u8]) -> Result<OwnedFd> {
    // SAFETY: accept4 without an address.
    let r = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    check(r as libc::c_long, || {
        format!("accepting a connection on {}", show(name))
    })?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

fn listen(fd: &OwnedFd, backlog: u32, name: &[u8]) -> Result<()> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::listen(fd.as_raw_fd(), backlog.min(i32::MAX as u32) as i32) };
    check(r as libc::c_long, || format!("listening on {}", show(name)))?;
    Ok(())
}

/// Sends one message from `fd` (to `to`, or to its peer), with the
/// credentials the receiver saw (the pid becomes crest's: the original
/// sender does not exist yet).
fn send(
    fd: &OwnedFd,
    data: &[u8],
    to: Option<&[u8]>,
    creds: Option<(i32, u32, u32)>,
) -> Result<()> {
    let addr = match to {
        Some(n) => Some(sockaddr_un(n)?),
        None => None,
    };
    let mut sent = 0usize;
    loop {
        let mut iov = libc::iovec {
            iov_base: data[sent..].as_ptr() as *mut libc::c_void,
            iov_len: data.len() - sent,
        };
        let mut cbuf = [0u64; 8];
        // SAFETY: msghdr is plain data; all zeroes is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        if let Some((a, len)) = &addr {
            msg.msg_name = (a as *const libc::sockaddr_un) as *mut libc::c_void;
            msg.msg_namelen = *len;
        }
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some((_, uid, gid)) = creds {
            let u = libc::ucred {
                // SAFETY: plain syscall.
                pid: unsafe { libc::getpid() },
                uid,
                gid,
            };
            msg.msg_control = cbuf.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure computation.
            msg.msg_controllen =
                unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) } as usize;
            // SAFETY: the control buffer has room for one ucred message.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_CREDENTIALS;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>(), u);
            }
        }
        // SAFETY: every pointer in `msg` refers to a live buffer of the stated size.
        let n = unsafe {
            libc::sendmsg(
                fd.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        let n = check(n as libc::c_long, || {
            format!("refilling a UNIX socket's queue ({} bytes)", data.len())
        })? as usize;
        sent += n;
        if sent >= data.len() {
            return Ok(());
        }
    }
}

fn shutdown(fd: &OwnedFd, mask: u8) -> Result<()> {
    let how = match mask & 3 {
        0 => return Ok(()),
        1 => libc::SHUT_RD,
        2 => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    // SAFETY: plain syscall.
    let r = unsafe { libc::shutdown(fd.as_raw_fd(), how) };
    check(r as libc::c_long, || "shutting a UNIX socket down".into())?;
    Ok(())
}

fn set_int(fd: &OwnedFd, name: i32, v: i32, what: &str) -> Result<()> {
    setsockopt_raw(fd.as_raw_fd(), libc::SOL_SOCKET, name, &v)
        .map_err(|e| crest_sys::Error::io(format!("setting {what} to {v}"), e).into())
}

fn set_timeout(fd: &OwnedFd, name: i32, us: u64, what: &str) -> Result<()> {
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

/// Filesystem names bound during the restore, and what to do with them.
#[derive(Default)]
struct Names {
    /// Sockets bound on the filesystem, by inode, once per restore.
    live: Option<Vec<(u32, u32)>>,
    /// Socket files to remove at the end (names whose file was unlinked).
    remove: Vec<std::path::PathBuf>,
}

impl Names {
    /// Makes room for a socket file at `name` (a stale socket file is
    /// removed; anything else is an error), binds `fd` there and gives the
    /// file its mode and owner.
    fn bind(&mut self, fd: &OwnedFd, name: &[u8], file: Option<&UnixFile>) -> Result<()> {
        if name.is_empty() {
            return Ok(());
        }
        if name[0] == 0 {
            return bind(fd, name);
        }
        let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name));
        if file.is_none() && !name_is_free(name) {
            // The file was deleted and its path is gone or taken: the
            // name alone, with no file anywhere visible.
            return crate::net::sockname::bind_detached(fd, name);
        }
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if !m.file_type().is_socket() {
                return Err(Error::Incompatible(format!(
                    "{} exists and is not a socket; the restored socket must be bound there",
                    path.display()
                )));
            }
            if self.live.is_none() {
                let all = sockdiag::unix_sockets()?;
                self.live = Some(all.values().filter_map(|d| d.vfs).collect());
            }
            let key = (m.ino() as u32, sockdiag::encode_dev(m.dev()));
            if self.live.as_ref().is_some_and(|l| l.contains(&key)) {
                return Err(Error::Incompatible(format!(
                    "{} is the name of a socket in use; the restored socket must be bound there",
                    path.display()
                )));
            }
            std::fs::remove_file(&path).map_err(|e| {
                Error::msg(format!("removing the stale socket {}: {e}", path.display()))
            })?;
        }
        bind(fd, name)?;
        match file {
            Some(f) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode & 0o7777))
                    .map_err(|e| Error::msg(format!("chmod {}: {e}", path.display())))?;
                std::os::unix::fs::lchown(&path, Some(f.uid), Some(f.gid))
                    .map_err(|e| Error::msg(format!("chown {}: {e}", path.display())))?;
            }
            None => self.remove.push(path),
        }
        Ok(())
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        for p in self.remove.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One socket of the image.
struct Sock<'a> {
    id: u32,
    flags: u32,
    u: &'a UnixSocket,
}

/// Builds every AF_UNIX socket of the image and puts each in place of its
/// placeholder: `opened` maps object ids to crest's descriptors.  Runs
/// once every descriptor of the tree is open, before anything else refers
/// to the sockets' descriptors.
pub fn restore(ckpt: &Checkpoint, opened: &HashMap<u32, RawFd>) -> Result<()> {
    let mut socks: Vec<Sock> = Vec::new();
    for o in &ckpt.objects {
        if let ObjectKind::Open(OpenFile {
            flags,
            target: OpenTarget::Unix(u),
            ..
        }) = &o.kind
        {
            if opened.contains_key(&o.id) {
                valid_type(u.sock_type)?;
                socks.push(Sock {
                    id: o.id,
                    flags: *flags,
                    u,
                });
            }
        }
    }
    if socks.is_empty() {
        return Ok(());
    }
    let mut by_ino: HashMap<u64, usize> = HashMap::new();
    for (i, s) in socks.iter().enumerate() {
        if by_ino.insert(s.u.ino, i).is_some() {
            return Err(Error::Invalid(format!(
                "two AF_UNIX sockets of the image have inode {}",
                s.u.ino
            )));
        }
    }
    // Connections waiting on listeners: client inode → listener.
    let mut waiting: HashMap<u64, usize> = HashMap::new();
    for (i, s) in socks.iter().enumerate() {
        for p in &s.u.pending {
            if waiting.insert(p.client, i).is_some() {
                return Err(Error::Invalid(format!(
                    "socket {} waits on two listeners",
                    p.client
                )));
            }
        }
    }
    let what = |s: &Sock| format!("AF_UNIX socket {} (object {})", show(&s.u.name), s.id);
    let mut names = Names::default();
    let mut built: Vec<Option<OwnedFd>> = (0..socks.len()).map(|_| None).collect();
    // The other end of a socketpair made for one socket whose peer was
    // closed; and the partner of each socketpair.
    let mut orphan_peer: HashMap<usize, OwnedFd> = HashMap::new();
    let mut partner: HashMap<usize, usize> = HashMap::new();
    let listener_named = |name: &[u8], t: i32| {
        socks
            .iter()
            .position(|s| s.u.listen.is_some() && s.u.name == name && s.u.sock_type == t)
    };
    // 1. Listeners, bound and listening.
    for (i, s) in socks.iter().enumerate() {
        if let Some(backlog) = s.u.listen {
            let fd = new_socket(s.u.sock_type)?;
            names
                .bind(&fd, &s.u.name, s.u.file.as_ref())
                .context(|| what(s))?;
            listen(&fd, backlog, &s.u.name)?;
            built[i] = Some(fd);
        }
    }
    // 2. Connected sockets and the others.
    for i in 0..socks.len() {
        if built[i].is_some() {
            continue;
        }
        let s = &socks[i];
        let u = s.u;
        let peer = u
            .peer
            .filter(|&p| p != 0)
            .and_then(|p| by_ino.get(&p).copied());
        let stream = u.sock_type != libc::SOCK_DGRAM;
        match (u.peer, peer) {
            (Some(0), _) if stream && waiting.contains_key(&u.ino) => {
                // The client end of a connection not accepted yet: it
                // connects once the listener's accepted ones are made.
                let fd = new_socket(u.sock_type)?;
                names.bind(&fd, &u.name, u.file.as_ref())?;
                built[i] = Some(fd);
            }
            (Some(0), _) if stream => {
                // Its peer was closed: a pair whose other end is closed
                // once the queue is refilled.
                let (a, b) = socketpair(u.sock_type)?;
                built[i] = Some(a);
                orphan_peer.insert(i, b);
            }
            (Some(_), Some(j)) if stream => {
                let v = socks[j].u;
                if v.peer != Some(u.ino) || v.sock_type != u.sock_type {
                    return Err(Error::Invalid(format!(
                        "{}: its peer is not connected back to it",
                        what(s)
                    )));
                }
                if u.name.is_empty() && v.name.is_empty() {
                    let (a, b) = socketpair(u.sock_type)?;
                    built[i] = Some(a);
                    built[j] = Some(b);
                    partner.insert(i, j);
                    partner.insert(j, i);
                    continue;
                }
                // One end was accepted (it shows its listener's name).
                let la = (!u.name.is_empty())
                    .then(|| listener_named(&u.name, u.sock_type))
                    .flatten();
                let lb = (!v.name.is_empty())
                    .then(|| listener_named(&v.name, u.sock_type))
                    .flatten();
                let (acc, cli) = match (u.name.is_empty(), v.name.is_empty(), la, lb) {
                    (false, true, _, _) => (i, j),
                    (true, false, _, _) => (j, i),
                    (_, _, Some(_), None) => (i, j),
                    (_, _, None, Some(_)) => (j, i),
                    _ => {
                        return Err(Error::Incompatible(format!(
                            "{}: cannot tell which end of its connection was accepted",
                            what(s)
                        )))
                    }
                };
                let (aname, cu) = (socks[acc].u.name.clone(), socks[cli].u);
                let client = new_socket(u.sock_type)?;
                names.bind(&client, &cu.name, cu.file.as_ref())?;
                let accepted = match listener_named(&aname, u.sock_type) {
                    Some(l) => {
                        let lfd = built[l].as_ref().expect("listeners are built first");
                        connect(&client, &aname)?;
                        accept(lfd, &aname)?
                    }
                    None => {
                        // The listener is closed: a temporary one with its name.
                        let tmp = new_socket(u.sock_type)?;
                        names.bind(&tmp, &aname, socks[acc].u.file.as_ref())?;
                        listen(&tmp, 1, &aname)?;
                        connect(&client, &aname)?;
                        accept(&tmp, &aname)?
                    }
                };
                built[acc] = Some(accepted);
                built[cli] = Some(client);
            }
            (Some(p), None) if stream => {
                return Err(Error::Invalid(format!(
                    "{}: its peer socket {p} is not in the image",
                    what(s)
                )));
            }
            (Some(_), Some(j))
                if u.name.is_empty()
                    && socks[j].u.name.is_empty()
                    && socks[j].u.peer == Some(u.ino)
                    && socks[j].u.sock_type == u.sock_type =>
            {
                let (a, b) = socketpair(u.sock_type)?;
                built[i] = Some(a);
                built[j] = Some(b);
                partner.insert(i, j);
                partner.insert(j, i);
            }
            _ => {
                let fd = new_socket(u.sock_type)?;
                names
                    .bind(&fd, &u.name, u.file.as_ref())
                    .context(|| what(s))?;
                built[i] = Some(fd);
            }
        }
    }
    let fd_of = |built: &Vec<Option<OwnedFd>>, i: usize| -> Result<RawFd> {
        built[i].as_ref().map(|f| f.as_raw_fd()).ok_or_else(|| {
            Error::msg(format!(
                "AF_UNIX socket object {} was not built",
                socks[i].id
            ))
        })
    };
    // Room for the refill in every sender's buffer.
    for f in built.iter().flatten().chain(orphan_peer.values()) {
        let _ = setsockopt_raw(
            f.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            &(32i32 << 20),
        );
    }
    // 3. Refill the receive queues, sending from the peer.
    for (i, s) in socks.iter().enumerate() {
        if s.u.queue.is_empty() {
            continue;
        }
        let u = s.u;
        let stream = u.sock_type != libc::SOCK_DGRAM;
        for m in &u.queue {
            let (from, to): (RawFd, Option<&[u8]>) = if stream {
                let f = match (orphan_peer.get(&i), u.peer.and_then(|p| by_ino.get(&p))) {
                    (Some(o), _) => o.as_raw_fd(),
                    (None, Some(&j)) => fd_of(&built, j)?,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "{}: data queued but no peer to send it from",
                            what(s)
                        )))
                    }
                };
                (f, None)
            } else if let Some(&j) = partner
                .get(&i)
                .filter(|&&j| m.from.is_empty() || m.from == socks[j].u.name)
            {
                (fd_of(&built, j)?, None)
            } else if u.name.is_empty() {
                return Err(Error::Incompatible(format!(
                    "{}: a datagram queued on this unnamed socket came from {} and cannot be sent to it again",
                    what(s),
                    show(&m.from)
                )));
            } else if m.from.is_empty() {
                (-1, Some(&u.name[..]))
            } else {
                match socks
                    .iter()
                    .position(|x| x.u.name == m.from && x.u.sock_type == libc::SOCK_DGRAM)
                {
                    Some(j) => (fd_of(&built, j)?, Some(&u.name[..])),
                    None => {
                        return Err(Error::Incompatible(format!(
                            "{}: a datagram queued on it came from {}, which no socket of the image has",
                            what(s),
                            show(&m.from)
                        )))
                    }
                }
            };
            if from < 0 {
                let tmp = new_socket(libc::SOCK_DGRAM)?;
                send(&tmp, &m.data, to, m.creds)?;
            } else {
                // SAFETY: `from` is a descriptor owned by `built` or
                // `orphan_peer`, alive for this call; the borrowed copy is
                // forgotten, not closed.
                let f = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(from) });
                send(&f, &m.data, to, m.creds).context(|| what(s))?;
            }
        }
    }
    orphan_peer.clear(); // the peers of those sockets are closed again
                         // 4. Datagram sockets connected to a named socket; pending connections.
    for (i, s) in socks.iter().enumerate() {
        let u = s.u;
        if u.sock_type != libc::SOCK_DGRAM || partner.contains_key(&i) {
            continue;
        }
        if let Some(p) = u.peer {
            let Some(&j) = by_ino.get(&p) else {
                return Err(Error::Invalid(format!(
                    "{}: its peer {p} is not in the image",
                    what(s)
                )));
            };
            let pname = &socks[j].u.name;
            if pname.is_empty() {
                return Err(Error::Incompatible(format!(
                    "{}: it is connected to an unnamed datagram socket",
                    what(s)
                )));
            }
            let f = built[i].as_ref().expect("built above");
            connect(f, pname).context(|| what(s))?;
        }
    }
    for l in socks.iter() {
        for p in &l.u.pending {
            let Some(&c) = by_ino.get(&p.client) else {
                return Err(Error::Invalid(format!(
                    "{}: the client {} of a pending connection is not in the image",
                    what(l),
                    p.client
                )));
            };
            let f = built[c].as_ref().expect("built above");
            connect(f, &l.u.name).context(|| what(&socks[c]))?;
        }
    }
    // 5. Shutdown state, options, file flags; then into place.
    for (i, s) in socks.iter().enumerate() {
        let u = s.u;
        let f = built[i].as_ref().expect("built above");
        if u.peer != Some(0) {
            shutdown(f, u.shutdown).context(|| what(s))?;
        }
        set_int(f, libc::SO_PASSCRED, u.passcred as i32, "SO_PASSCRED")?;
        if u.passpidfd {
            set_int(f, SO_PASSPIDFD, 1, "SO_PASSPIDFD")?;
        }
        set_int(f, libc::SO_SNDBUFFORCE, (u.sndbuf / 2) as i32, "SO_SNDBUF")?;
        set_int(f, libc::SO_RCVBUFFORCE, (u.rcvbuf / 2) as i32, "SO_RCVBUF")?;
        set_int(f, libc::SO_PEEK_OFF, u.peek_off, "SO_PEEK_OFF")?;
        set_timeout(f, libc::SO_RCVTIMEO, u.rcvtimeo_us, "SO_RCVTIMEO")?;
        set_timeout(f, libc::SO_SNDTIMEO, u.sndtimeo_us, "SO_SNDTIMEO")?;
        // SAFETY: plain fcntl on a descriptor we own.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, s.flags as i32) };
        check(r as libc::c_long, || {
            format!("{}: setting its flags", what(s))
        })?;
    }
    for (i, s) in socks.iter().enumerate() {
        let f = built[i].as_ref().expect("built above");
        let place = opened[&s.id];
        // SAFETY: replaces crest's placeholder at `place` (owned by the
        // restore's held descriptors) with the built socket.
        let r = unsafe { libc::dup3(f.as_raw_fd(), place, libc::O_CLOEXEC) };
        check(r as libc::c_long, || {
            format!("{}: putting it in place", what(s))
        })?;
    }
    Ok(())
}

/// A short description of a UNIX socket, for `inspect`.
pub fn describe(u: &UnixSocket) -> String {
    let t = match u.sock_type {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "?",
    };
    let mut s = format!("AF_UNIX {t} socket:[{}]", u.ino);
    if !u.name.is_empty() {
        s += &format!(" {}", show(&u.name));
    }
    if let Some(b) = u.listen {
        s += &format!(", listening (backlog {b}, {} waiting)", u.pending.len());
    }
    match u.peer {
        Some(0) => s += ", peer closed or not accepted yet",
        Some(p) => s += &format!(", peer socket:[{p}]"),
        None => {}
    }
    let bytes: usize = u.queue.iter().map(|m| m.data.len()).sum();
    if !u.queue.is_empty() {
        s += &format!(", {} messages / {bytes} bytes queued", u.queue.len());
    }
    if u.shutdown != 0 {
        s += &format!(", shutdown {}", u.shutdown);
    }
    s
}

/// Whether a socket file can be made at `name` for a while: its
/// directory exists and nothing is there.
fn name_is_free(name: &[u8]) -> bool {
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
    path.parent().is_some_and(|d| d.is_dir())
        && matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Why the filesystem name of socket `u` could not be bound again here
/// (checked at dump too, while the tree still runs).  A name whose file
/// is gone is bound without a file (see `crate::net::sockname`), but then
/// nothing can connect to it by path: a listener that restore must
/// reconnect accepted or waiting connections to is refused.
pub fn name_problem(u: &UnixSocket, ckpt: &Checkpoint) -> Option<String> {
    if u.name.first() != Some(&b'/') {
        return None;
    }
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&u.name));
    let shown = path.display();
    if u.file.is_none() {
        if name_is_free(&u.name) {
            return None;
        }
        let accepted = ckpt.objects.iter().any(|o| {
            matches!(&o.kind, ObjectKind::Open(OpenFile { target: OpenTarget::Unix(v), .. })
                if v.ino != u.ino && v.name == u.name && v.peer.is_some_and(|p| p != 0))
        });
        if u.listen.is_some() && (accepted || !u.pending.is_empty()) {
            return Some(format!(
                "AF_UNIX socket bound to {shown}, whose file was deleted and whose path is \
                 now gone or taken: its connections are remade through that path (not supported)"
            ));
        }
        return None;
    }
    if let Some(dir) = path.parent() {
        if !dir.is_dir() {
            return Some(format!(
                "AF_UNIX socket bound to {shown}: its directory {} was removed; the name \
                 cannot be bound again (not supported)",
                dir.display()
            ));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Some(format!(
            "AF_UNIX socket bound to {shown}: that path now holds another file, so the \
             name cannot be bound again (not supported)"
        )),
        _ => None,
    }
}
