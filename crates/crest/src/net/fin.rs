//! The peer's FIN, delivered again to a rebuilt connection.
//!
//! Repair mode has no way to make a socket receive a FIN: a connection
//! whose peer had closed its side (CLOSE-WAIT, LAST-ACK, CLOSING) is
//! rebuilt established, its receive queue ending just before the peer's
//! FIN, and once out of repair mode it is sent that FIN as the peer's
//! kernel sent it: one TCP segment (FIN|ACK, the FIN's sequence number,
//! acknowledging what the peer had acknowledged, the peer's window),
//! written with its IP header through a raw socket (IPPROTO_RAW) of the
//! connection's network namespace to the connection's own local address.
//! The kernel takes it as the peer's: the socket moves to CLOSE-WAIT (or
//! CLOSING after its own FIN) and a read returns 0 after the queued data.
//!
//! The segment carries no timestamp option: the rebuilt socket has no
//! timestamp of the peer yet (it then checks none), and a made-up one
//! would make it refuse the peer's real segments as old (PAWS).  It
//! carries crest's packet mark, which the connection lock lets through
//! (see [`super::lock`]); the socket's answer (an ACK the peer already
//! had) is held by the lock like the rest of the connection's packets.

use crate::model::{InetSocket, TcpConn};
use crest_sys::net as sn;
use std::net::{IpAddr, SocketAddr};

/// The packet mark of the segments crest writes itself ("CRST").
pub const MARK: u32 = 0x4352_5354;

const FIN: u8 = 0x01;
const ACK: u8 = 0x10;

/// One's-complement sum of 16-bit words (RFC 1071), not yet inverted.
fn sum16(mut acc: u32, b: &[u8]) -> u32 {
    let mut it = b.chunks_exact(2);
    for w in &mut it {
        acc += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [last] = it.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IP address a socket address has on the wire (a v4-mapped IPv6 one
/// is IPv4).
fn wire(a: &SocketAddr) -> SocketAddr {
    super::inet::canonical(a)
}

/// A TCP segment without payload or options from `src` to `dst`, with
/// its IP header: IPv4 or IPv6 as the addresses are (both the same).
pub fn segment(
    src: &SocketAddr,
    dst: &SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.push(5 << 4); // data offset: 5 words, no options
    tcp.push(flags);
    tcp.extend_from_slice(&window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let len = tcp.len() as u16;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
            pseudo.extend_from_slice(&len.to_be_bytes());
            let c = fold(sum16(sum16(0, &pseudo), &tcp));
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(20 + len).to_be_bytes());
            // id 0 and the header checksum 0: the kernel fills both in.
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip.extend_from_slice(&tcp);
            ip
        }
        (s, d) => {
            let to6 = |a: IpAddr| match a {
                IpAddr::V6(v) => v,
                IpAddr::V4(v) => v.to_ipv6_mapped(),
            };
            let (s, d) = (to6(s), to6(d));
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_TCP as u8]);
            let c = fold(sum16(sum16(0, &pseudo), &tcp));
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&len.to_be_bytes());
            ip.extend_from_slice(&[libc::IPPROTO_TCP as u8, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip.extend_from_slice(&tcp);
            ip
        }
    }
}

/// The sequence number of the peer's FIN: right after the receive queue.
pub fn fin_seq(c: &TcpConn) -> u32 {
    c.rcv_seq.wrapping_add(c.recv_queue.len() as u32)
}

/// Sends the peer's FIN to rebuilt socket `s` (out of repair mode, its
/// receive queue refilled): from the peer's address to the socket's own,
/// in the network namespace of the calling thread.
pub fn deliver(s: &InetSocket, c: &TcpConn) -> std::io::Result<()> {
    let (Some(local), Some(peer)) = (&s.local, &s.peer) else {
        return Err(std::io::Error::other("the connection has no addresses"));
    };
    let (local, peer) = (wire(local), wire(peer));
    let shift = if c.wscale { c.snd_wscale.min(14) } else { 0 };
    let window = (c.window[1] >> shift).min(u16::MAX as u32) as u16;
    let pkt = segment(&peer, &local, fin_seq(c), c.snd_seq, FIN | ACK, window);
    sn::raw_ip_send(local.is_ipv6(), &pkt, local.ip(), MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        // A receiver sums the pseudo-header and the segment, checksum
        // included: all ones (0 after inversion) when it is right.
        let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let p = segment(&a, &b, 0x0102_0304, 0xa0b0_c0d0, FIN | ACK, 512);
        assert_eq!(p.len(), 40);
        assert_eq!(&p[12..16], &[127, 0, 0, 1]);
        let mut pseudo = vec![127, 0, 0, 1, 127, 0, 0, 2, 0, 6, 0, 20];
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(fold(sum16(0, &pseudo)), 0);
        assert_eq!(&p[24..28], &0x0102_0304u32.to_be_bytes());
        assert_eq!(p[33], FIN | ACK);

        let a: SocketAddr = "[::1]:5".parse().unwrap();
        let b: SocketAddr = "[fe80::2]:6".parse().unwrap();
        let p = segment(&a, &b, 1, 2, ACK, 3);
        assert_eq!(p.len(), 60);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 20);
        let mut pseudo = p[8..40].to_vec();
        pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
        pseudo.extend_from_slice(&p[40..]);
        assert_eq!(fold(sum16(0, &pseudo)), 0);
    }

    #[test]
    fn odd_lengths_are_padded() {
        assert_eq!(sum16(0, &[1, 2, 3]), 0x0102 + 0x0300);
    }
}
