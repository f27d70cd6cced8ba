//! TCP and UDP sockets as sock_diag's inet_diag shows them (what `ss -t`
//! reads): addresses, state, queue lengths and inode, for every socket of
//! crest's network namespace — including the ones no process holds
//! (connections waiting in an accept queue, TIME_WAIT).

use crate::sockdiag::{u16_at, u32_at, SOCK_DIAG_BY_FAMILY};
use crate::{Error, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_SHUTDOWN: u16 = 8;

/// TCP states (`sk_state`).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;

/// The name of a TCP state, as `ss` prints it.
pub fn state_name(s: u8) -> &'static str {
    match s {
        TCP_ESTABLISHED => "ESTABLISHED",
        TCP_SYN_SENT => "SYN-SENT",
        TCP_SYN_RECV => "SYN-RECV",
        TCP_FIN_WAIT1 => "FIN-WAIT-1",
        TCP_FIN_WAIT2 => "FIN-WAIT-2",
        TCP_TIME_WAIT => "TIME-WAIT",
        TCP_CLOSE => "CLOSE",
        TCP_CLOSE_WAIT => "CLOSE-WAIT",
        TCP_LAST_ACK => "LAST-ACK",
        TCP_LISTEN => "LISTEN",
        TCP_CLOSING => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// One socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetDiag {
    pub family: u8,
    pub state: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Listening: connections waiting to be accepted; otherwise bytes in
    /// the receive queue.
    pub rqueue: u32,
    /// Listening: the backlog; otherwise bytes in the send queue.
    pub wqueue: u32,
    pub uid: u32,
    /// 0 for a socket no descriptor refers to (not accepted yet, TIME_WAIT).
    pub ino: u32,
    pub ifindex: u32,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
}

/// Every socket of `family` (AF_INET or AF_INET6) and `protocol`
/// (IPPROTO_TCP, IPPROTO_UDP) in crest's network namespace.
pub fn inet_sockets(family: i32, protocol: i32) -> Result<Vec<InetDiag>> {
    // struct inet_diag_req_v2 (56 bytes).
    let mut req = [0u8; 56];
    req[0] = family as u8;
    req[1] = protocol as u8;
    req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    let mut out = Vec::new();
    crate::sockdiag::dump(&req, "inet_diag", |d| parse_messages(d, &mut out))?;
    Ok(out)
}

fn parse_messages(mut b: &[u8], out: &mut Vec<InetDiag>) -> Result<bool> {
    let bad = |m: &str| Error::parse("inet_diag", m.to_string());
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
                if errno == libc::ENOENT {
                    // No diag module for this protocol: nothing to list.
                    return Ok(true);
                }
                return Err(Error::io(
                    "inet_diag request",
                    std::io::Error::from_raw_os_error(errno),
                ));
            }
            SOCK_DIAG_BY_FAMILY => {
                out.push(parse_one(&b[16..len]).ok_or_else(|| bad("a malformed inet_diag_msg"))?)
            }
            _ => {}
        }
        let step = (len + 3) & !3;
        b = &b[step.min(b.len())..];
    }
    Ok(false)
}

fn addr(family: u8, b: &[u8], port: u16) -> SocketAddr {
    let ip = if family as i32 == libc::AF_INET6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    };
    SocketAddr::new(ip, port)
}

/// Parses a `struct inet_diag_msg` and its attributes.
fn parse_one(b: &[u8]) -> Option<InetDiag> {
    if b.len() < 72 {
        return None;
    }
    let family = b[0];
    let sport = u16::from_be_bytes([b[4], b[5]]);
    let dport = u16::from_be_bytes([b[6], b[7]]);
    let mut d = InetDiag {
        family,
        state: b[1],
        src: addr(family, &b[8..24], sport),
        dst: addr(family, &b[24..40], dport),
        ifindex: u32_at(b, 40),
        rqueue: u32_at(b, 56),
        wqueue: u32_at(b, 60),
        uid: u32_at(b, 64),
        ino: u32_at(b, 68),
        shutdown: 0,
    };
    let mut a = &b[72..];
    while a.len() >= 4 {
        let len = u16_at(a, 0) as usize;
        let ty = u16_at(a, 2) & 0x3fff;
        if len < 4 || len > a.len() {
            return None;
        }
        if ty == INET_DIAG_SHUTDOWN && len > 4 {
            d.shutdown = a[4];
        }
        let step = (len + 3) & !3;
        a = &a[step.min(a.len())..];
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn lists_a_listener_and_its_waiting_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
            .unwrap()
            .ino() as u32;
        let all = inet_sockets(libc::AF_INET, libc::IPPROTO_TCP).unwrap();
        let me = all.iter().find(|d| d.ino == ino).expect("listed");
        assert_eq!(me.state, TCP_LISTEN);
        assert_eq!(me.src.port(), port);
        assert_eq!(me.rqueue, 1, "one connection waits");
        assert_eq!(me.wqueue, 128, "the backlog std uses");
        let child = all
            .iter()
            .find(|d| d.src.port() == port && d.state == TCP_ESTABLISHED)
            .expect("the server end of the waiting connection");
        assert_eq!(child.ino, 0);
    }
}
