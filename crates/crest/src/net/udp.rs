//! UDP sockets over IPv4 and IPv6: bound, connected, options, and the
//! datagrams queued, each with its sender and its boundaries.
//!
//! The queue is read without consuming it: peeking from SO_PEEK_OFF 0
//! walks the queue one datagram at a time (a peek that copies a whole
//! datagram moves the offset past it), and the program's own peek offset
//! is put back.  At restore each datagram is sent again from a socket
//! bound to its original sender's address (repair-free: UDP has no
//! sequence state), so the receiver sees the same sender.
//!
//! Multicast memberships cannot be listed by any kernel interface for
//! one socket; each group the host has joined (/proc/net/igmp, igmp6) is
//! probed with MCAST_MSFILTER, and a socket that belongs to one is refused.

use super::inet;
use crate::model::{Datagram, InetSocket, OpenFile};
use crest_sys::net as sn;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

const MAX_DATAGRAMS: usize = 1 << 16;
const MAX_BYTES: usize = 64 << 20;

pub fn collect(fd: RawFd, mut s: InetSocket) -> Result<InetSocket, String> {
    let what = inet::show(&s);
    s.opts = inet::collect_opts(fd, s.family, false).map_err(|e| format!("{what}: {e}"))?;
    if let Some(g) = super::mcast::member_of(fd, s.family) {
        return Err(format!(
            "{what}: it is a member of the multicast group {g}; multicast memberships are \
             not checkpointed"
        ));
    }
    s.datagrams = peek_all(fd).map_err(|e| format!("{what}: {e}"))?;
    Ok(s)
}

fn peek_all(fd: RawFd) -> Result<Vec<Datagram>, String> {
    let old = sn::get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
        .map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
    sn::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
        .map_err(|e| format!("setting SO_PEEK_OFF: {e}"))?;
    let r = (|| {
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        while let Some((n, len, from)) =
            sn::peek(fd, &mut buf, libc::MSG_TRUNC).map_err(|e| format!("peeking: {e}"))?
        {
            if len == 0 {
                return Err("a zero-length datagram is queued (it cannot be peeked past)".into());
            }
            if n < len {
                return Err(format!("a datagram of {len} bytes is queued (too large)"));
            }
            total += n;
            if out.len() >= MAX_DATAGRAMS || total > MAX_BYTES {
                return Err("too many datagrams are queued".into());
            }
            out.push(Datagram {
                data: buf[..n].to_vec(),
                from,
            });
        }
        Ok(out)
    })();
    let _ = sn::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    r
}

fn err(s: &InetSocket, what: &str, e: std::io::Error) -> crate::Error {
    crate::Error::msg(format!("{}: {what}: {e}", inet::show(s)))
}

pub fn open(o: &OpenFile, s: &InetSocket) -> crate::Result<OwnedFd> {
    let fd = sn::socket(s.family, libc::SOCK_DGRAM, s.protocol)
        .map_err(|e| err(s, "creating the socket", e))?;
    let raw = fd.as_raw_fd();
    let mut opts = s.opts.clone();
    let bytes: usize = s.datagrams.iter().map(|d| d.data.len() + 1024).sum();
    opts.rcvbuf = opts.rcvbuf.max(2 * bytes as u32);
    inet::apply_early(raw, s.family, &opts).map_err(|e| err(s, "options", e))?;
    if let Some(a) = &s.local {
        sn::bind(raw, a).map_err(|e| err(s, &format!("binding to {a}"), e))?;
    }
    // Refill the queue before connecting (a connected socket drops
    // datagrams from other senders).
    if !s.datagrams.is_empty() {
        let Some(me) = sn::local_addr(raw).map_err(|e| err(s, "getsockname", e))? else {
            return Err(crate::Error::Invalid(format!(
                "{}: datagrams queued on an unbound socket",
                inet::show(s)
            )));
        };
        for d in &s.datagrams {
            send_from(s, d, &me)?;
        }
    }
    if let Some(p) = &s.peer {
        sn::connect(raw, p).map_err(|e| err(s, &format!("connecting to {p}"), e))?;
    }
    inet::apply_late(raw, s.family, false, &opts).map_err(|e| err(s, "options", e))?;
    inet::apply_early(raw, s.family, &no_bind_opts(&s.opts, raw))
        .map_err(|e| err(s, "buffer sizes", e))?;
    if let Some(off) = s.peek_off {
        sn::set_int(raw, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off)
            .map_err(|e| err(s, "SO_PEEK_OFF", e))?;
    }
    sn::set_flags(raw, o.flags as i32).map_err(|e| err(s, "setting its flags", e))?;
    Ok(fd)
}

/// The options without those that only make sense before bind.
fn no_bind_opts(o: &crate::model::SockOpts, fd: RawFd) -> crate::model::SockOpts {
    let mut o = o.clone();
    o.reuseaddr = false;
    o.reuseport = false;
    o.freebind = false;
    o.bindtodevice.clear();
    o.v6only = sn::get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap_or(0) != 0;
    o
}

/// Sends datagram `d` to `to` from a socket bound to its sender's address.
fn send_from(s: &InetSocket, d: &Datagram, to: &SocketAddr) -> crate::Result<()> {
    let from = d.from.unwrap_or(*to);
    let fam = if from.is_ipv4() && !to.is_ipv4() {
        libc::AF_INET6
    } else if from.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let tx = sn::socket(fam, libc::SOCK_DGRAM, 0).map_err(|e| err(s, "a sender socket", e))?;
    let t = tx.as_raw_fd();
    sn::set_int(t, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .map_err(|e| err(s, "SO_REUSEADDR", e))?;
    // The sender may still exist (a socket of the image bound there, or
    // a peer on this host): share its port for this one datagram.
    sn::set_int(t, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
        .map_err(|e| err(s, "SO_REUSEPORT", e))?;
    let _ = sn::set_int(t, libc::IPPROTO_IP, 15, 1); // IP_FREEBIND
    sn::bind(t, &from).map_err(|e| {
        err(
            s,
            &format!("binding a socket to {from}, the sender of a queued datagram"),
            e,
        )
    })?;
    sn::send_all(t, &d.data, Some(to)).map_err(|e| err(s, "refilling its queue", e))
}

pub fn describe(s: &InetSocket) -> String {
    let mut out = inet::show(s);
    if !s.datagrams.is_empty() {
        let b: usize = s.datagrams.iter().map(|d| d.data.len()).sum();
        out += &format!(", {} datagrams / {b} bytes queued", s.datagrams.len());
    }
    out
}
