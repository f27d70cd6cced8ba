//! Sockets of the IP families: addresses, socket options (plain and the
//! raw TCP_REPAIR family), queue sizes, peeking and sending.
//!
//! Everything takes a raw descriptor the caller owns and returns
//! `std::io::Result`, so the callers can say which socket and what for.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const TCP_REPAIR: i32 = 19;
pub const TCP_REPAIR_QUEUE: i32 = 20;
pub const TCP_QUEUE_SEQ: i32 = 21;
pub const TCP_REPAIR_OPTIONS: i32 = 22;
pub const TCP_TIMESTAMP: i32 = 24;
pub const TCP_REPAIR_WINDOW: i32 = 29;
/// TCP_REPAIR values: on, off (with a window probe), off without one.
pub const REPAIR_ON: i32 = 1;
pub const REPAIR_OFF: i32 = 0;
pub const REPAIR_OFF_NO_PROBE: i32 = -1;
/// TCP_REPAIR_QUEUE values.
pub const NO_QUEUE: i32 = 0;
pub const RECV_QUEUE: i32 = 1;
pub const SEND_QUEUE: i32 = 2;
/// TCP_REPAIR_OPTIONS codes (the TCP option kinds).
pub const TCPOPT_MSS: u32 = 2;
pub const TCPOPT_WINDOW: u32 = 3;
pub const TCPOPT_SACK_PERM: u32 = 4;
pub const TCPOPT_TIMESTAMP: u32 = 8;
/// tcpi_options bits.
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;

const SIOCINQ: libc::c_ulong = libc::FIONREAD;
const SIOCOUTQ: libc::c_ulong = libc::TIOCOUTQ;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new socket, close-on-exec.
pub fn socket(family: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = cvt(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An option of up to `max` bytes.
pub fn get_bytes(fd: RawFd, level: i32, name: i32, max: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; max];
    let mut len = max as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    cvt(unsafe { libc::getsockopt(fd, level, name, v.as_mut_ptr().cast(), &mut len) })?;
    v.truncate(len as usize);
    Ok(v)
}

pub fn set_bytes(fd: RawFd, level: i32, name: i32, v: &[u8]) -> io::Result<()> {
    // SAFETY: setsockopt reads `v.len()` bytes from a live slice.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            v.as_ptr().cast(),
            v.len() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// SO_PEERCRED of a UNIX socket: the (pid, uid, gid) the kernel recorded
/// for its peer when it connected (or made the pair).
pub fn peer_cred(fd: RawFd) -> io::Result<(i32, u32, u32)> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `c`, a ucred.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((c.pid, c.uid, c.gid))
}

pub fn get_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let b = get_bytes(fd, level, name, 4)?;
    if b.len() == 1 {
        return Ok(b[0] as i32);
    }
    let mut a = [0u8; 4];
    a[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
    Ok(i32::from_ne_bytes(a))
}

pub fn set_int(fd: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    set_bytes(fd, level, name, &v.to_ne_bytes())
}

/// SO_RCVTIMEO / SO_SNDTIMEO in microseconds.
pub fn get_timeout_us(fd: RawFd, name: i32) -> io::Result<u64> {
    let b = get_bytes(fd, libc::SOL_SOCKET, name, 16)?;
    if b.len() < 16 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let s = i64::from_ne_bytes(b[0..8].try_into().expect("8 bytes"));
    let us = i64::from_ne_bytes(b[8..16].try_into().expect("8 bytes"));
    Ok(s.max(0) as u64 * 1_000_000 + us.max(0) as u64)
}

pub fn set_timeout_us(fd: RawFd, name: i32, us: u64) -> io::Result<()> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&((us / 1_000_000) as i64).to_ne_bytes());
    b.extend_from_slice(&((us % 1_000_000) as i64).to_ne_bytes());
    set_bytes(fd, libc::SOL_SOCKET, name, &b)
}

/// SO_LINGER as (l_onoff, l_linger).
pub fn get_linger(fd: RawFd) -> io::Result<(i32, i32)> {
    let b = get_bytes(fd, libc::SOL_SOCKET, libc::SO_LINGER, 8)?;
    if b.len() < 8 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok((
        i32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")),
        i32::from_ne_bytes(b[4..8].try_into().expect("4 bytes")),
    ))
}

pub fn set_linger(fd: RawFd, on: i32, secs: i32) -> io::Result<()> {
    let mut b = on.to_ne_bytes().to_vec();
    b.extend_from_slice(&secs.to_ne_bytes());
    set_bytes(fd, libc::SOL_SOCKET, libc::SO_LINGER, &b)
}

fn ioctl_int(fd: RawFd, req: libc::c_ulong) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these ioctls write one int into `v`.
    cvt(unsafe { libc::ioctl(fd, req, &mut v) })?;
    Ok(v.max(0) as u32)
}

/// Bytes in the receive queue (for UDP: the size of the first datagram).
pub fn inq(fd: RawFd) -> io::Result<u32> {
    ioctl_int(fd, SIOCINQ)
}

/// Bytes in the send queue (TCP: not yet acknowledged, sent or not).
pub fn outq(fd: RawFd) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQ)
}

/// TCP: bytes in the send queue not yet sent.
pub fn outq_notsent(fd: RawFd) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQNSD)
}

/// recvmsg with MSG_PEEK | MSG_DONTWAIT | `flags`: (bytes copied, real
/// length as MSG_TRUNC reports it, sender).  `None` when nothing is queued.
pub fn peek(
    fd: RawFd,
    buf: &mut [u8],
    flags: i32,
) -> io::Result<Option<(usize, usize, Option<SocketAddr>)>> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: every pointer in `msg` refers to a live buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT | flags) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(None);
        }
        return Err(e);
    }
    let len = n as usize;
    Ok(Some((
        len.min(buf.len()),
        len,
        from_sockaddr(&ss, msg.msg_namelen),
    )))
}

/// Sends all of `data` (to `to` when given), non-blocking: a full buffer
/// is an error.
pub fn send_all(fd: RawFd, data: &[u8], to: Option<&SocketAddr>) -> io::Result<()> {
    let mut sent = 0;
    let dst = to.map(to_sockaddr);
    loop {
        let (p, l) = match &dst {
            Some((ss, l)) => ((ss as *const libc::sockaddr_storage).cast(), *l),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: sends from a live slice; the address (if any) is a
        // valid sockaddr of length `l`.
        let n = unsafe {
            libc::sendto(
                fd,
                data[sent..].as_ptr().cast(),
                data.len() - sent,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                p,
                l,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        sent += n as usize;
        if sent >= data.len() {
            return Ok(());
        }
    }
}

/// A `sockaddr_storage` for `a` and its length.
pub fn to_sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned for it.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(v) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v.port().to_be(),
                sin6_flowinfo: v.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v.ip().octets(),
                },
                sin6_scope_id: v.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and aligned for it.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// The address in a `sockaddr_storage`, if it is an IP one.
pub fn from_sockaddr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn name_of(fd: RawFd, peer: bool) -> io::Result<Option<SocketAddr>> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    // SAFETY: the kernel writes at most `len` bytes into `ss`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if peer && e.raw_os_error() == Some(libc::ENOTCONN) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(from_sockaddr(&ss, len))
}

/// getsockname.
pub fn local_addr(fd: RawFd) -> io::Result<Option<SocketAddr>> {
    name_of(fd, false)
}

/// getpeername; `None` when not connected.
pub fn peer_addr(fd: RawFd) -> io::Result<Option<SocketAddr>> {
    name_of(fd, true)
}

pub fn bind(fd: RawFd, a: &SocketAddr) -> io::Result<()> {
    let (ss, len) = to_sockaddr(a);
    // SAFETY: bind reads `len` bytes of a valid sockaddr.
    cvt(unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) })?;
    Ok(())
}

pub fn connect(fd: RawFd, a: &SocketAddr) -> io::Result<()> {
    let (ss, len) = to_sockaddr(a);
    // SAFETY: connect reads `len` bytes of a valid sockaddr.
    cvt(unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) })?;
    Ok(())
}

/// Dissolves a datagram socket's association (connect to AF_UNSPEC).
pub fn disconnect(fd: RawFd) -> io::Result<()> {
    // SAFETY: sockaddr is plain data; all zeroes is AF_UNSPEC.
    let sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    // SAFETY: connect reads a valid sockaddr of the given size.
    cvt(unsafe {
        libc::connect(
            fd,
            &sa,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Sends `packet`, a whole IP packet with its header (IPv6 when `v6`), to
/// `dst` through a raw socket (IPPROTO_RAW: the header is the caller's;
/// needs CAP_NET_RAW) whose packets carry mark `mark`.
pub fn raw_ip_send(v6: bool, packet: &[u8], dst: std::net::IpAddr, mark: u32) -> io::Result<()> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let fd = socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    set_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, mark as i32)?;
    // The port of a raw socket's destination must be 0.
    send_all(fd.as_raw_fd(), packet, Some(&SocketAddr::new(dst, 0)))
}

/// shutdown(SHUT_WR).
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_WR) })?;
    Ok(())
}

pub fn listen(fd: RawFd, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::listen(fd, backlog) })?;
    Ok(())
}

pub fn set_flags(fd: RawFd, flags: i32) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor the caller owns.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })?;
    Ok(())
}

// ------------------------------------------------------------ TCP repair

pub fn tcp_repair(fd: RawFd, v: i32) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, v)
}

pub fn tcp_repair_queue(fd: RawFd, q: i32) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, q)
}

/// The sequence number of the selected queue (TCP_QUEUE_SEQ): the next
/// byte to send (write_seq) or to receive (rcv_nxt).
pub fn tcp_queue_seq(fd: RawFd) -> io::Result<u32> {
    get_int(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ).map(|v| v as u32)
}

pub fn set_tcp_queue_seq(fd: RawFd, seq: u32) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ, seq as i32)
}

/// TCP_REPAIR_OPTIONS: (code, value) pairs.
pub fn set_tcp_repair_options(fd: RawFd, opts: &[(u32, u32)]) -> io::Result<()> {
    let mut b = Vec::with_capacity(opts.len() * 8);
    for (c, v) in opts {
        b.extend_from_slice(&c.to_ne_bytes());
        b.extend_from_slice(&v.to_ne_bytes());
    }
    set_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &b)
}

/// struct tcp_repair_window: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
pub fn tcp_repair_window(fd: RawFd) -> io::Result<[u32; 5]> {
    let b = get_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20)?;
    if b.len() < 20 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut w = [0u32; 5];
    for (i, x) in w.iter_mut().enumerate() {
        *x = u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    }
    Ok(w)
}

pub fn set_tcp_repair_window(fd: RawFd, w: &[u32; 5]) -> io::Result<()> {
    let b: Vec<u8> = w.iter().flat_map(|x| x.to_ne_bytes()).collect();
    set_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &b)
}

/// What crest reads from TCP_INFO.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpInfo {
    pub state: u8,
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
}

pub fn tcp_info(fd: RawFd) -> io::Result<TcpInfo> {
    let b = get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 8)?;
    if b.len() < 7 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(TcpInfo {
        state: b[0],
        options: b[5],
        snd_wscale: b[6] & 0xf,
        rcv_wscale: b[6] >> 4,
    })
}

/// getsockopt with `buf` as input and output (options that take a
/// request, like MCAST_MSFILTER): the length the kernel wrote.
pub fn get_inout(fd: RawFd, level: i32, name: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt reads and writes at most `len` bytes of `buf`.
    cvt(unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) })?;
    Ok(len as usize)
}

/// The bytes of the sockaddr for `a`.
pub fn sockaddr_bytes(a: &SocketAddr) -> Vec<u8> {
    let (ss, len) = to_sockaddr(a);
    // SAFETY: viewing `len` (≤ its size) bytes of a live sockaddr_storage.
    unsafe {
        std::slice::from_raw_parts(
            (&ss as *const libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        )
    }
    .to_vec()
}

// ------------------------------------------------------------ netlink

pub const NETLINK_ADD_MEMBERSHIP: i32 = 1;
pub const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

fn nl_addr(fd: RawFd, peer: bool) -> io::Result<(u32, u32)> {
    // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let p = (&mut a as *mut libc::sockaddr_nl).cast();
    // SAFETY: the kernel writes at most `len` bytes into `a`.
    cvt(unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    })?;
    Ok((a.nl_pid, a.nl_groups))
}

/// A netlink socket's (port id, first 32 groups).
pub fn nl_local(fd: RawFd) -> io::Result<(u32, u32)> {
    nl_addr(fd, false)
}

/// A netlink socket's connected peer (port id, groups); (0, 0) when none.
pub fn nl_peer(fd: RawFd) -> io::Result<(u32, u32)> {
    nl_addr(fd, true)
}

fn nl_sockaddr(pid: u32, groups: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    a.nl_pid = pid;
    a.nl_groups = groups;
    a
}

pub fn nl_bind(fd: RawFd, pid: u32) -> io::Result<()> {
    let a = nl_sockaddr(pid, 0);
    // SAFETY: bind reads a valid sockaddr_nl of the given size.
    cvt(unsafe {
        libc::bind(
            fd,
            (&a as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

pub fn nl_connect(fd: RawFd, pid: u32, groups: u32) -> io::Result<()> {
    let a = nl_sockaddr(pid, groups);
    // SAFETY: connect reads a valid sockaddr_nl of the given size.
    cvt(unsafe {
        libc::connect(
            fd,
            (&a as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(())
}
