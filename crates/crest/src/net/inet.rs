//! What every IP socket has: its description in messages, and the socket
//! options, read with getsockopt on the dump's copy of the descriptor and
//! set back on the new socket (only where they differ from a new socket's).

use crate::model::{InetSocket, SockOpts};
use crest_sys::net as sn;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// A socket as messages show it: `TCP 127.0.0.1:6379 -> 127.0.0.1:40112`.
pub fn show(s: &InetSocket) -> String {
    let proto = if s.sock_type == libc::SOCK_STREAM {
        "TCP"
    } else {
        "UDP"
    };
    let six = if s.family == libc::AF_INET6 { "v6" } else { "" };
    let mut out = format!("{proto}{six}");
    match &s.local {
        Some(a) => out += &format!(" {a}"),
        None => out += " (unbound)",
    }
    if let Some(p) = &s.peer {
        out += &format!(" -> {p}");
    }
    out
}

const IP_FREEBIND: i32 = 15;
const IPV6_FREEBIND: i32 = 78;

fn tcp(fd: RawFd, name: i32) -> std::io::Result<i32> {
    sn::get_int(fd, libc::IPPROTO_TCP, name)
}

fn sol(fd: RawFd, name: i32) -> std::io::Result<i32> {
    sn::get_int(fd, libc::SOL_SOCKET, name)
}

fn string_opt(fd: RawFd, level: i32, name: i32) -> std::io::Result<String> {
    let b = sn::get_bytes(fd, level, name, 64)?;
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

/// Reads the options of socket `fd`.
pub fn collect_opts(fd: RawFd, family: i32, is_tcp: bool) -> Result<SockOpts, String> {
    let e = |what: &str, err: std::io::Error| format!("reading {what}: {err}");
    let mut o = SockOpts {
        reuseaddr: sol(fd, libc::SO_REUSEADDR).map_err(|x| e("SO_REUSEADDR", x))? != 0,
        reuseport: sol(fd, libc::SO_REUSEPORT).map_err(|x| e("SO_REUSEPORT", x))? != 0,
        rcvbuf: sol(fd, libc::SO_RCVBUF).map_err(|x| e("SO_RCVBUF", x))? as u32,
        sndbuf: sol(fd, libc::SO_SNDBUF).map_err(|x| e("SO_SNDBUF", x))? as u32,
        keepalive: sol(fd, libc::SO_KEEPALIVE).map_err(|x| e("SO_KEEPALIVE", x))? != 0,
        linger: sn::get_linger(fd).map_err(|x| e("SO_LINGER", x))?,
        rcvtimeo_us: sn::get_timeout_us(fd, libc::SO_RCVTIMEO).map_err(|x| e("SO_RCVTIMEO", x))?,
        sndtimeo_us: sn::get_timeout_us(fd, libc::SO_SNDTIMEO).map_err(|x| e("SO_SNDTIMEO", x))?,
        bindtodevice: string_opt(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE)
            .map_err(|x| e("SO_BINDTODEVICE", x))?,
        mark: sol(fd, libc::SO_MARK).map_err(|x| e("SO_MARK", x))? as u32,
        priority: sol(fd, libc::SO_PRIORITY).map_err(|x| e("SO_PRIORITY", x))?,
        broadcast: sol(fd, libc::SO_BROADCAST).map_err(|x| e("SO_BROADCAST", x))? != 0,
        ..Default::default()
    };
    if family == libc::AF_INET6 {
        o.tos = sn::get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
            .map_err(|x| e("IPV6_TCLASS", x))?;
        o.v6only = sn::get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
            .map_err(|x| e("IPV6_V6ONLY", x))?
            != 0;
        o.freebind = sn::get_int(fd, libc::IPPROTO_IPV6, IPV6_FREEBIND).unwrap_or(0) != 0;
        o.ttl = sn::get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS)
            .map_err(|x| e("IPV6_UNICAST_HOPS", x))?;
    } else {
        o.tos = sn::get_int(fd, libc::IPPROTO_IP, libc::IP_TOS).map_err(|x| e("IP_TOS", x))?;
        o.freebind =
            sn::get_int(fd, libc::IPPROTO_IP, IP_FREEBIND).map_err(|x| e("IP_FREEBIND", x))? != 0;
        o.ttl = sn::get_int(fd, libc::IPPROTO_IP, libc::IP_TTL).map_err(|x| e("IP_TTL", x))?;
    }
    if is_tcp {
        o.keepidle = tcp(fd, libc::TCP_KEEPIDLE).map_err(|x| e("TCP_KEEPIDLE", x))?;
        o.keepintvl = tcp(fd, libc::TCP_KEEPINTVL).map_err(|x| e("TCP_KEEPINTVL", x))?;
        o.keepcnt = tcp(fd, libc::TCP_KEEPCNT).map_err(|x| e("TCP_KEEPCNT", x))?;
        o.nodelay = tcp(fd, libc::TCP_NODELAY).map_err(|x| e("TCP_NODELAY", x))? != 0;
        o.cork = tcp(fd, libc::TCP_CORK).map_err(|x| e("TCP_CORK", x))? != 0;
        o.user_timeout = tcp(fd, libc::TCP_USER_TIMEOUT).map_err(|x| e("TCP_USER_TIMEOUT", x))?;
        o.fastopen = tcp(fd, libc::TCP_FASTOPEN).map_err(|x| e("TCP_FASTOPEN", x))?;
        o.congestion = string_opt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION)
            .map_err(|x| e("TCP_CONGESTION", x))?;
    }
    Ok(o)
}

/// Options that must be in place before bind (and, for the buffers,
/// before a repaired socket's queues are refilled).
pub fn apply_early(fd: RawFd, family: i32, o: &SockOpts) -> std::io::Result<()> {
    let set = |level, name, v: i32, what: &str| {
        sn::set_int(fd, level, name, v)
            .map_err(|e| std::io::Error::new(e.kind(), format!("setting {what} to {v}: {e}")))
    };
    let now = |level, name| sn::get_int(fd, level, name).unwrap_or(i32::MIN);
    if o.reuseaddr {
        set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR")?;
    }
    if o.reuseport {
        set(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "SO_REUSEPORT")?;
    }
    if family == libc::AF_INET6 && now(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) != o.v6only as i32 {
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            o.v6only as i32,
            "IPV6_V6ONLY",
        )?;
    }
    if o.freebind {
        let (lvl, name) = if family == libc::AF_INET6 {
            (libc::IPPROTO_IPV6, IPV6_FREEBIND)
        } else {
            (libc::IPPROTO_IP, IP_FREEBIND)
        };
        set(lvl, name, 1, "IP_FREEBIND")?;
    }
    if !o.bindtodevice.is_empty() {
        sn::set_bytes(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            o.bindtodevice.as_bytes(),
        )
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding to device {}: {e}", o.bindtodevice),
            )
        })?;
    }
    // The kernel doubles what is set; the FORCE variants ignore the
    // sysctl limits, as the original values may have been set under
    // other ones.
    if now(libc::SOL_SOCKET, libc::SO_RCVBUF) != o.rcvbuf as i32 {
        set(
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (o.rcvbuf / 2) as i32,
            "SO_RCVBUF",
        )?;
    }
    if now(libc::SOL_SOCKET, libc::SO_SNDBUF) != o.sndbuf as i32 {
        set(
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (o.sndbuf / 2) as i32,
            "SO_SNDBUF",
        )?;
    }
    Ok(())
}

/// The other options, set where they differ from the new socket's.
pub fn apply_late(fd: RawFd, family: i32, is_tcp: bool, o: &SockOpts) -> std::io::Result<()> {
    let set = |level, name, v: i32, what: &str| -> std::io::Result<()> {
        if sn::get_int(fd, level, name).ok() == Some(v) {
            return Ok(());
        }
        sn::set_int(fd, level, name, v)
            .map_err(|e| std::io::Error::new(e.kind(), format!("setting {what} to {v}: {e}")))
    };
    set(
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        o.keepalive as i32,
        "SO_KEEPALIVE",
    )?;
    set(libc::SOL_SOCKET, libc::SO_MARK, o.mark as i32, "SO_MARK")?;
    set(
        libc::SOL_SOCKET,
        libc::SO_BROADCAST,
        o.broadcast as i32,
        "SO_BROADCAST",
    )?;
    if sn::get_linger(fd).ok() != Some(o.linger) {
        sn::set_linger(fd, o.linger.0, o.linger.1)?;
    }
    for (name, v) in [
        (libc::SO_RCVTIMEO, o.rcvtimeo_us),
        (libc::SO_SNDTIMEO, o.sndtimeo_us),
    ] {
        if sn::get_timeout_us(fd, name).ok() != Some(v) {
            sn::set_timeout_us(fd, name, v)?;
        }
    }
    if family == libc::AF_INET6 {
        set(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, o.tos, "IPV6_TCLASS")?;
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            o.ttl,
            "IPV6_UNICAST_HOPS",
        )?;
    } else {
        set(libc::IPPROTO_IP, libc::IP_TOS, o.tos, "IP_TOS")?;
        set(libc::IPPROTO_IP, libc::IP_TTL, o.ttl, "IP_TTL")?;
    }
    // After IP_TOS, which sets the priority from the TOS bits.
    set(
        libc::SOL_SOCKET,
        libc::SO_PRIORITY,
        o.priority,
        "SO_PRIORITY",
    )?;
    if is_tcp {
        set(
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            o.keepidle,
            "TCP_KEEPIDLE",
        )?;
        set(
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            o.keepintvl,
            "TCP_KEEPINTVL",
        )?;
        set(
            libc::IPPROTO_TCP,
            libc::TCP_KEEPCNT,
            o.keepcnt,
            "TCP_KEEPCNT",
        )?;
        set(
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            o.nodelay as i32,
            "TCP_NODELAY",
        )?;
        set(
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            o.user_timeout,
            "TCP_USER_TIMEOUT",
        )?;
        if o.fastopen != 0 {
            set(
                libc::IPPROTO_TCP,
                libc::TCP_FASTOPEN,
                o.fastopen,
                "TCP_FASTOPEN",
            )?;
        }
        if !o.congestion.is_empty()
            && string_opt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION).ok()
                != Some(o.congestion.clone())
        {
            sn::set_bytes(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                o.congestion.as_bytes(),
            )
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("setting TCP_CONGESTION to {}: {e}", o.congestion),
                )
            })?;
        }
        set(libc::IPPROTO_TCP, libc::TCP_CORK, o.cork as i32, "TCP_CORK")?;
    }
    Ok(())
}

/// An address with a v4-mapped IPv6 address turned into the IPv4 one, so
/// both ends of a connection between an IPv4 and a dual-stack socket
/// compare equal.
pub fn canonical(a: &SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v) => match v.ip().to_ipv4_mapped() {
            Some(ip4) => SocketAddr::new(ip4.into(), v.port()),
            None => SocketAddr::new((*v.ip()).into(), v.port()),
        },
        _ => *a,
    }
}

/// Whether `a` is a real bound address (not the unspecified one with port 0).
pub fn is_bound(a: &SocketAddr) -> bool {
    a.port() != 0 || !a.ip().is_unspecified()
}
