//! The receive queue of a UNIX socket: read at dump without consuming it
//! (MSG_PEEK with SO_PEEK_OFF), refilled at restore by sending from the peer.

use super::ops::*;
use super::*;
use crate::error::Error;
use std::os::fd::FromRawFd;

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

/// One peeked message: bytes, real length, sender, credentials, and the
/// descriptors in flight with it (SCM_RIGHTS), which the peek installed
/// in crest: copies of the very open file descriptions.
struct Peeked {
    data: Vec<u8>,
    len: usize,
    from: Vec<u8>,
    creds: Option<(i32, u32, u32)>,
    fds: Vec<OwnedFd>,
    /// The kernel had more control data than crest's buffer holds.
    truncated: bool,
}

/// Room for SCM_MAX_FD (253) descriptors, credentials and a pidfd.
const CMSG_ROOM: usize = 2048;

/// The descriptors in flight with each message of a queue: (message
/// index, crest's copies in order).
pub type InFlight = Vec<(usize, Vec<OwnedFd>)>;

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
    let mut cbuf = [0u64; CMSG_ROOM / 8];
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
        fds: Vec::new(),
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
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
                        // Descriptors the peek installed in crest: the
                        // rights are kept, a pidfd (of the sender) closed.
                        for i in 0..dlen / 4 {
                            let f = std::ptr::read_unaligned(data.cast::<i32>().add(i));
                            let f = OwnedFd::from_raw_fd(f);
                            if (*c).cmsg_type == libc::SCM_RIGHTS {
                                p.fds.push(f);
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
pub(super) fn peek_queue(
    own: &OwnedFd,
    sock_type: i32,
    peek_off: i32,
    d: &UnixDiag,
) -> Refusal<(Vec<UnixMsg>, InFlight)> {
    let expected = d.rqlen.map(|r| r.0 as usize).unwrap_or(0);
    let mut inflight = InFlight::new();
    if sock_type != libc::SOCK_DGRAM && expected == 0 {
        return Ok((Vec::new(), inflight));
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
    while let Some(mut p) = peek_one(own, &mut buf)
        .map_err(|e| format!("AF_UNIX socket: peeking at the queued data: {e}"))?
    {
        if p.truncated {
            return Err(format!(
                "a message queued on this UNIX socket (at byte {off}) carries more control \
                 data than crest reads ({CMSG_ROOM} bytes)"
            ));
        }
        if sock_type == libc::SOCK_STREAM && !p.fds.is_empty() && p.len > 0 {
            // The rights ride on the first buffer (skb) of their write, and
            // this peek returns them with the bytes before that buffer too:
            // find where it starts (the last buffer boundary before the
            // peek's last byte, see `crest_sys::unixq`).  Bytes before it
            // are plain; the next peek starts at the buffer with rights.
            set(off as i32)?;
            let w = crest_sys::unixq::peek_whole_buffers(own.as_raw_fd(), &mut buf[..p.len - 1])
                .map_err(|e| {
                    format!("AF_UNIX socket: finding where the rights at byte {off} start: {e}")
                })?;
            if w.rights || w.bytes >= p.len {
                return Err(format!(
                    "AF_UNIX socket: the buffers before the descriptors in flight at byte {off} \
                     could not be told apart (peeked {} of {} bytes)",
                    w.bytes, p.len
                ));
            }
            if w.bytes > 0 {
                p.fds.clear();
                p.data.truncate(w.bytes);
                p.len = w.bytes;
            } else if p.len >= buf.len() {
                return Err(format!(
                    "a chunk of more than {} KiB with descriptors in flight is queued on this \
                     UNIX socket (not supported)",
                    buf.len() >> 10
                ));
            }
            set((off + p.len) as i32)?;
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
        let fds = std::mem::take(&mut p.fds);
        let last_has_rights = inflight.last().is_some_and(|(i, _)| *i + 1 == out.len());
        match out.last_mut() {
            Some(last)
                if sock_type == libc::SOCK_STREAM
                    && last.creds == creds
                    && !p.data.is_empty()
                    && fds.is_empty()
                    && !last_has_rights =>
            {
                last.data.extend_from_slice(&p.data)
            }
            _ => {
                if !fds.is_empty() {
                    inflight.push((out.len(), fds));
                }
                out.push(UnixMsg {
                    data: p.data,
                    from: p.from,
                    creds,
                    rights: Vec::new(),
                })
            }
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
    Ok((out, inflight))
}

/// Sends one message from `fd` (to `to`, or to its peer), with the
/// credentials the receiver saw — their pid `cred_pid`, which must exist
/// now (the kernel checks) — and the descriptors `rights` in flight with
/// its first byte.
pub(super) fn send(
    fd: &OwnedFd,
    data: &[u8],
    to: Option<&[u8]>,
    creds: Option<(i32, u32, u32)>,
    sender: Option<super::creds::Call>,
    rights: &[RawFd],
    by: &super::creds::Creds<'_>,
) -> Result<()> {
    // SAFETY: plain syscall.
    let cred_pid = sender
        .as_ref()
        .map_or_else(|| unsafe { libc::getpid() }, |s| s.pid);
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
        let mut cbuf = [0u64; CMSG_ROOM / 8];
        // SAFETY: msghdr is plain data; all zeroes is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        if let Some((a, len)) = &addr {
            msg.msg_name = (a as *const libc::sockaddr_un) as *mut libc::c_void;
            msg.msg_namelen = *len;
        }
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let fds = if sent == 0 { rights } else { &[][..] };
        // In the sender's user namespace's terms.
        let ucred = match creds {
            Some((_, uid, gid)) => {
                let (uid, gid) = match &sender {
                    Some(s) => by.ids_for(s, uid, gid)?,
                    None => (uid, gid),
                };
                Some(libc::ucred {
                    pid: cred_pid,
                    uid,
                    gid,
                })
            }
            None => None,
        };
        let clen = |n: usize| {
            // SAFETY: CMSG_SPACE is a pure computation.
            unsafe { libc::CMSG_SPACE(n as u32) as usize }
        };
        let room = ucred.map_or(0, |_| clen(std::mem::size_of::<libc::ucred>()))
            + if fds.is_empty() {
                0
            } else {
                clen(4 * fds.len())
            };
        if room > CMSG_ROOM {
            return Err(Error::Invalid(format!(
                "{} descriptors in flight with one message are too many",
                fds.len()
            )));
        }
        if room > 0 {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = room;
            // SAFETY: the control buffer has room for both messages
            // (checked above); the headers are walked with the libc macros.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                if let Some(u) = ucred {
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_CREDENTIALS;
                    (*c).cmsg_len =
                        libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>(), u);
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
                if !fds.is_empty() {
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_RIGHTS;
                    (*c).cmsg_len = libc::CMSG_LEN(4 * fds.len() as u32) as usize;
                    let d = libc::CMSG_DATA(c).cast::<i32>();
                    for (k, f) in fds.iter().enumerate() {
                        std::ptr::write_unaligned(d.add(k), *f);
                    }
                }
            }
        }
        if let Some(c) = &sender {
            // All of it, sent by the process the credentials name.
            return by.send_as(fd.as_raw_fd(), &msg, c);
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
            format!(
                "refilling a UNIX socket's queue ({} bytes, {} descriptors in flight)",
                data.len(),
                rights.len()
            )
        })? as usize;
        sent += n;
        if sent >= data.len() {
            return Ok(());
        }
    }
}
