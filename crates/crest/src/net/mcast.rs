//! Multicast memberships.  No kernel interface lists the groups one
//! socket joined; /proc/net/igmp and igmp6 list the groups the host's
//! interfaces joined, and MCAST_MSFILTER on a socket answers, for one
//! (interface, group), whether that socket is a member.

use crest_sys::net as sn;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

const MCAST_MSFILTER: i32 = 48;

/// (interface index, group) joined by some socket of this namespace.
fn host_groups() -> Vec<(u32, IpAddr)> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/proc/net/igmp") {
        let mut idx = 0u32;
        for line in t.lines().skip(1) {
            if !line.starts_with('\t') {
                idx = line
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            } else if let Some(g) = line
                .split_whitespace()
                .next()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
            {
                out.push((idx, IpAddr::V4(Ipv4Addr::from(g.to_ne_bytes()))));
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/igmp6") {
        for line in t.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 3 || f[2].len() != 32 {
                continue;
            }
            let (Ok(idx), Ok(g)) = (f[0].parse::<u32>(), u128::from_str_radix(f[2], 16)) else {
                continue;
            };
            out.push((idx, IpAddr::V6(Ipv6Addr::from(g))));
        }
    }
    out
}

/// A group socket `fd` is a member of, if any, as "ADDR on interface N".
pub fn member_of(fd: RawFd, family: i32) -> Option<String> {
    for (ifindex, group) in host_groups() {
        if family == libc::AF_INET && group.is_ipv6() {
            continue;
        }
        let level = if group.is_ipv4() {
            libc::IPPROTO_IP
        } else {
            libc::IPPROTO_IPV6
        };
        // struct group_filter with no source: interface, padding, group.
        let mut req = vec![0u8; 144];
        req[0..4].copy_from_slice(&ifindex.to_ne_bytes());
        let bytes = sn::sockaddr_bytes(&SocketAddr::new(group, 0));
        req[8..8 + bytes.len()].copy_from_slice(&bytes);
        if probe(fd, level, &mut req) {
            return Some(format!("{group} on interface {ifindex}"));
        }
    }
    None
}

fn probe(fd: RawFd, level: i32, req: &mut [u8]) -> bool {
    sn::get_inout(fd, level, MCAST_MSFILTER, req).is_ok()
}
